"""The Chatterbox VC engine on the random-weight checkpoint (full-size S3Gen, upstream layout).

Random weights make noise-like audio, so these tests check what does not depend on trained
weights: the real loading path, exact output length, seeding, per-request targets under
concurrency, the target cache, the watermark and input errors. Sources are about a second long:
S3Gen also runs over the target's prompt, so one conversion costs 2-4 s of CPU here.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import pytest

from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, VCEngine, VoiceRef
from pipeline.engines.chatterbox import ChatterboxSettings
from pipeline.engines.chatterbox_vc import ChatterboxVCEngine
from pipeline.engines.selection import build_vc_engine
from pipeline.engines.unavailable import NoVoiceConversion
from pipeline.errors import InvalidRequest, UnsupportedCapability
from pipeline.settings import AppSettings
from tests.chatterbox_checkpoint import piper_sentence

pytestmark = pytest.mark.slow

SAMPLES_PER_TOKEN = 960  # 25 speech tokens per second at 24 kHz
TARGET_SENTENCES = {"morning": "Good morning, everyone.", "noon": "See you tomorrow at noon."}


@pytest.fixture(scope="module")
def engine(chatterbox_checkpoint: Path) -> ChatterboxVCEngine:
    # One intra-op thread, as in test_chatterbox_engine.py: more threads than free cores made S3Gen
    # up to 8x slower there.
    return ChatterboxVCEngine.load(
        ChatterboxSettings(checkpoint_dir=str(chatterbox_checkpoint), cpu_threads=1)
    )


@pytest.fixture(scope="module")
def source() -> AudioClip:
    """Piper speech at its own 22.05 kHz, about 0.7 s."""
    return piper_sentence("Hello there.")


@pytest.fixture(scope="module")
def targets() -> dict[str, VoiceRef]:
    return {name: VoiceRef.from_clip(name, piper_sentence(text)) for name, text in TARGET_SENTENCES.items()}


@pytest.fixture(scope="module")
def builtin_clip(engine: ChatterboxVCEngine, source: AudioClip) -> AudioClip:
    return engine.convert(source, None, ConversionParams(seed=1))


def test_engine_describes_itself(engine: ChatterboxVCEngine, chatterbox_checkpoint: Path) -> None:
    assert isinstance(engine, VCEngine)
    info = engine.info
    assert (info.name, info.device, info.sample_rate, info.supports_cloning) == (
        "chatterbox",
        "cpu",
        24000,
        True,
    )
    assert info.model == str(chatterbox_checkpoint)
    assert info.details["builtin_voice"] is True


def test_conversion_is_24khz_and_exactly_as_long_as_the_source(
    builtin_clip: AudioClip, source: AudioClip
) -> None:
    assert builtin_clip.sample_rate == 24000
    assert builtin_clip.samples.dtype == np.float32
    assert builtin_clip.num_samples == round(source.duration_sec * 24000)
    assert np.all(np.isfinite(builtin_clip.samples)) and np.abs(builtin_clip.samples).max() > 0.001
    metadata = builtin_clip.metadata
    # The tokenizer makes a token of every started 4 mel frames (10 ms each): the tokens cover the
    # source to within 10 ms, and the rendering is cut back to the source's length.
    assert -0.25 <= metadata["speech_tokens"] - source.duration_sec * 25 < 1
    assert (metadata["seed"], metadata["conditioning_cache_hit"], metadata["watermarked"]) == (1, True, False)


def test_a_source_of_whole_tokens_is_rendered_to_its_last_sample(
    engine: ChatterboxVCEngine, source: AudioClip, targets: dict[str, VoiceRef]
) -> None:
    # Upstream's embed_ref gives a 1.5 s target 75 mel frames for 37 prompt tokens; S3Gen would
    # then render 20 ms less than the source (leading it by 20 ms) and leave that much padding.
    noon = targets["noon"].audio
    odd_target = VoiceRef.from_clip(
        "odd",
        AudioClip(
            np.resize(librosa.resample(noon.samples, orig_sr=noon.sample_rate, target_sr=24000), 36_000),
            24000,
        ),
    )
    # 16 kHz, exactly 20 tokens (0.8 s).
    source_16k = librosa.resample(source.samples, orig_sr=source.sample_rate, target_sr=16000)
    whole_tokens = AudioClip(np.resize(source_16k, 20 * 640), 16000)
    clip = engine.convert(whole_tokens, odd_target, ConversionParams(seed=2))
    assert clip.metadata["speech_tokens"] == 20
    assert clip.num_samples == 20 * SAMPLES_PER_TOKEN
    assert np.count_nonzero(clip.samples[-SAMPLES_PER_TOKEN // 2 :]) > SAMPLES_PER_TOKEN // 4


def test_same_seed_same_audio_other_seed_other_audio(
    engine: ChatterboxVCEngine, source: AudioClip, builtin_clip: AudioClip
) -> None:
    again = engine.convert(source, None, ConversionParams(seed=1))
    other = engine.convert(source, None, ConversionParams(seed=2))
    np.testing.assert_array_equal(again.samples, builtin_clip.samples)
    assert other.num_samples == builtin_clip.num_samples
    assert not np.allclose(other.samples, builtin_clip.samples, atol=1e-3)


def test_the_target_decides_the_voice_and_is_embedded_once(
    engine: ChatterboxVCEngine, source: AudioClip, targets: dict[str, VoiceRef], builtin_clip: AudioClip
) -> None:
    morning = engine.convert(source, targets["morning"], ConversionParams(seed=1))
    noon = engine.convert(source, targets["noon"], ConversionParams(seed=1))
    morning_again = engine.convert(source, targets["morning"], ConversionParams(seed=1))
    assert morning.metadata["conditioning_cache_hit"] is False
    assert morning_again.metadata["conditioning_cache_hit"] is True
    assert morning_again.metadata["conditioning_sec"] < morning.metadata["conditioning_sec"] / 10
    np.testing.assert_array_equal(morning_again.samples, morning.samples)
    assert not np.allclose(morning.samples, noon.samples, atol=1e-3)
    assert not np.allclose(morning.samples, builtin_clip.samples, atol=1e-3)
    assert morning.num_samples == noon.num_samples == builtin_clip.num_samples


def test_concurrent_conversions_get_exactly_what_each_gets_alone(
    engine: ChatterboxVCEngine, source: AudioClip, targets: dict[str, VoiceRef]
) -> None:
    jobs = [(targets["morning"], 11), (targets["noon"], 12)]
    alone = [engine.convert(source, target, ConversionParams(seed=seed)).samples for target, seed in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(
            pool.map(lambda job: engine.convert(source, job[0], ConversionParams(seed=job[1])).samples, jobs)
        )
    for solo, concurrent in zip(alone, together, strict=True):
        np.testing.assert_array_equal(concurrent, solo)


def test_watermark_is_added_only_when_asked(
    engine: ChatterboxVCEngine, source: AudioClip, builtin_clip: AudioClip
) -> None:
    from perth.perth_net.perth_net_implicit.perth_watermarker import PerthImplicitWatermarker

    marked = engine.convert(source, None, ConversionParams(seed=1, disable_watermark=False))
    assert marked.metadata["watermarked"] is True
    assert marked.num_samples == builtin_clip.num_samples
    detector = PerthImplicitWatermarker()
    assert detector.get_watermark(marked.samples, sample_rate=24000).mean() > 0.5
    assert detector.get_watermark(builtin_clip.samples, sample_rate=24000).mean() < 0.5


def test_watermark_asked_of_a_server_without_perth_names_the_flag(
    engine: ChatterboxVCEngine, source: AudioClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_watermarker", None)
    with pytest.raises(UnsupportedCapability) as error:
        engine.convert(source, None, ConversionParams(seed=1, disable_watermark=False))
    assert error.value.param == "disable_watermark"


def test_unusable_target_or_source_is_a_client_error_naming_the_field(
    engine: ChatterboxVCEngine, source: AudioClip
) -> None:
    too_short = VoiceRef.from_clip("blip", AudioClip(np.full(12_000, 0.3, dtype=np.float32), 24000))
    with pytest.raises(InvalidRequest, match=r"0\.50 s") as error:
        engine.convert(source, too_short, ConversionParams(seed=1))
    assert error.value.param == "target_voice_source"
    silent = VoiceRef.from_clip("silence", AudioClip(np.zeros(48_000, dtype=np.float32), 24000))
    with pytest.raises(InvalidRequest, match="silent") as error:
        engine.convert(source, silent, ConversionParams(seed=1))
    assert error.value.param == "target_voice_source"
    for samples in (0, 1_000):  # nothing, and 45 ms: less than the tokenizer and S3Gen can take
        with pytest.raises(InvalidRequest) as error:
            engine.convert(
                AudioClip(np.full(samples, 0.1, np.float32), 22050), None, ConversionParams(seed=1)
            )
        assert error.value.param == "input_audio"


def test_checkpoint_without_builtin_voice_asks_for_a_target(
    chatterbox_checkpoint: Path, tmp_path: Path, source: AudioClip
) -> None:
    for path in chatterbox_checkpoint.iterdir():
        if path.name != "conds.pt":
            (tmp_path / path.name).symlink_to(path)
    bare = ChatterboxVCEngine.load(ChatterboxSettings(checkpoint_dir=str(tmp_path), cpu_threads=1))
    assert bare.info.details["builtin_voice"] is False
    with pytest.raises(InvalidRequest, match="target voice") as error:
        bare.convert(source, None, ConversionParams(seed=1))
    assert error.value.param == "target_voice_source"


def test_auto_with_a_local_checkpoint_converts_with_chatterbox(chatterbox_checkpoint: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        engine = build_vc_engine(
            AppSettings.model_validate(
                {"engine": "auto", "chatterbox": {"checkpoint_dir": str(chatterbox_checkpoint)}}
            )
        )
    assert isinstance(engine, ChatterboxVCEngine) and not isinstance(engine, NoVoiceConversion)
    assert "VC engine: Chatterbox" in caplog.text
