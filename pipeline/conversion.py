"""Voice conversion of long inputs: cut into overlapping windows, convert them concurrently, crossfade.

Written against an async ``convert`` callable (a Serve handle call on VC replicas in production, a
plain coroutine in unit tests), like :mod:`pipeline.graph`. The reference server converts windows
one after another, turns a failed window into silence and joins with a linear crossfade; here all
windows are in flight at once (fanned out over VC replicas), a failed window is retried and then
fails the request naming the window, and the crossfade keeps loudness level (see
:func:`join_windows`). The output has exactly as many samples as the input at the engine's rate.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import resample, sine_ramp
from pipeline.clip import AudioClip
from pipeline.concurrency import all_or_nothing
from pipeline.engines.base import ConversionParams, VoiceRef
from pipeline.errors import GenerationFailed, InvalidRequest, unwrapped

logger = logging.getLogger(__name__)

ConvertFn = Callable[[AudioClip, VoiceRef | None, ConversionParams], Awaitable[AudioClip]]

ENGINE_SAMPLE_RATE = 24_000
# A tail window shorter than this is merged into the window before it: S3Gen re-reads the whole
# target prompt for every window, so a sliver of a window costs nearly a full one and converts
# too little speech to sound right.
MIN_TAIL_SEC = 1.0
# Seeds of windows after the first derive from the request's seed (as pipeline.graph derives its
# candidates' seeds), so one seed reproduces the whole conversion.
_SEED_STRIDE = 1_000_003
# A converted window may come back a few samples off after an engine-side resampling; more than
# this means the engine broke its contract.
_LENGTH_TOLERANCE_SEC = 0.005


@dataclass(frozen=True)
class Window:
    """Samples ``[start, end)`` of the input at the engine's rate."""

    index: int
    start: int
    end: int

    @property
    def num_samples(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class WindowReport:
    """How one window went: where it sits, how many tries it took, what the engine said about it."""

    index: int
    start_sec: float
    end_sec: float
    attempts: int
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversionResult:
    audio: AudioClip
    windows: list[WindowReport]


def plan_windows(num_samples: int, sample_rate: int, chunk_sec: float, overlap_sec: float) -> list[Window]:
    """Windows of ``chunk_sec`` that start every ``chunk_sec - overlap_sec`` and together cover the input.

    Neighbours overlap by exactly ``round(overlap_sec * sample_rate)`` samples. An input no longer
    than one chunk is one window; a last window shorter than max(overlap, MIN_TAIL_SEC) (or than a
    chunk, where chunks are shorter) is merged into the one before, which then runs to the end.

    ValueError unless 0 <= overlap <= chunk / 2: with more, three windows would cover the same
    samples and no pairwise crossfade could join them.
    """
    if num_samples < 0 or sample_rate <= 0:
        raise ValueError(f"need num_samples >= 0 and sample_rate > 0; got {num_samples}, {sample_rate}")
    chunk = round(chunk_sec * sample_rate)
    overlap = round(overlap_sec * sample_rate)
    if chunk < 1 or overlap_sec < 0:
        raise ValueError(
            f"chunk_sec must be positive and overlap_sec not negative; got {chunk_sec}, {overlap_sec}"
        )
    if 2 * overlap > chunk:
        raise ValueError(f"overlap_sec ({overlap_sec:g}) must be at most half of chunk_sec ({chunk_sec:g})")
    if num_samples <= chunk:
        return [Window(0, 0, num_samples)]
    step = chunk - overlap
    min_tail = min(max(overlap, round(MIN_TAIL_SEC * sample_rate)), chunk)
    bounds: list[list[int]] = []
    start = 0
    while True:
        end = min(start + chunk, num_samples)
        bounds.append([start, end])
        if end == num_samples:
            break
        start += step
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_tail:
        bounds.pop()
        bounds[-1][1] = num_samples
    return [Window(index, start, end) for index, (start, end) in enumerate(bounds)]


def join_windows(clips: Sequence[AudioClip], windows: Sequence[Window]) -> AudioClip:
    """The converted windows as one clip exactly as long as the planned input, crossfaded over each overlap.

    Unlike :func:`pipeline.audio.join_clips`, whose chunks are different sentences (uncorrelated,
    so a fixed equal-power fade keeps their level), windows here are the same speech converted
    twice: anywhere from uncorrelated (other noise, other phases) to identical. A fixed equal-power
    fade would swell identical audio by 3 dB mid-overlap, a linear one dips uncorrelated audio by
    3 dB. So the sine/cosine pair is scaled by the overlap's measured correlation r to keep the
    summed power level: gain 1 / sqrt(sin^2 + cos^2 + 2 r sin cos), equal-power at r = 0 and
    sample-exact at r = 1.
    """
    if not clips or len(clips) != len(windows):
        raise ValueError(f"need one clip per window; got {len(clips)} clips for {len(windows)} windows")
    sample_rate = clips[0].sample_rate
    for clip, window in zip(clips, windows, strict=True):
        if clip.sample_rate != sample_rate or clip.num_samples != window.num_samples:
            raise ValueError(
                f"window {window.index} needs {window.num_samples} samples at {sample_rate} Hz; "
                f"got {clip.num_samples} at {clip.sample_rate} Hz"
            )
    joined = np.zeros(windows[-1].end, dtype=np.float32)
    previous_end = 0
    for clip, window in zip(clips, windows, strict=True):
        overlap = max(0, previous_end - window.start)
        joined[window.start + overlap : window.end] = clip.samples[overlap:]
        if overlap:
            region = slice(window.start, window.start + overlap)
            joined[region] = _crossfade(joined[region], clip.samples[:overlap])
        previous_end = window.end
    return AudioClip(joined, sample_rate)


def fit_length(samples: np.ndarray, num_samples: int) -> np.ndarray:
    """``samples`` cut or zero-padded at the end to exactly ``num_samples``."""
    if len(samples) >= num_samples:
        return samples[:num_samples]
    return np.concatenate([samples, np.zeros(num_samples - len(samples), dtype=samples.dtype)])


def window_seed(request_seed: int, window_index: int) -> int:
    """Window 0 converts with the request's seed; the others with seeds derived from it."""
    if window_index == 0:
        return request_seed
    return (request_seed + _SEED_STRIDE * window_index) % (2**32 - 1) + 1


class VoiceConversionPipeline:
    """Converts a source of any length by windows, all in flight at once (Serve spreads them on replicas).

    ``attempts`` counts tries per window, the first included; ``sample_rate`` is the engine's rate.
    """

    def __init__(self, convert: ConvertFn, attempts: int = 2, sample_rate: int = ENGINE_SAMPLE_RATE) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1; got {attempts}")
        self._convert = convert
        self._attempts = attempts
        self._sample_rate = sample_rate

    async def run(
        self,
        source: AudioClip,
        target: VoiceRef | None,
        seed: int,
        disable_watermark: bool,
        chunk_sec: float,
        overlap_sec: float,
    ) -> ConversionResult:
        if source.num_samples == 0:
            raise InvalidRequest("the audio to convert is empty", param="input_audio")
        audio = resample(source, self._sample_rate)
        try:
            windows = plan_windows(audio.num_samples, self._sample_rate, chunk_sec, overlap_sec)
        except ValueError as error:
            raise InvalidRequest(
                str(error), param="chunk_sec" if chunk_sec <= 0 else "overlap_sec"
            ) from error
        # One window failing for good fails the request: the others' work would be thrown away.
        outcomes = await all_or_nothing(
            self._convert_window(
                audio, window, target, ConversionParams(window_seed(seed, window.index), disable_watermark)
            )
            for window in windows
        )
        joined = join_windows([clip for clip, _ in outcomes], windows)
        reports = [
            WindowReport(
                index=window.index,
                start_sec=window.start / self._sample_rate,
                end_sec=window.end / self._sample_rate,
                attempts=attempts,
                metadata=dict(clip.metadata),
            )
            for window, (clip, attempts) in zip(windows, outcomes, strict=True)
        ]
        metadata = {"seed": seed, "windows": len(windows)}
        return ConversionResult(
            audio=AudioClip(joined.samples, self._sample_rate, metadata=metadata), windows=reports
        )

    async def _convert_window(
        self, audio: AudioClip, window: Window, target: VoiceRef | None, params: ConversionParams
    ) -> tuple[AudioClip, int]:
        """The converted window and the attempts it took. A retry keeps the window's seed, so a
        conversion that needed one sounds the same as one that did not. Only the engine's own
        failures (GenerationFailed) are retried here; a lost replica was already retried by the
        stage call, and anything else (overload, a crash, a bug) fails the request."""
        piece = AudioClip(audio.samples[window.start : window.end], self._sample_rate)
        span = f"{window.start / self._sample_rate:.2f}-{window.end / self._sample_rate:.2f} s"
        cause: GenerationFailed | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                converted = self._fitted(await self._convert(piece, target, params), window)
            except GenerationFailed as error:
                cause = error
            else:
                return converted, attempt
            logger.warning(
                "VC window %d (%s) failed on attempt %d of %d: %s",
                window.index,
                span,
                attempt,
                self._attempts,
                unwrapped(cause).message,
            )
        assert cause is not None, "attempts is at least 1"
        raise GenerationFailed(
            f"voice conversion of window {window.index} ({span}) failed after {self._attempts} "
            f"attempts: {unwrapped(cause).message}"
        ) from cause

    def _fitted(self, converted: AudioClip, window: Window) -> AudioClip:
        """The window's conversion at the pipeline's rate and exactly the window's length."""
        converted = resample(converted, self._sample_rate)
        shortfall = window.num_samples - converted.num_samples
        if abs(shortfall) > _LENGTH_TOLERANCE_SEC * self._sample_rate:
            raise GenerationFailed(
                f"the VC engine returned {converted.num_samples} samples for a window of {window.num_samples}"
            )
        if shortfall == 0:
            return converted
        return converted.with_samples(fit_length(converted.samples, window.num_samples))


def _crossfade(fading_out: np.ndarray, fading_in: np.ndarray) -> np.ndarray:
    rise = sine_ramp(len(fading_in)).astype(np.float64)
    fall = rise[::-1]
    out64, in64 = fading_out.astype(np.float64), fading_in.astype(np.float64)
    energy = float(np.sqrt(np.dot(out64, out64) * np.dot(in64, in64)))
    correlation = min(1.0, max(0.0, float(np.dot(out64, in64)) / energy)) if energy > 0 else 0.0
    gain = 1.0 / np.sqrt(rise**2 + fall**2 + 2.0 * correlation * rise * fall)
    return (gain * (fall * out64 + rise * in64)).astype(np.float32)
