"""Chatterbox (real upstream classes, random-weight checkpoint) behind the real Serve app, over HTTP.

Random weights make noise, not words, so these tests check what does not depend on training:
rate, duration from the token cap, determinism per seed, isolation of concurrent voices, the
conditioning cache and errors. Whisper validation is bypassed (it would reject noise).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import librosa
import numpy as np
import pytest
import soundfile

from pipeline.audio import decode_audio
from tests.chatterbox_checkpoint import piper_sentence

pytestmark = pytest.mark.slow

SPEECH_TOKENS_PER_SEC = 25
TOKEN_CAP = 25  # max_new_tokens of the chatterbox_app fixture
FAST = {
    "bypass_whisper_checking": True,
    "num_candidates_per_chunk": 1,
    "max_attempts_per_candidate": 1,
    "export_formats": ["wav"],
}


def write_wav(path, clip) -> None:
    soundfile.write(path, clip.samples, clip.sample_rate, format="WAV")


@pytest.fixture(scope="module")
def voices(data_dirs):
    """Two different speakers: a Piper sentence, and another sentence shifted down five semitones."""
    first = piper_sentence("This is the first reference speaker talking.")
    second = piper_sentence("And here is a second, rather different voice.")
    lowered = librosa.effects.pitch_shift(second.samples, sr=second.sample_rate, n_steps=-5)
    write_wav(data_dirs["voices"] / "voice_a.wav", first)
    write_wav(data_dirs["voices"] / "voice_b.wav", second.with_samples(lowered))
    return ("voice_a.wav", "voice_b.wav")


@pytest.fixture(scope="module")
def cbx(chatterbox_app, voices):
    with httpx.Client(base_url=chatterbox_app, timeout=600) as http:
        yield http


def speak(cbx, text: str, voice: str | None, seed: int, **query) -> httpx.Response:
    response = cbx.post(
        "/api/v1/tts",
        params=query,
        json={"text": text, "reference_audio_filename": voice, "seed": seed, **FAST},
    )
    assert response.status_code == 200, response.text
    return response


def test_health_reports_chatterbox_with_cloning(cbx):
    tts = cbx.get("/api/v1/health").json()["engines"]["tts"]
    assert tts["name"] == "chatterbox"
    assert tts["supports_cloning"] is True
    assert tts["device"] == "cpu"
    assert tts["t3_layers"] == 2


def test_cloned_speech_is_24khz_and_as_long_as_its_speech_tokens(cbx, voices):
    response = speak(cbx, "Hi there.", voices[0], seed=7, response_mode="url")
    assert response.headers["x-engine"].startswith("chatterbox")
    assert response.headers["x-generation-seed"] == "7"
    report = response.json()
    metadata = report["chunks"][0]["engine_metadata"]
    # Random T3 never samples its stop token, so every chunk runs to the cap; the ids it samples
    # beyond S3's vocabulary (special tokens) are dropped before S3Gen, as upstream does.
    assert metadata["stop_reason"] == "token_cap"
    assert metadata["sampled_speech_tokens"] == TOKEN_CAP
    assert 0 < metadata["speech_tokens"] <= TOKEN_CAP
    url = report["output_files"][0]["url"]
    assert url.startswith("/cbx/outputs/"), "output URLs must include the app's route prefix"
    audio = decode_audio(cbx.get(url.removeprefix("/cbx")).content)
    assert audio.sample_rate == report["sample_rate"] == 24_000
    assert audio.duration_sec == pytest.approx(metadata["speech_tokens"] / SPEECH_TOKENS_PER_SEC, abs=0.1)
    assert np.abs(audio.samples).max() > 0.01, "silence instead of generated audio"


def test_same_seed_gives_identical_audio_and_another_seed_does_not(cbx, voices):
    first = speak(cbx, "Same seed.", voices[0], seed=11).content
    again = speak(cbx, "Same seed.", voices[0], seed=11).content
    other = speak(cbx, "Same seed.", voices[0], seed=12).content
    assert first == again
    assert first != other


def test_concurrent_requests_share_one_t3_batch_and_match_each_alone(cbx, voices):
    """Batched decoding keeps every request's own voice and seed: byte-identical files."""
    requests = [(voices[0], 21), (voices[1], 21), (voices[0], 22)]

    def speak_and_fetch(request) -> tuple[bytes, int]:
        report = speak(cbx, "Hello you.", *request, response_mode="url").json()
        audio = cbx.get(report["output_files"][0]["url"].removeprefix("/cbx")).content
        return audio, report["chunks"][0]["engine_metadata"]["t3_peak_batch"]

    alone = [speak_and_fetch(request) for request in requests]
    assert len({audio for audio, _ in alone}) == 3, "voices and seeds should all sound different"
    assert {batch for _, batch in alone} == {1}
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(speak_and_fetch, requests))
    assert max(batch for _, batch in together) >= 2, "concurrent requests were not batched"
    for (voice, seed), (solo, _), (concurrent, _) in zip(requests, alone, together, strict=True):
        assert solo == concurrent, f"{voice} seed {seed} changed in a batch"


def test_openai_stream_sends_a_chunk_in_blocks_as_they_are_rendered(cbx, voices):
    """One chunk, streamed as SSE: its audio comes in several deltas (blocks of the chunk rendered
    while T3 samples), which together decode to the chunk's length."""
    import base64
    import json

    body = {"model": "chatterbox", "input": "Hi there.", "voice": voices[0], "response_format": "pcm"}
    with cbx.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done"
    assert len(deltas) >= 2, "the chunk came whole, not in blocks"
    samples = np.frombuffer(b"".join(deltas), dtype="<i2")
    assert 0.5 < len(samples) / 24_000 <= TOKEN_CAP / SPEECH_TOKENS_PER_SEC
    assert len(deltas[0]) < len(b"".join(deltas)) / 2
    assert np.abs(samples).max() > 300, "silence instead of generated audio"


def test_a_client_that_goes_away_frees_its_rows_in_the_t3_batch(cbx, chatterbox_app):
    """The TTS replica's engine loop drops a disconnected request's chunks at the next decode step.

    Observed in the loop's own counters (the TTS deployment's ``batching``), not by timing.
    """
    import asyncio

    from ray import serve

    tts = serve.get_deployment_handle("TTS", app_name="chatterbox-random")
    text = " ".join(f"Sentence number {n} goes here." for n in range(12))

    async def disconnect_mid_decode() -> tuple[dict, dict]:
        before = await tts.batching.remote()
        async with httpx.AsyncClient(base_url=chatterbox_app, timeout=600) as client:
            request = asyncio.ensure_future(client.post("/api/v1/tts", json={"text": text, **FAST}))
            for _ in range(1200):
                if (await tts.batching.remote())["running_requests"] > 0:
                    break
                await asyncio.sleep(0.05)
            request.cancel()  # closes the connection: the client has gone
        for _ in range(600):
            after = await tts.batching.remote()
            if cancelled(after) > cancelled(before) and after["running_requests"] == 0:
                break
            await asyncio.sleep(0.1)
        return before, after

    def cancelled(state: dict) -> int:
        return state.get("cancelled_running_total", 0) + state.get("cancelled_queued_total", 0)

    before, after = asyncio.run(disconnect_mid_decode())
    assert cancelled(after) > cancelled(before), after
    assert after["running_requests"] == 0 and after["queued_requests"] == 0
    # Twelve chunks were asked for; the ones dropped were never finished.
    assert after["finished_total"] - before["finished_total"] < 12
    assert speak(cbx, "Still here.", None, seed=1).status_code == 200


def test_conditioning_cache_hit_skips_the_conditioning_work(cbx, data_dirs):
    fresh = piper_sentence("A voice nobody has used before today.")
    write_wav(data_dirs["voices"] / "voice_fresh.wav", fresh)
    miss = speak(cbx, "Cache me.", "voice_fresh.wav", seed=5, response_mode="url").json()["chunks"][0]
    hit = speak(cbx, "Cache me.", "voice_fresh.wav", seed=5, response_mode="url").json()["chunks"][0]
    assert miss["engine_metadata"]["conditioning_cache_hit"] is False
    assert hit["engine_metadata"]["conditioning_cache_hit"] is True
    assert hit["engine_metadata"]["conditioning_sec"] < miss["engine_metadata"]["conditioning_sec"] / 10


def test_built_in_voice_is_used_without_a_reference(cbx):
    response = speak(cbx, "Built in.", None, seed=3)
    assert decode_audio(response.content).sample_rate == 24_000


def test_openai_voice_names_a_library_file(cbx, voices):
    response = cbx.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "voice_a", "input": "Hi.", "response_format": "wav"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-engine"].startswith("chatterbox")
    assert soundfile.info(io.BytesIO(response.content)).samplerate == 24_000


def test_too_short_reference_is_a_400_from_the_tts_replica(cbx, data_dirs):
    short = piper_sentence("Hi.")
    write_wav(
        data_dirs["voices"] / "too_short.wav", short.with_samples(short.samples[: short.sample_rate // 3])
    )
    response = cbx.post(
        "/api/v1/tts", json={"text": "Hello.", "reference_audio_filename": "too_short.wav", **FAST}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "reference_audio_filename"
    assert "at least" in response.json()["error"]["message"]


def test_a_chatterbox_that_cannot_load_fails_its_replica_naming_the_cause(
    serve_apps, data_dirs, tmp_path, piper_app
):
    from tests.conftest import app_config

    missing = tmp_path / "no-checkpoint-here"
    config = app_config(
        serve_apps.port, data_dirs, engine="chatterbox", chatterbox={"checkpoint_dir": str(missing)}
    )
    try:
        with pytest.raises(RuntimeError, match="no-checkpoint-here") as failure:
            serve_apps.deploy(config, name="broken", route_prefix="/broken")
        assert "TTS" in str(failure.value)
        health = httpx.get(f"{piper_app}/broken/api/v1/health", timeout=60)
        assert health.status_code == 503
        tts = health.json()["deployments"]["TTS"]
        assert tts["status"] != "HEALTHY"
        assert "no-checkpoint-here" in tts["message"]
    finally:
        serve_apps.remove("broken")
