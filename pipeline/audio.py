"""Audio in and out of the pipeline: decode, encode (whole files or streams) and the sample-level
operations that post-processing chains (resample, join, trim, speed, loudness).

Everything here takes and returns float32 mono ``AudioClip``s; integer PCM exists only inside the
encoder and inside ``change_speed`` (whose C stretcher reads int16 only). Codecs come from PyAV,
which ships its own FFmpeg libraries, so no system ``ffmpeg`` binary is needed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO, Literal

import av
import librosa
import numpy as np
import soundfile
import soxr
from audiostretchy.interface.tdhs import TDHSAudioStretch

from pipeline.clip import AudioClip
from pipeline.errors import InvalidRequest

OUTPUT_FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm")

MEDIA_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",  # Ogg Opus container (RFC 7845)
    "aac": "audio/aac",  # raw ADTS stream
    "pcm": "audio/pcm",  # headerless s16le mono, as OpenAI names it
}

FILE_EXTENSIONS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "aac": "aac", "pcm": "pcm"}

SPEED_FACTOR_RANGE = (0.25, 4.0)
# Input rates decoders accept: telephone speech up to studio masters.
MIN_INPUT_RATE, MAX_INPUT_RATE = 4_000, 384_000


def decode_audio(source: bytes | Path | BinaryIO, max_duration_sec: float | None = None) -> AudioClip:
    """Any common audio file (wav, mp3, flac, ogg, m4a, ...) as one mono clip at its own rate.

    libsndfile is tried first (fast and exact for wav/flac/ogg/mp3); PyAV decodes what it rejects:
    m4a/aac, and streamed FLAC whose header leaves the length unknown. ``source`` may be a file
    path or an open binary file, so an upload is decoded from disk rather than held in memory twice. With
    ``max_duration_sec`` a file that would decode to more audio is refused before it is expanded
    (a few KB of FLAC can claim hours of audio): from the header where it states the length, else
    while decoding.
    """
    if isinstance(source, bytes) and not source:
        raise InvalidRequest("The audio file is empty.")
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise InvalidRequest("The audio file is empty.")
    try:
        channels, sample_rate = _decode_with_soundfile(_readable(source), max_duration_sec)
    except (soundfile.LibsndfileError, ValueError, MemoryError, RuntimeError):
        channels, sample_rate = _decode_with_pyav(_readable(source), max_duration_sec)
    if channels.shape[0] == 0:
        raise InvalidRequest("The audio file contains no audio samples.")
    samples = channels.mean(axis=1, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise InvalidRequest("The audio file contains NaN or infinite samples.")
    return AudioClip(samples, sample_rate)


def probe_audio(path: Path) -> tuple[float, int]:
    """(duration_sec, sample_rate) from the file's header, without decoding it (for listings)."""
    try:
        info = soundfile.info(str(path))
        return info.frames / info.samplerate, int(info.samplerate)
    except (soundfile.LibsndfileError, RuntimeError):
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            duration = container.duration / av.time_base if container.duration else 0.0
            return duration, int(stream.sample_rate)


def encode_audio(clip: AudioClip, fmt: str) -> bytes:
    """One whole file. Written to a seekable buffer, so the muxers fill in their final headers
    (WAV sizes, FLAC length and MD5, the MP3 Xing/LAME frame that lets players drop encoder delay).
    """
    buffer = io.BytesIO()
    writer = _EncoderWriter(_encoding(fmt), clip.sample_rate, buffer)
    writer.write(clip.samples)
    writer.close()
    return buffer.getvalue()


class StreamingEncoder:
    """Encodes clips as they arrive and hands back the bytes ready so far.

    The muxer writes into a sink that cannot seek, which is what makes the output streamable:
    WAV gets the "unknown length" sizes (0xFFFFFFFF) that streaming servers send, FLAC and MP3
    skip the header rewrite they would do at the end of a file. The price: a streamed MP3 has
    no gapless info (decoders play LAME's delay and padding, 50-80 ms of added silence).
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._sink = _DrainableSink()
        self._writer = _EncoderWriter(_encoding(fmt), sample_rate, self._sink)
        self._closed = False

    def encode(self, clip: AudioClip) -> bytes:
        if self._closed:
            raise ValueError("StreamingEncoder.encode() called after close()")
        self._writer.write(resample(clip, self.sample_rate).samples)
        return self._sink.drain()

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        self._writer.close()
        return self._sink.drain()


def resample(clip: AudioClip, sample_rate: int) -> AudioClip:
    """The clip at ``sample_rate`` (soxr, high quality); the same object if the rate already matches."""
    if clip.sample_rate == sample_rate:
        return clip
    samples = soxr.resample(clip.samples, clip.sample_rate, sample_rate)
    return clip.with_samples(samples, sample_rate)


def join_clips(clips: Sequence[AudioClip], crossfade_ms: float = 20.0, gap_ms: float = 0.0) -> AudioClip:
    """Clips back to back at the first clip's rate, each boundary crossfaded or separated by silence.

    The crossfade is equal-power (sine/cosine): the clips meeting at a chunk boundary are different
    sentences, i.e. uncorrelated, and equal-power keeps their summed loudness level through the
    overlap where a linear fade would dip by 3 dB. A boundary either overlaps (``gap_ms`` 0) or
    holds ``gap_ms`` of silence; a crossfade longer than either neighbouring clip is shortened to
    that clip's length. The text is the clips' texts joined by spaces.
    """
    if not clips:
        raise ValueError("join_clips needs at least one clip")
    sample_rate = clips[0].sample_rate
    parts = [resample(clip, sample_rate).samples for clip in clips]
    crossfade = max(0, round(crossfade_ms * sample_rate / 1000))
    gap = max(0, round(gap_ms * sample_rate / 1000))

    overlaps = [0 if gap else min(crossfade, len(previous), len(part)) for previous, part in pairwise(parts)]
    starts = [0]
    for previous, overlap in zip(parts, overlaps, strict=False):
        starts.append(starts[-1] + len(previous) + gap - overlap)

    joined = np.zeros(starts[-1] + len(parts[-1]), dtype=np.float32)
    fade_ins = [0, *overlaps]
    fade_outs = [*overlaps, 0]
    for part, start, fade_in, fade_out in zip(parts, starts, fade_ins, fade_outs, strict=True):
        faded = part.copy()
        if fade_in:
            faded[:fade_in] *= sine_ramp(fade_in)
        if fade_out:
            faded[len(faded) - fade_out :] *= sine_ramp(fade_out)[::-1]
        joined[start : start + len(faded)] += faded
    text = " ".join(clip.text.strip() for clip in clips if clip.text.strip())
    return AudioClip(joined, sample_rate, text=text)


def trim_silence(
    clip: AudioClip, threshold_ms: int = 200, top_db: float = 40.0, keep_ms: int = 50
) -> AudioClip:
    """Leading/trailing silence cut down to ``keep_ms``, the reference server's rule (factsheet §3
    step 5): silence is ``top_db`` below the clip's peak (librosa.effects.split, frame 2048, hop
    512), and an end is trimmed only if its silence is longer than ``threshold_ms``. A clip that
    is silent throughout is returned whole: there is no speech to keep.

    The kept ``keep_ms`` is faded (in at the start, out at the end): "silence" here is only 40 dB
    under the peak, so a hard cut through a breath or a decaying tail would click.
    """
    if clip.num_samples == 0:
        return clip
    intervals = librosa.effects.split(clip.samples, top_db=top_db, frame_length=2048, hop_length=512)
    if len(intervals) == 0:
        return clip
    threshold = round(threshold_ms * clip.sample_rate / 1000)
    keep = round(keep_ms * clip.sample_rate / 1000)
    sound_start, sound_end = int(intervals[0][0]), int(intervals[-1][1])
    start = sound_start - keep if sound_start > threshold else 0
    end = sound_end + keep if clip.num_samples - sound_end > threshold else clip.num_samples
    if (start, end) == (0, clip.num_samples):
        return clip
    trimmed = clip.samples[start:end].copy()
    fade = min(keep, len(trimmed))
    if start and fade:
        trimmed[:fade] *= sine_ramp(fade)
    if end < clip.num_samples and fade:
        trimmed[len(trimmed) - fade :] *= sine_ramp(fade)[::-1]
    return clip.with_samples(trimmed)


def cut_silences(clip: AudioClip, threshold: float = 0.06, margin_sec: float = 0.2) -> AudioClip:
    """Pauses inside the clip cut out, ``margin_sec`` of each kept around the sound, like the
    reference UI's ``auto-editor --edit audio:threshold=<threshold> --margin <margin>s``.

    auto-editor is a command-line program (it needs its own ffmpeg), so this re-implements its
    audio edit with librosa: sound is whatever is louder than ``threshold`` of the clip's peak
    amplitude (0.06 -> 24.4 dB below it); what is left of each pause beyond the margins goes, and
    the kept pieces are joined with a short equal-power crossfade so no cut clicks.
    """
    if clip.num_samples == 0 or not 0.0 < threshold < 1.0:
        return clip
    top_db = -20.0 * float(np.log10(threshold))
    intervals = librosa.effects.split(clip.samples, top_db=top_db, frame_length=2048, hop_length=512)
    if len(intervals) == 0:
        return clip
    margin = round(margin_sec * clip.sample_rate)
    kept: list[list[int]] = []
    for start, end in intervals:
        start, end = max(0, int(start) - margin), min(clip.num_samples, int(end) + margin)
        if kept and start <= kept[-1][1]:
            kept[-1][1] = max(kept[-1][1], end)
        else:
            kept.append([start, end])
    if len(kept) == 1 and kept[0] == [0, clip.num_samples]:
        return clip
    pieces = [AudioClip(clip.samples[start:end], clip.sample_rate) for start, end in kept]
    return clip.with_samples(join_clips(pieces, crossfade_ms=_CUT_CROSSFADE_MS).samples)


def change_speed(clip: AudioClip, factor: float) -> AudioClip:
    """Speech ``factor`` times faster (duration / factor) with its pitch kept (audiostretchy's TDHS).

    Upstream quirk: audiostretchy's ``AudioStretch.stretch()`` hands the whole signal to the C
    stretcher in one call, and the ratio it delivers is then rounded to a multiple of 0.5 (asked
    1.3, got 1.5). Feeding the stretcher 1024-sample buffers, then flushing, delivers the asked
    ratio. Factors 0.25-4.0 (OpenAI's ``speed`` range) work; beyond 0.5-2.0 two stretchers cascade.
    """
    if factor == 1.0 or clip.num_samples == 0:
        return clip
    low, high = SPEED_FACTOR_RANGE
    if not low <= factor <= high:
        raise InvalidRequest(
            f"speed factor must be between {low} and {high}; got {factor}", param="speed_factor"
        )
    ratio = 1.0 / factor  # the stretcher's ratio is output length / input length
    flags = 0
    if not 0.5 <= ratio <= 2.0:
        flags |= TDHSAudioStretch.STRETCH_DUAL_FLAG  # two cascaded stretchers reach 0.25x-4x
    if clip.sample_rate >= 32000:
        flags |= TDHSAudioStretch.STRETCH_FAST_FLAG  # audiostretchy's own choice for high rates
    # Pitch periods for 55-333 Hz (audiostretchy's defaults): the range of speaking voices.
    longest_period = clip.sample_rate // 55
    stretcher = TDHSAudioStretch(clip.sample_rate // 333, longest_period, 1, flags)
    if not stretcher.handle:
        raise ValueError(f"the speed changer cannot work at {clip.sample_rate} Hz (needs 8-132 kHz)")

    # Scale the peak to full int16 range: no clipping, and the least quantisation noise.
    peak = float(np.max(np.abs(clip.samples)))
    scale = 32767.0 / peak if peak > 0 else 1.0
    # The stretcher holds back its last few pitch periods and flushes them unstretched, a fixed
    # 15-50 ms error on every clip (5 % on a 1 s clip). Stretching silence past the end and
    # cutting at the exact length removes it.
    tail_padding = np.zeros(8 * longest_period, dtype=np.int16)
    pcm = np.concatenate([np.round(clip.samples * scale).astype(np.int16), tail_padding])
    capacity = stretcher.output_capacity(_STRETCH_BLOCK, ratio)
    pieces = []
    try:
        for offset in range(0, len(pcm), _STRETCH_BLOCK):
            block = np.ascontiguousarray(pcm[offset : offset + _STRETCH_BLOCK])
            output = np.zeros(capacity, dtype=np.int16)
            written = stretcher.process_samples(block, len(block), output, ratio)
            pieces.append(output[:written])
        # A cascaded (dual) stretcher flushes in more than one call: flush until nothing comes out.
        while True:
            output = np.zeros(capacity, dtype=np.int16)
            written = stretcher.flush(output)
            if not written:
                break
            pieces.append(output[:written])
    finally:
        stretcher.deinit()
    stretched = np.concatenate(pieces)[: round(clip.num_samples * ratio)].astype(np.float32) / scale
    return clip.with_samples(stretched)


def normalize_loudness(
    clip: AudioClip,
    method: Literal["ebu", "peak"],
    level_lufs: float = -24.0,
    true_peak_db: float = -2.0,
) -> AudioClip:
    """Loudness-normalised audio.

    ``ebu``: gain to ``level_lufs`` integrated loudness (ITU-R BS.1770 via pyloudnorm), then a
    simple look-ahead peak guard keeps the *sample* peak under ``true_peak_db`` (not an oversampled
    true-peak meter); what the guard takes off is made up by re-measuring, for up to two more passes.
    ``peak``: one gain that puts the sample peak at ``true_peak_db`` dBFS.
    Silence (nothing above the -70 LUFS gate, or all zeros) is returned unchanged.
    """
    if method == "peak":
        peak = float(np.max(np.abs(clip.samples))) if clip.num_samples else 0.0
        if peak == 0.0:
            return clip
        return clip.with_samples(clip.samples * (_db_to_gain(true_peak_db) / peak))
    if method != "ebu":
        raise InvalidRequest(
            f"normalize_method must be 'ebu' or 'peak'; got {method!r}", param="normalize_method"
        )
    if clip.num_samples == 0:
        return clip
    loudness = _integrated_loudness(clip.samples, clip.sample_rate)
    if not math.isfinite(loudness):
        return clip
    samples = _limit_peaks(clip.samples * _db_to_gain(level_lufs - loudness), true_peak_db, clip.sample_rate)
    for _ in range(_LOUDNESS_CORRECTION_PASSES):
        shortfall_db = level_lufs - _integrated_loudness(samples, clip.sample_rate)
        if abs(shortfall_db) < _LOUDNESS_TOLERANCE_DB:
            break
        samples = _limit_peaks(samples * _db_to_gain(shortfall_db), true_peak_db, clip.sample_rate)
    return clip.with_samples(samples)


# --- helpers --------------------------------------------------------------------------------------

_STRETCH_BLOCK = 1024
_CUT_CROSSFADE_MS = 10.0
_ENCODE_FRAME_SAMPLES = 16384
_LOUDNESS_CORRECTION_PASSES = 2
_LOUDNESS_TOLERANCE_DB = 0.05
_LOUDNESS_BLOCK_SEC = 0.4  # BS.1770 gating block; pyloudnorm refuses shorter input
_LIMITER_WINDOW_SEC = 0.005


@dataclass(frozen=True)
class _Encoding:
    container: str
    codec: str
    bit_rate: int | None = None
    container_options: tuple[tuple[str, str], ...] = ()


_ENCODINGS = {
    "wav": _Encoding("wav", "pcm_s16le"),
    "pcm": _Encoding("s16le", "pcm_s16le"),
    "flac": _Encoding("flac", "flac"),
    # The reference exports MP3 at 320 kbps; 192 kbps is transparent for speech and is what its
    # /concat uses. LAME caps MPEG-2 rates (<= 24 kHz, i.e. Piper and Chatterbox) at 160 kbps.
    "mp3": _Encoding("mp3", "libmp3lame", 192_000),
    # Ogg pages are emitted every 100 ms instead of FFmpeg's default 1 s, so a stream flows.
    "opus": _Encoding("ogg", "libopus", 64_000, (("page_duration", "100000"),)),
    "aac": _Encoding("adts", "aac", 128_000),
}


def _encoding(fmt: str) -> _Encoding:
    if fmt not in _ENCODINGS:
        raise InvalidRequest(
            f"Unsupported audio format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}.",
            param="response_format",
        )
    return _ENCODINGS[fmt]


class _EncoderWriter:
    """One PyAV muxer + encoder for mono float input; the one encode path of the service."""

    def __init__(self, encoding: _Encoding, input_rate: int, file: object) -> None:
        codec = av.Codec(encoding.codec, "w")
        self._rate = _codec_rate(codec.audio_rates, input_rate)
        # A stateful resampler: a stream arrives in pieces, and resampling each piece alone would
        # click at every boundary.
        self._resampler = (
            soxr.ResampleStream(input_rate, self._rate, 1, dtype="float32")
            if self._rate != input_rate
            else None
        )
        # bitexact: no encoder-name tag, so WAV gets the canonical 44-byte header naive readers assume.
        options = {"fflags": "+bitexact", **dict(encoding.container_options)}
        self._container = av.open(file, "w", format=encoding.container, options=options)
        self._stream = self._container.add_stream(encoding.codec, rate=self._rate, layout="mono")
        if encoding.bit_rate:
            self._stream.bit_rate = encoding.bit_rate
        # Write the header now, not at the first packet: an empty clip still makes a valid file.
        self._container.start_encoding()

    def write(self, samples: np.ndarray) -> None:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self._encode(samples)

    def close(self) -> None:
        if self._resampler is not None:
            self._encode(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def _encode(self, samples: np.ndarray) -> None:
        # FLAC blocks hold at most 65535 samples; PyAV re-frames only fixed-frame-size codecs.
        for offset in range(0, len(samples), _ENCODE_FRAME_SAMPLES):
            block = np.clip(samples[offset : offset + _ENCODE_FRAME_SAMPLES], -1.0, 1.0).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(block[np.newaxis, :], format="flt", layout="mono")
            frame.sample_rate = self._rate
            self._container.mux(self._stream.encode(frame))


class _DrainableSink:
    """A write-only file for the muxer. Having no ``seek`` is deliberate: it tells FFmpeg the
    output is a stream, so it never goes back to patch bytes that were already sent."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._pending.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        return data


def _codec_rate(supported: Sequence[int] | None, rate: int) -> int:
    """The clip's rate if the codec takes it, else the lowest supported rate above it (no
    bandwidth lost), else the highest (Opus tops out at 48 kHz, MP3 at 48 kHz)."""
    if not supported or rate in supported:
        return rate
    higher = [candidate for candidate in supported if candidate > rate]
    return min(higher) if higher else max(supported)


def _readable(source: bytes | Path | BinaryIO) -> str | BinaryIO:
    """What both decoders open: a path, or a file object rewound to its start."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, Path):
        return str(source)
    source.seek(0)
    return source


def _decode_with_soundfile(source: str | BinaryIO, max_duration_sec: float | None) -> tuple[np.ndarray, int]:
    with soundfile.SoundFile(source) as audio:
        _check_rate(audio.samplerate)
        if max_duration_sec is not None and audio.frames > max_duration_sec * audio.samplerate:
            raise _too_long(max_duration_sec)
        samples = audio.read(dtype="float32", always_2d=True)
        return samples, int(audio.samplerate)


def _decode_with_pyav(source: str | BinaryIO, max_duration_sec: float | None) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the rate of the first audio stream."""
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                raise InvalidRequest("The file holds no audio stream.")
            resampler: av.AudioResampler | None = None
            blocks: list[np.ndarray] = []
            decoded_samples = 0
            for frame in container.decode(container.streams.audio[0]):
                if resampler is None:
                    _check_rate(frame.sample_rate)
                    # Planar float at the first frame's layout and rate, whatever the codec's format.
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                blocks.extend(converted.to_ndarray() for converted in resampler.resample(frame))
                decoded_samples += frame.samples
                if max_duration_sec is not None and decoded_samples > max_duration_sec * resampler.rate:
                    raise _too_long(max_duration_sec)
            if resampler is None:
                raise InvalidRequest("The audio file contains no audio samples.")
            blocks.extend(converted.to_ndarray() for converted in resampler.resample(None))
            sample_rate = resampler.rate
    except av.FFmpegError as error:
        raise InvalidRequest(
            f"Could not decode the audio file ({error.strerror or error}); "
            "send wav, mp3, flac, ogg or m4a audio."
        ) from error
    return np.concatenate(blocks, axis=1).T, int(sample_rate)


def _check_rate(sample_rate: int) -> None:
    # A forged header with a rate of a few Hz turns a small file into hours of "audio".
    if not MIN_INPUT_RATE <= sample_rate <= MAX_INPUT_RATE:
        raise InvalidRequest(
            f"The audio file's sample rate {sample_rate} Hz is outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz."
        )


def _too_long(max_duration_sec: float) -> InvalidRequest:
    return InvalidRequest(f"The audio file is longer than the {max_duration_sec:g} s this server accepts.")


def sine_ramp(length: int) -> np.ndarray:
    """Rising quarter sine from ~0 to ~1. Reversed it is the matching cosine fall, and
    sin^2 + cos^2 = 1 at every sample: an equal-power crossfade pair."""
    return np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length).astype(np.float32)


def _db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _integrated_loudness(samples: np.ndarray, sample_rate: int) -> float:
    # Imported here: pyloudnorm pulls in scipy.signal (about 1.5 s), which modules that only
    # encode (the ingress) should not pay for.
    import pyloudnorm

    block = math.ceil(_LOUDNESS_BLOCK_SEC * sample_rate)
    if len(samples) < block:
        # Shorter than one gating block: measure the clip looped, which is its loudness without
        # diluting it with padding silence.
        samples = np.tile(samples, math.ceil(block / len(samples)))
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(samples))


def _limit_peaks(samples: np.ndarray, ceiling_db: float, sample_rate: int) -> np.ndarray:
    """A look-ahead peak limiter: per-sample gain for the ceiling, held (minimum filter) and then
    smoothed (moving average) over 5 ms, so the gain never jumps and every sample ends under
    the ceiling. Hand-written because no installed library has one (pyloudnorm measures only)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = _db_to_gain(ceiling_db)
    magnitude = np.abs(samples)
    if magnitude.max() <= ceiling:
        return samples
    window = 2 * round(_LIMITER_WINDOW_SEC * sample_rate / 2) + 1  # odd, so both filters centre alike
    gain = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12))
    gain = uniform_filter1d(minimum_filter1d(gain, window), window)
    return (samples * gain).astype(np.float32)
