"""Library voices used by Chatterbox (random checkpoint) for cloning and voice conversion, over HTTP.

Random weights make noise, so these check what does not depend on training: which settings were
applied (seeded audio is identical exactly when the settings are), lengths, rates, windows and
which VC replicas converted them. Full-size S3Gen costs seconds of CPU per second of audio here,
so inputs stay short.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import soundfile

from pipeline.audio import decode_audio
from tests.chatterbox_checkpoint import piper_sentence

pytestmark = pytest.mark.slow

FAST = {
    "bypass_whisper_checking": True,
    "num_candidates_per_chunk": 1,
    "max_attempts_per_candidate": 1,
    "export_formats": ["wav"],
}


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cbx(chatterbox_app):
    with httpx.Client(base_url=chatterbox_app, timeout=900) as http:
        yield http


@pytest.fixture(scope="module")
def library_voice(cbx) -> str:
    """A voice uploaded with default_parameters (a low temperature and a high exaggeration)."""
    clip = piper_sentence("My voice has its own settings.")
    response = cbx.post(
        "/api/v1/voice",
        files={"voice_file": ("settings.wav", wav_bytes(clip.samples, clip.sample_rate), "audio/wav")},
        data={
            "name": "with_defaults",
            "folder_path": "clones",
            "default_parameters": json.dumps({"temperature": 0.3, "exaggeration": 0.8}),
        },
    )
    assert response.status_code == 200, response.text
    yield response.json()["filename"]
    cbx.delete(f"/api/v1/voice/{response.json()['filename']}", params={"confirm": "true"})


def tts(cbx, voice: str, seed: int, **fields) -> httpx.Response:
    response = cbx.post(
        "/api/v1/tts",
        params={"response_mode": "url"},
        json={"text": "Defaults.", "reference_audio_filename": voice, "seed": seed, **FAST, **fields},
    )
    assert response.status_code == 200, response.text
    return response


def audio_of(cbx, response: httpx.Response) -> bytes:
    return cbx.get(response.json()["output_files"][0]["url"].removeprefix("/cbx")).content


def test_voice_default_parameters_apply_unless_the_request_sets_them(cbx, library_voice):
    # By bare name: the library finds clones/with_defaults.wav.
    defaulted = tts(cbx, "with_defaults", seed=31)
    assert defaulted.json()["chunks"][0]["engine_metadata"]["exaggeration"] == 0.8
    explicit = tts(cbx, library_voice, seed=31, temperature=0.3, exaggeration=0.8)
    assert audio_of(cbx, defaulted) == audio_of(cbx, explicit), "the voice's defaults were not applied"
    overridden = tts(cbx, library_voice, seed=31, temperature=0.75)
    assert overridden.json()["chunks"][0]["engine_metadata"]["exaggeration"] == 0.8
    assert audio_of(cbx, overridden) != audio_of(cbx, defaulted), "the request's temperature must win"
    usage = cbx.get("/api/v1/voices", params={"search": "with_defaults"}).json()["voices"][0]
    assert usage["usage_count"] >= 3 and usage["last_used"]


def test_openai_voice_uses_the_library_voice_and_its_defaults(cbx, library_voice):
    response = cbx.post(
        "/v1/audio/speech",
        json={"model": "chatterbox", "voice": library_voice, "input": "Hi.", "response_format": "wav"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-engine"].startswith("chatterbox")
    assert soundfile.info(io.BytesIO(response.content)).samplerate == 24_000


@pytest.fixture(scope="module")
def six_second_input(cbx) -> str:
    """Exactly 6 s of speech in the VC input store."""
    sentence = piper_sentence("This recording is converted into another voice in three windows.")
    source = np.resize(sentence.samples, 6 * sentence.sample_rate)
    stored = cbx.post(
        "/api/v1/vc_input",
        files={"vc_input_file": ("six.wav", wav_bytes(source, sentence.sample_rate), "audio/wav")},
        data={"overwrite": "true"},
    )
    assert stored.status_code == 200, stored.text
    yield stored.json()["filename"]
    cbx.delete(f"/api/v1/vc_input/{stored.json()['filename']}", params={"confirm": "true"})


def test_vc_of_a_stored_six_second_input_is_windowed_over_both_replicas(cbx, library_voice, six_second_input):
    health = cbx.get("/api/v1/health").json()
    assert health["engines"]["vc"]["name"] == "chatterbox"
    assert health["deployments"]["VC"]["replicas"].get("RUNNING") == 2

    response = cbx.post(
        "/api/v1/vc",
        params={"response_mode": "url"},
        json={
            "input_audio_source": six_second_input,
            "target_voice_source": library_voice,
            "chunk_sec": 2,
            "overlap_sec": 0.25,
            "seed": 5,
            "export_formats": ["wav", "flac"],
        },
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["duration_sec"] == pytest.approx(6.0, abs=0.05)
    assert response.headers["x-generation-seed"] == "5"
    windows = report["windows"]
    assert len(windows) >= 3
    assert windows[0]["start_sec"] == 0 and windows[-1]["end_sec"] == pytest.approx(6.0, abs=0.01)
    assert len({window["metadata"]["replica"] for window in windows}) == 2, windows
    assert [item["format"] for item in report["output_files"]] == ["wav", "flac"]
    for item in report["output_files"]:
        audio = decode_audio(cbx.get(item["url"].removeprefix("/cbx")).content)
        assert audio.sample_rate == 24_000
        assert audio.duration_sec == pytest.approx(6.0, abs=0.05)
        assert np.abs(audio.samples).max() > 0.01, "silence instead of converted audio"


def test_vc_of_an_uploaded_file_returns_audio_of_its_length(cbx):
    sentence = piper_sentence("Short input.")
    response = cbx.post(
        "/api/v1/vc",
        params={"return_format": "wav"},
        files={"input_audio": ("in.wav", wav_bytes(sentence.samples, sentence.sample_rate), "audio/wav")},
        data={"seed": "9", "export_formats": "wav", "sample_rate": "16000"},
    )
    assert response.status_code == 200, response.text
    audio = decode_audio(response.content)
    assert audio.sample_rate == 16_000
    assert audio.duration_sec == pytest.approx(sentence.duration_sec, abs=0.05)
    assert response.headers["x-engine"].startswith("chatterbox")


@pytest.mark.parametrize(
    ("request_kwargs", "status", "param"),
    [
        ({"json": {"input_audio_source": "nothing.wav"}}, 404, "input_audio_source"),
        (
            {"json": {"input_audio_source": "six.wav", "target_voice_source": "nobody"}},
            404,
            "target_voice_source",
        ),
        ({"json": {"input_audio_source": "six.wav", "chunk_sec": 2, "overlap_sec": 1.5}}, 422, None),
        ({"json": {"input_audio_source": "six.wav", "chunk_sec": "long"}}, 422, "chunk_sec"),
        ({"json": {"input_audio_source": "six.wav", "volume": 3}}, 422, "volume"),
        ({"json": {"input_audio_source": "../voices/x.wav"}}, 400, "input_audio_source"),
        ({"json": ["not", "an", "object"]}, 422, None),
        ({"data": {"seed": "1"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 400, "other"),
        (
            {"content": b"input_audio_source=x", "headers": {"content-type": "text/plain"}},
            415,
            "content-type",
        ),
    ],
)
def test_bad_vc_requests_are_4xx_naming_the_field(cbx, six_second_input, request_kwargs, status, param):
    response = cbx.post("/api/v1/vc", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    if param is not None:
        assert body["error"]["param"] == param, body
