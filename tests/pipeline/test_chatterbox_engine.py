"""The Chatterbox engine on a random-weight checkpoint (upstream layout, 2-layer T3, full S3Gen).

Random weights make noise-like audio and never sample the stop token, so these tests check what
does not depend on trained weights: the real loading path, upstream-identical decoding, seeding,
per-request voices under concurrency, the conditioning cache, the watermark and input errors.
Texts are a few characters and the token cap is small, so one synthesis costs about 2-3 s of CPU
(mostly S3Gen, which also runs over the reference prompt).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline import devices
from pipeline.clip import AudioClip
from pipeline.engines.base import SynthesisParams, TTSEngine, VoiceRef
from pipeline.engines.chatterbox import (
    ChatterboxEngine,
    ChatterboxSettings,
    chatterbox_weights_available,
    prepare_torch,
    speech_token_cap,
)
from pipeline.engines.chatterbox_cache import ConditioningCache
from pipeline.engines.chatterbox_loading import CHECKPOINT_FILES, WEIGHT_FILES, resolve_checkpoint
from pipeline.errors import EngineUnavailable, InvalidRequest
from tests.chatterbox_checkpoint import REFERENCE_FILE, piper_sentence

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN_CAP = 10
TEXT = "Hi."
SAMPLES_PER_TOKEN = 960  # 25 speech tokens per second at 24 kHz
VOICE_SENTENCES = {"morning": "Good morning, everyone.", "noon": "See you tomorrow at noon."}


# --- fast: no model ---------------------------------------------------------------------------


def test_engine_module_imports_without_torch() -> None:
    # engine=auto asks chatterbox_weights_available before deciding to pay for torch + chatterbox.
    probe = (
        "import sys, pipeline.engines.chatterbox; print('torch' in sys.modules, 'chatterbox' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.split() == ["False", "False"]


def test_token_cap_follows_text_length_up_to_the_ceiling() -> None:
    assert speech_token_cap("Hi.", 2.5, 1000) == 8 + 25
    assert speech_token_cap("x" * 100, 2.5, 1000) == 250 + 25
    assert speech_token_cap("x" * 400, 2.5, 1000) == 1000
    assert speech_token_cap("x" * 100, 2.5, 40) == 40


def test_settings_reject_unknown_device_and_dtype() -> None:
    with pytest.raises(ValueError, match="device"):
        ChatterboxSettings(device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        ChatterboxSettings(dtype="int8")
    assert ChatterboxSettings(device="cuda:1").device == "cuda:1"


def test_a_half_gpu_replica_runs_on_its_gpu_with_torch_capped_at_its_share(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(devices, "ray_gpu_assignment", lambda: devices.GpuAssignment(("2",), 0.5))
    monkeypatch.setenv(devices.CUDA_VISIBLE_DEVICES, "2")  # what Ray sets for the replica
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    caps = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *cap: caps.append(cap))
    placement = prepare_torch(ChatterboxSettings())
    assert (placement.device, placement.assigned_gpus) == ("cuda:0", ("2",))
    assert caps == [(0.5, torch.device("cuda:0"))]


def test_a_replica_without_gpus_runs_on_cpu_where_torch_sees_a_gpu(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(devices, "ray_gpu_assignment", lambda: devices.GpuAssignment((), 0.0))
    monkeypatch.setenv(devices.CUDA_VISIBLE_DEVICES, "")
    monkeypatch.delenv(devices.CUDA_VISIBLE_DEVICES)  # Ray leaves it unset; restored after the test
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prepare_torch(ChatterboxSettings()).device == "cpu"
    assert os.environ[devices.CUDA_VISIBLE_DEVICES] == ""


def test_cache_computes_a_voice_once_when_requests_arrive_together() -> None:
    cache: ConditioningCache[str] = ConditioningCache(4)
    computations = []
    gate = threading.Event()

    def compute() -> str:
        computations.append(1)
        gate.wait(5)
        return "conditioning"

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(cache.get_or_compute, "voice", compute) for _ in range(6)]
        time.sleep(0.2)
        gate.set()
        results = [future.result() for future in futures]
    assert len(computations) == 1
    assert [value for value, _ in results] == ["conditioning"] * 6
    assert sorted(hit for _, hit in results) == [False] + [True] * 5


def test_cache_evicts_the_least_recently_used_voice() -> None:
    cache: ConditioningCache[str] = ConditioningCache(2)
    cache.get_or_compute("a", lambda: "A")
    cache.get_or_compute("b", lambda: "B")
    assert cache.get_or_compute("a", lambda: "A again") == ("A", True)  # a is now the most recent
    cache.get_or_compute("c", lambda: "C")
    assert cache.get_or_compute("a", lambda: "A again") == ("A", True)
    assert cache.get_or_compute("b", lambda: "B again") == ("B again", False)
    assert len(cache) == 2


def test_cache_does_not_keep_a_failed_computation() -> None:
    cache: ConditioningCache[str] = ConditioningCache(2)

    def fail() -> str:
        raise InvalidRequest("bad audio", param="reference_audio_filename")

    with pytest.raises(InvalidRequest):
        cache.get_or_compute("voice", fail)
    assert cache.get_or_compute("voice", lambda: "fixed") == ("fixed", False)


def test_local_dir_counts_only_when_every_weight_file_is_there(tmp_path: Path) -> None:
    for name in WEIGHT_FILES:
        (tmp_path / name).touch()
    settings = ChatterboxSettings(checkpoint_dir=str(tmp_path))
    assert chatterbox_weights_available(settings) == str(tmp_path)  # conds.pt is optional
    (tmp_path / "s3gen.safetensors").unlink()
    assert chatterbox_weights_available(settings) is None
    with pytest.raises(EngineUnavailable, match=r"lacks s3gen\.safetensors"):
        ChatterboxEngine.load(settings)
    with pytest.raises(EngineUnavailable, match="does not exist"):
        ChatterboxEngine.load(ChatterboxSettings(checkpoint_dir=str(tmp_path / "nowhere")))


def test_weights_in_the_hugging_face_cache_are_found_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    settings = ChatterboxSettings(hf_repo="ResembleAI/chatterbox")
    assert chatterbox_weights_available(settings) is None
    repo = tmp_path / "models--ResembleAI--chatterbox"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for name in CHECKPOINT_FILES[:-1]:
        (snapshot / name).touch()
    assert chatterbox_weights_available(settings) is None  # conds.pt is part of a hub checkpoint
    (snapshot / CHECKPOINT_FILES[-1]).touch()
    assert chatterbox_weights_available(settings) == str(snapshot)
    assert resolve_checkpoint(None, "ResembleAI/chatterbox") == snapshot


def test_failed_download_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        EngineUnavailable, match=r"could not download ve\.safetensors of ResembleAI/chatterbox"
    ):
        ChatterboxEngine.load(ChatterboxSettings())


# --- slow: the random checkpoint (session fixture ``chatterbox_checkpoint``, tests/conftest.py) ---


@pytest.fixture(scope="module")
def engine(chatterbox_checkpoint: Path) -> ChatterboxEngine:
    # One intra-op thread: with more threads than free cores (requests in threads, a busy CI
    # machine), torch's spinning OpenMP workers made S3Gen up to 8x slower here.
    return ChatterboxEngine.load(
        ChatterboxSettings(
            checkpoint_dir=str(chatterbox_checkpoint), cpu_threads=1, max_new_tokens_cap=TOKEN_CAP
        )
    )


@pytest.fixture(scope="module")
def voices() -> dict[str, VoiceRef]:
    return {name: VoiceRef.from_clip(name, piper_sentence(text)) for name, text in VOICE_SENTENCES.items()}


@pytest.fixture(scope="module")
def builtin_clip(engine: ChatterboxEngine) -> AudioClip:
    return engine.synthesize(TEXT, None, SynthesisParams(seed=1))


@pytest.mark.slow
def test_upstream_from_local_loads_the_random_checkpoint(chatterbox_checkpoint: Path) -> None:
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.tts import ChatterboxTTS

    from tests.chatterbox_checkpoint import reduced_backbone

    # from_local always builds upstream's default backbone; give it this checkpoint's depth.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(LLAMA_CONFIGS, "Llama_520M", reduced_backbone().llama_config)
        tts = ChatterboxTTS.from_local(chatterbox_checkpoint, "cpu")
    assert tts.t3.cfg.num_hidden_layers == 2
    assert tts.conds is not None
    assert tts.tokenizer.text_to_tokens("Hi").shape == (1, 2)


@pytest.mark.slow
def test_engine_describes_itself(engine: ChatterboxEngine, chatterbox_checkpoint: Path) -> None:
    assert isinstance(engine, TTSEngine)
    info = engine.info
    assert (info.name, info.device, info.sample_rate, info.supports_cloning) == (
        "chatterbox",
        "cpu",
        24000,
        True,
    )
    assert info.model == str(chatterbox_checkpoint)
    assert info.details["t3_layers"] == 2
    assert info.details["builtin_voice"] is True
    assert info.details["max_new_tokens_cap"] == TOKEN_CAP
    assert info.details["gpu_memory_fraction"] is None  # not a fractional GPU replica


@pytest.mark.slow
def test_synthesis_is_24khz_float32_as_long_as_its_speech_tokens(builtin_clip: AudioClip) -> None:
    metadata = builtin_clip.metadata
    assert builtin_clip.sample_rate == 24000
    assert builtin_clip.samples.dtype == np.float32
    assert np.all(np.isfinite(builtin_clip.samples)) and np.abs(builtin_clip.samples).max() > 0.001
    # Random T3 never samples its stop token: it runs to the cap.
    assert metadata["stop_reason"] == "token_cap"
    assert metadata["sampled_speech_tokens"] == TOKEN_CAP
    assert 0 < metadata["speech_tokens"] <= TOKEN_CAP
    # S3Gen makes 2 mel frames (40 ms) per token; one frame may go to the reference's odd length.
    assert (
        abs(builtin_clip.num_samples - metadata["speech_tokens"] * SAMPLES_PER_TOKEN)
        <= SAMPLES_PER_TOKEN // 2
    )
    assert metadata["seed"] == 1


@pytest.mark.slow
def test_same_seed_same_audio_other_seed_other_audio(
    engine: ChatterboxEngine, builtin_clip: AudioClip
) -> None:
    again = engine.synthesize(TEXT, None, SynthesisParams(seed=1))
    other = engine.synthesize(TEXT, None, SynthesisParams(seed=2))
    np.testing.assert_array_equal(again.samples, builtin_clip.samples)
    assert other.num_samples != builtin_clip.num_samples or not np.array_equal(
        other.samples, builtin_clip.samples
    )


@pytest.mark.slow
def test_builtin_voice_is_the_checkpoints_conds_pt(
    engine: ChatterboxEngine, chatterbox_checkpoint: Path
) -> None:
    import torch
    from chatterbox.tts import Conditionals

    saved = Conditionals.load(chatterbox_checkpoint / "conds.pt")
    builtin = engine.model.builtin_voice
    assert torch.equal(builtin.t3.speaker_emb, saved.t3.speaker_emb)
    assert torch.equal(builtin.t3.cond_prompt_speech_tokens, saved.t3.cond_prompt_speech_tokens)
    for key, value in saved.gen.items():
        assert value is None or torch.equal(builtin.s3gen_reference[key], value), key


@pytest.mark.slow
def test_conditioning_matches_upstream_prepare_conditionals(
    engine: ChatterboxEngine, chatterbox_checkpoint: Path
) -> None:
    import torch
    from chatterbox.tts import Conditionals

    # conds.pt is upstream's prepare_conditionals on this file (read back at its own rate). Floats
    # may differ in the last bits: torch's thread count there and here need not match.
    samples, rate = soundfile.read(chatterbox_checkpoint / REFERENCE_FILE, dtype="float32")
    ours = engine.model.condition(samples, rate)
    upstream = Conditionals.load(chatterbox_checkpoint / "conds.pt")
    assert torch.equal(ours.t3.cond_prompt_speech_tokens, upstream.t3.cond_prompt_speech_tokens)
    torch.testing.assert_close(ours.t3.speaker_emb, upstream.t3.speaker_emb, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.s3gen_reference["prompt_token"], upstream.gen["prompt_token"])
    for key in ("prompt_feat", "embedding"):
        torch.testing.assert_close(ours.s3gen_reference[key], upstream.gen[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_voice_is_conditioned_once_then_served_from_the_cache(
    engine: ChatterboxEngine, voices: dict[str, VoiceRef]
) -> None:
    voice = VoiceRef.from_clip(
        "fresh", voices["morning"].audio.with_samples(voices["morning"].audio.samples * 0.9)
    )
    first = engine.synthesize(TEXT, voice, SynthesisParams(seed=5))
    second = engine.synthesize(TEXT, voice, SynthesisParams(seed=5))
    assert first.metadata["conditioning_cache_hit"] is False
    assert second.metadata["conditioning_cache_hit"] is True
    assert second.metadata["conditioning_sec"] < first.metadata["conditioning_sec"] / 10
    np.testing.assert_array_equal(first.samples, second.samples)


@pytest.mark.slow
def test_concurrent_requests_get_exactly_the_audio_each_gets_alone(
    engine: ChatterboxEngine, voices: dict[str, VoiceRef]
) -> None:
    """Concurrent requests share T3's batch (t3_peak_batch) and still get their own audio exactly."""
    jobs = [(voice, seed) for voice in voices.values() for seed in (11, 12)]
    alone = [engine.synthesize(TEXT, voice, SynthesisParams(seed=seed)) for voice, seed in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(
            pool.map(lambda job: engine.synthesize(TEXT, job[0], SynthesisParams(seed=job[1])), jobs)
        )
    assert {clip.metadata["t3_peak_batch"] for clip in alone} == {1}
    assert max(clip.metadata["t3_peak_batch"] for clip in together) >= 2
    for solo, concurrent in zip(alone, together, strict=True):
        np.testing.assert_array_equal(concurrent.samples, solo.samples)
    # The voice matters: same seed, other voice, other audio.
    first, third = alone[0].samples, alone[2].samples
    assert first.shape != third.shape or not np.array_equal(first, third)


@pytest.mark.slow
def test_watermark_is_added_only_when_asked(engine: ChatterboxEngine, builtin_clip: AudioClip) -> None:
    from perth.perth_net.perth_net_implicit.perth_watermarker import PerthImplicitWatermarker

    marked = engine.synthesize(TEXT, None, SynthesisParams(seed=1, disable_watermark=False))
    assert marked.metadata["watermarked"] is True and builtin_clip.metadata["watermarked"] is False
    assert marked.num_samples == builtin_clip.num_samples
    assert not np.array_equal(marked.samples, builtin_clip.samples)
    detector = PerthImplicitWatermarker()
    assert detector.get_watermark(marked.samples, sample_rate=24000).mean() > 0.5
    assert detector.get_watermark(builtin_clip.samples, sample_rate=24000).mean() < 0.5


@pytest.mark.slow
def test_exaggeration_above_one_is_capped_at_one(engine: ChatterboxEngine) -> None:
    clip = engine.synthesize(TEXT, None, SynthesisParams(seed=1, exaggeration=2.0))
    assert clip.metadata["exaggeration"] == 1.0


@pytest.mark.slow
def test_exaggeration_changes_only_the_requests_own_t3_conditioning(engine: ChatterboxEngine) -> None:
    import torch

    model = engine.model
    with torch.inference_mode():
        neutral = model.t3.prepare_conditioning(model.builtin_voice.for_request(0.5))
        excited = model.t3.prepare_conditioning(model.builtin_voice.for_request(1.0))
    # Speaker and prompt positions are shared; the last position is the emotion embedding.
    assert torch.equal(neutral[:, :-1], excited[:, :-1])
    assert not torch.equal(neutral[:, -1], excited[:, -1])
    # T3 writes the prompt embedding into the T3Cond it is given: the shared one stays untouched.
    assert model.builtin_voice.t3.cond_prompt_speech_emb is None


@pytest.mark.slow
def test_unusable_reference_audio_is_a_client_error(engine: ChatterboxEngine) -> None:
    too_short = VoiceRef.from_clip("blip", AudioClip(np.full(1200, 0.3, dtype=np.float32), 24000))
    with pytest.raises(InvalidRequest, match=r"0\.05 s") as error:
        engine.synthesize(TEXT, too_short, SynthesisParams(seed=1))
    assert error.value.param == "reference_audio_filename"
    silent = VoiceRef.from_clip("silence", AudioClip(np.zeros(48000, dtype=np.float32), 24000))
    with pytest.raises(InvalidRequest, match="silent"):
        engine.synthesize(TEXT, silent, SynthesisParams(seed=1))


@pytest.mark.slow
def test_empty_or_overlong_text_is_a_client_error(engine: ChatterboxEngine) -> None:
    with pytest.raises(InvalidRequest) as error:
        engine.synthesize("  ", None, SynthesisParams(seed=1))
    assert error.value.param == "text"
    with pytest.raises(InvalidRequest, match="at most 2048"):
        engine.synthesize("a" * 3000, None, SynthesisParams(seed=1))


@pytest.mark.slow
def test_checkpoint_without_builtin_voice_asks_for_a_reference(
    chatterbox_checkpoint: Path, tmp_path: Path
) -> None:
    for path in chatterbox_checkpoint.iterdir():
        if path.name != "conds.pt":
            (tmp_path / path.name).symlink_to(path)
    bare = ChatterboxEngine.load(
        ChatterboxSettings(checkpoint_dir=str(tmp_path), max_new_tokens_cap=TOKEN_CAP)
    )
    assert bare.info.details["builtin_voice"] is False
    with pytest.raises(InvalidRequest, match="reference voice") as error:
        bare.synthesize(TEXT, None, SynthesisParams(seed=1))
    assert error.value.param == "reference_audio_filename"


# --- slow: our decoding equals upstream's, draw for draw ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        SynthesisParams(seed=3),
        SynthesisParams(
            seed=4, cfg_weight=0.5, temperature=0.8, min_p=0.1, top_p=0.9, repetition_penalty=1.5
        ),
    ],
)
def test_token_loop_samples_what_upstream_t3_inference_samples(
    engine: ChatterboxEngine, params: SynthesisParams
) -> None:
    """The batched engine loop, given one request, draws upstream's tokens (its rows padded to 4)."""
    import torch

    model = engine.model
    text_tokens = model.text_tokens("Hello there.")
    ours = _decode_alone(engine, model.builtin_voice.for_request(0.7), text_tokens, params)
    torch.manual_seed(params.seed)
    upstream = model.t3.inference(
        t3_cond=model.builtin_voice.for_request(0.7),
        text_tokens=torch.cat([text_tokens, text_tokens]),
        max_new_tokens=TOKEN_CAP,
        temperature=params.temperature,
        cfg_weight=params.cfg_weight,
        repetition_penalty=params.repetition_penalty,
        min_p=params.min_p,
        top_p=params.top_p,
    )
    upstream_valid = upstream[upstream < 6561]
    assert ours.sampled == upstream.size(1) == TOKEN_CAP
    assert ours.tokens.squeeze(0).tolist() == upstream_valid.tolist()


@pytest.mark.slow
def test_token_loop_without_cfg_is_seeded_too(engine: ChatterboxEngine) -> None:
    """With cfg_weight 0 (upstream's loop crashes there) the unconditional row contributes nothing."""
    model = engine.model
    params = SynthesisParams(seed=3, cfg_weight=0.0)
    runs = [
        _decode_alone(engine, model.builtin_voice.for_request(0.5), model.text_tokens(TEXT), params)
        for _ in range(2)
    ]
    assert runs[0].sampled == TOKEN_CAP
    assert runs[0].tokens.equal(runs[1].tokens)


def _decode_alone(engine: ChatterboxEngine, t3_cond, text_tokens, params: SynthesisParams):
    import torch

    from pipeline.engines.t3_scheduler import DecodeJob

    generator = torch.Generator().manual_seed(params.seed)
    return engine.scheduler.submit(DecodeJob(t3_cond, text_tokens, params, TOKEN_CAP, generator)).result()


@pytest.mark.slow
def test_rendering_equals_upstream_s3gen_inference(engine: ChatterboxEngine) -> None:
    import torch

    from pipeline.engines.chatterbox_decoding import render_waveform

    model = engine.model
    speech_tokens = torch.tensor([[10, 200, 3000, 4000, 6000, 17, 6560]])
    reference = model.builtin_voice.s3gen_reference
    ours = render_waveform(model.s3gen, speech_tokens, reference, torch.Generator().manual_seed(9))
    torch.manual_seed(9)
    upstream, _ = model.s3gen.inference(speech_tokens=speech_tokens, ref_dict=dict(reference))
    np.testing.assert_array_equal(ours, upstream.squeeze(0).numpy())
