"""Windowed voice conversion (pipeline/conversion.py) against fake async engines: no models, fast."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import numpy as np
import pytest

from pipeline.audio import resample
from pipeline.clip import AudioClip
from pipeline.conversion import (
    VoiceConversionPipeline,
    Window,
    join_windows,
    plan_windows,
    window_seed,
)
from pipeline.engines.base import ConversionParams, VoiceRef
from pipeline.errors import EngineUnavailable, GenerationFailed, InvalidRequest

SR = 24_000
TEN_MINUTES = 10 * 60 * SR


def sine(num_samples: int, frequency: float = 220.0, sample_rate: int = SR) -> AudioClip:
    t = np.arange(num_samples) / sample_rate
    return AudioClip((0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), sample_rate)


async def identity(source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip:
    return AudioClip(source.samples.copy(), source.sample_rate, metadata={"seed": params.seed})


def run(pipeline: VoiceConversionPipeline, source: AudioClip, chunk_sec=5.0, overlap_sec=0.25, seed=7):
    return asyncio.run(pipeline.run(source, None, seed, True, chunk_sec, overlap_sec))


# --- planning ------------------------------------------------------------------------------------


def test_input_no_longer_than_a_chunk_is_one_window() -> None:
    assert plan_windows(5 * SR, SR, 5.0, 0.5) == [Window(0, 0, 5 * SR)]
    assert plan_windows(100, SR, 5.0, 0.5) == [Window(0, 0, 100)]


@pytest.mark.parametrize(
    ("chunk_sec", "overlap_sec"), [(60.0, 0.1), (7.0, 0.25), (3.3, 1.2), (2.0, 1.0), (5.0, 0.0), (1.0, 0.5)]
)
def test_windows_cover_ten_minutes_and_overlap_by_exactly_the_overlap(
    chunk_sec: float, overlap_sec: float
) -> None:
    windows = plan_windows(TEN_MINUTES, SR, chunk_sec, overlap_sec)
    overlap, chunk = round(overlap_sec * SR), round(chunk_sec * SR)
    assert windows[0].start == 0 and windows[-1].end == TEN_MINUTES
    assert [window.index for window in windows] == list(range(len(windows)))
    for previous, window in pairwise(windows):
        assert previous.end - window.start == overlap
    assert all(window.num_samples == chunk for window in windows[:-1])
    # No sliver of a window at the end, and a merged tail makes the last window at most one step longer.
    assert min(chunk, max(overlap, SR)) <= windows[-1].num_samples < 2 * chunk - overlap


def test_a_tail_under_one_second_is_merged_into_the_window_before() -> None:
    # chunk 10 s, step 9 s: windows start at 0, 9, 18 s; an input of 18.9 s leaves a 0.9 s tail.
    merged = plan_windows(round(18.9 * SR), SR, 10.0, 1.0)
    assert [(w.start, w.end) for w in merged] == [(0, 10 * SR), (9 * SR, round(18.9 * SR))]
    kept = plan_windows(round(19.5 * SR), SR, 10.0, 1.0)
    assert [(w.start, w.end) for w in kept] == [(0, 10 * SR), (9 * SR, 19 * SR), (18 * SR, round(19.5 * SR))]


@pytest.mark.parametrize(
    ("chunk_sec", "overlap_sec"), [(5.0, 5.0), (1.0, 5.0), (4.0, 2.5), (0.0, 0.0), (5.0, -1.0)]
)
def test_impossible_chunk_and_overlap_are_refused(chunk_sec: float, overlap_sec: float) -> None:
    with pytest.raises(ValueError):
        plan_windows(60 * SR, SR, chunk_sec, overlap_sec)


# --- joining -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_sec", "overlap_sec"), [(60.0, 0.1), (7.0, 0.25), (2.0, 1.0), (5.0, 0.0)])
def test_identity_conversion_of_ten_minutes_gives_back_the_same_sine(
    chunk_sec: float, overlap_sec: float
) -> None:
    source = sine(TEN_MINUTES + 123)
    result = run(VoiceConversionPipeline(identity), source, chunk_sec, overlap_sec)
    assert result.audio.sample_rate == SR
    assert result.audio.num_samples == source.num_samples
    np.testing.assert_allclose(result.audio.samples, source.samples, atol=1e-6)


@pytest.mark.parametrize("shared_fraction", [0.0, 0.5, 1.0])
def test_crossfade_keeps_noise_power_level_whatever_the_windows_share(shared_fraction: float) -> None:
    """Windows converted from the same noise with ``shared_fraction`` of their power in common (0: as
    unrelated as two vocoder runs can be, 1: identical): the joined power stays at 1 through every
    overlap, where a linear crossfade would dip to ~0.5 and a plain equal-power one swell to ~2."""
    rng = np.random.default_rng(0)
    source = AudioClip(rng.standard_normal(40 * SR).astype(np.float32), SR)

    async def partly_fresh_noise(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        fresh = np.random.default_rng(params.seed).standard_normal(piece.num_samples)
        mixed = np.sqrt(shared_fraction) * piece.samples + np.sqrt(1 - shared_fraction) * fresh
        return piece.with_samples(mixed.astype(np.float32))

    windows = plan_windows(source.num_samples, SR, 6.0, 0.5)
    joined = run(VoiceConversionPipeline(partly_fresh_noise), source, 6.0, 0.5).audio.samples
    overlap = round(0.5 * SR)
    for window in windows[1:]:
        middle = joined[window.start + overlap // 4 : window.start + 3 * overlap // 4]
        assert np.mean(middle.astype(np.float64) ** 2) == pytest.approx(1.0, abs=0.1)
    assert np.mean(joined.astype(np.float64) ** 2) == pytest.approx(1.0, abs=0.02)


def test_join_refuses_a_clip_that_does_not_fit_its_window() -> None:
    windows = plan_windows(10 * SR, SR, 6.0, 0.5)
    clips = [AudioClip(np.zeros(w.num_samples, np.float32), SR) for w in windows]
    clips[1] = AudioClip(np.zeros(windows[1].num_samples - 1, np.float32), SR)
    with pytest.raises(ValueError, match="window 1"):
        join_windows(clips, windows)


# --- the pipeline ---------------------------------------------------------------------------------


def test_all_windows_are_converted_at_once() -> None:
    source = sine(30 * SR)
    num_windows = len(plan_windows(source.num_samples, SR, 5.0, 0.25))
    in_flight, peak = 0, 0
    everyone_started = asyncio.Event()

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == num_windows:
            everyone_started.set()
        # Sequential conversion would wait here forever: the timeout turns that into a failure.
        await asyncio.wait_for(everyone_started.wait(), timeout=5)
        in_flight -= 1
        return await identity(piece, target, params)

    result = run(VoiceConversionPipeline(convert), source)
    assert peak == num_windows == len(result.windows) == 7


def test_window_seeds_derive_from_the_request_seed_and_reproduce() -> None:
    seen: dict[int, list[int]] = {}

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        assert params.disable_watermark is True
        return await identity(piece, target, params)

    first = run(VoiceConversionPipeline(convert), sine(20 * SR), seed=42)
    again = run(VoiceConversionPipeline(convert), sine(20 * SR), seed=42)
    other = run(VoiceConversionPipeline(convert), sine(20 * SR), seed=43)
    for name, result in (("first", first), ("again", again), ("other", other)):
        seen[name] = [report.metadata["seed"] for report in result.windows]
    assert seen["first"][0] == 42 and seen["other"][0] == 43
    assert len(set(seen["first"])) == len(seen["first"]) == 5
    assert seen["first"] == seen["again"] == [window_seed(42, i) for i in range(5)]
    assert not set(seen["first"]) & set(seen["other"])


def test_a_failed_window_is_retried_with_its_seed_and_reported() -> None:
    calls: list[tuple[float, int]] = []

    async def flaky(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        calls.append((piece.samples[0], params.seed))
        if params.seed == window_seed(7, 2) and sum(seed == params.seed for _, seed in calls) == 1:
            raise GenerationFailed("the engine returned no audio")
        return await identity(piece, target, params)

    source = sine(20 * SR)
    result = run(VoiceConversionPipeline(flaky, attempts=2), source)
    assert [report.attempts for report in result.windows] == [1, 1, 2, 1, 1]
    assert [seed for _, seed in calls].count(window_seed(7, 2)) == 2
    np.testing.assert_allclose(result.audio.samples, source.samples, atol=1e-6)
    assert (result.windows[2].start_sec, result.windows[2].end_sec) == (9.5, 14.5)


@pytest.mark.parametrize(
    "failure", [GenerationFailed("CUDA out of memory"), GenerationFailed("the engine returned no audio")]
)
def test_a_window_failing_every_attempt_fails_the_request_naming_it(failure: Exception) -> None:
    attempts, cancelled = [], []

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        if params.seed == window_seed(7, 1):
            attempts.append(1)
            raise failure
        if params.seed == window_seed(7, 3):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(1)
                raise
        return await identity(piece, target, params)

    async def scenario() -> GenerationFailed:
        with pytest.raises(GenerationFailed) as error:
            await VoiceConversionPipeline(convert, attempts=3).run(sine(20 * SR), None, 7, True, 5.0, 0.25)
        await asyncio.sleep(0.01)  # long enough for a cancellation to land, far short of the 30 s
        # The rest of the request stops: no silence stands in for the window, no work goes on.
        assert cancelled == [1]
        return error.value

    message = asyncio.run(scenario()).message
    assert "window 1 (4.75-9.75 s)" in message and "3 attempts" in message
    assert str(failure) in message
    assert len(attempts) == 3


def test_client_errors_are_not_retried() -> None:
    calls = []

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        calls.append(params.seed)
        raise InvalidRequest("reference voice 'x' is silent", param="target_voice_source")

    with pytest.raises(InvalidRequest) as error:
        run(VoiceConversionPipeline(convert, attempts=3), sine(3 * SR))
    assert error.value.param == "target_voice_source"
    assert calls == [7]


def test_source_is_resampled_to_the_engine_rate_and_keeps_its_duration() -> None:
    rates = []

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        rates.append(piece.sample_rate)
        return await identity(piece, target, params)

    source = sine(round(12.3 * 22_050) + 7, sample_rate=22_050)
    result = run(VoiceConversionPipeline(convert), source)
    assert set(rates) == {SR}
    assert result.audio.sample_rate == SR
    assert result.audio.num_samples == resample(source, SR).num_samples
    assert abs(result.audio.duration_sec - source.duration_sec) < 1 / SR


def test_windows_an_engine_returns_at_its_own_rate_are_fitted() -> None:
    async def at_22k(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        return resample(piece, 22_050)

    source = sine(13 * SR)
    result = run(VoiceConversionPipeline(at_22k), source)
    assert result.audio.num_samples == source.num_samples


def test_an_engine_returning_the_wrong_length_fails_the_window() -> None:
    async def half(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        return piece.with_samples(piece.samples[: piece.num_samples // 2])

    with pytest.raises(GenerationFailed, match="window 0"):
        run(VoiceConversionPipeline(half), sine(3 * SR))


def test_bad_requests_are_client_errors() -> None:
    with pytest.raises(InvalidRequest) as error:
        run(VoiceConversionPipeline(identity), sine(20 * SR), chunk_sec=1.0, overlap_sec=5.0)
    assert error.value.param == "overlap_sec"
    with pytest.raises(InvalidRequest) as error:
        run(VoiceConversionPipeline(identity), AudioClip(np.zeros(0, np.float32), SR))
    assert error.value.param == "input_audio"


def test_reports_carry_each_windows_engine_metadata() -> None:
    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        return AudioClip(piece.samples, piece.sample_rate, metadata={"replica": "r1", "speech_tokens": 3})

    result = run(VoiceConversionPipeline(convert), sine(9 * SR))
    assert [report.metadata for report in result.windows] == [{"replica": "r1", "speech_tokens": 3}] * 2
    assert result.audio.metadata == {"seed": 7, "windows": 2}


@pytest.mark.parametrize("failure", [TypeError("a bug"), EngineUnavailable("no model")])
def test_errors_other_than_a_failed_generation_are_not_retried_and_stop_the_other_windows(
    failure: Exception,
) -> None:
    """A bug or a missing model would fail every attempt alike: it fails the request at once,
    as itself, instead of being dressed up as "failed after 3 attempts"."""
    attempts = []

    async def convert(piece: AudioClip, target, params: ConversionParams) -> AudioClip:
        if params.seed == window_seed(7, 1):
            attempts.append(1)
            raise failure
        return await identity(piece, target, params)

    with pytest.raises(type(failure)):
        run(VoiceConversionPipeline(convert, attempts=3), sine(20 * SR))
    assert attempts == [1]
