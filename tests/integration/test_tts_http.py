"""The real Serve app (Piper + Whisper tiny.en, from serve_config.yaml) over HTTP."""

from __future__ import annotations

import io

import av
import numpy as np
import pyloudnorm
import pytest

from pipeline.audio import decode_audio
from pipeline.clip import AudioClip
from pipeline.validation import score_transcript

pytestmark = pytest.mark.slow

ONE_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TWELVE_SENTENCES = (
    "Morning light spread slowly across the quiet valley. "
    "A farmer walked out to check on his sheep. "
    "The grass was still wet from the rain of the night before. "
    "Birds were singing in the tall oak trees by the road. "
    "His dog ran ahead, barking at everything it saw. "
    "Down by the river, the water was high and fast. "
    "He counted the animals twice to be sure none were missing. "
    "One young lamb had wandered off toward the old stone wall. "
    "He carried it back gently and set it beside its mother. "
    "The sun was warm by the time he returned to the house. "
    "His wife had made fresh bread and a pot of strong coffee. "
    "They sat together at the table and talked about the harvest."
)
FAST_QUALITY = {
    "num_candidates_per_chunk": 1,
    "max_attempts_per_candidate": 1,
    "bypass_whisper_checking": True,
}


def decode_pcm(data: bytes, sample_rate: int) -> AudioClip:
    return AudioClip(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, sample_rate)


def decode_any(data: bytes, fmt: str, sample_rate: int) -> AudioClip:
    return decode_pcm(data, sample_rate) if fmt == "pcm" else decode_audio(data)


def container_format(data: bytes) -> str:
    with av.open(io.BytesIO(data)) as container:
        return container.format.name


def assert_speaks(transcriber, audio: AudioClip, text: str, min_score: float = 0.8) -> str:
    transcript = transcriber.transcribe(audio)
    score = score_transcript(text, transcript)
    assert score >= min_score, f"transcript {transcript!r} scored {score:.2f} against {text!r}"
    return transcript


EXPECTED_CONTAINERS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "ogg", "aac": "aac"}


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_native_tts_returns_intelligible_audio_in_each_format(client, transcriber, fmt):
    response = client.post(
        "/api/v1/tts",
        params={"return_format": fmt},
        json={"text": ONE_SENTENCE, "export_formats": [fmt], **FAST_QUALITY},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith({"pcm": "audio/pcm"}.get(fmt, "audio/"))
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    assert response.headers["x-engine"].startswith("piper")
    if fmt != "pcm":
        assert container_format(response.content).split(",")[0] == EXPECTED_CONTAINERS[fmt]
    sample_rate = int(response.headers["x-sample-rate"])
    audio = decode_any(response.content, fmt, sample_rate)
    assert 2.0 < audio.duration_sec < 8.0
    assert_speaks(transcriber, audio, ONE_SENTENCE)


def test_twelve_sentences_are_all_spoken_in_order_in_every_format(client, transcriber):
    formats = ["flac", "wav", "mp3", "opus", "aac", "pcm"]
    response = client.post(
        "/api/v1/tts",
        params={"response_mode": "url"},
        json={
            "text": TWELVE_SENTENCES,
            "export_formats": formats,
            "num_candidates_per_chunk": 1,
            "max_attempts_per_candidate": 2,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["validated"] is True
    assert len(body["chunks"]) >= 6, "twelve sentences should not collapse into a couple of chunks"
    spoken_chunks = " ".join(chunk["text"] for chunk in body["chunks"])
    assert score_transcript(TWELVE_SENTENCES, spoken_chunks) == 1.0, "chunking lost or changed text"
    assert all(chunk["score"] is not None for chunk in body["chunks"])
    files = {item["format"]: item["url"] for item in body["output_files"]}
    assert sorted(files) == sorted(formats)
    for fmt, url in files.items():
        file_response = client.get(url)
        assert file_response.status_code == 200, fmt
        audio = decode_any(file_response.content, fmt, body["sample_rate"])
        # Piper speaks about 20 characters a second; slow speakers about 10.
        assert len(TWELVE_SENTENCES) / 25 < audio.duration_sec < len(TWELVE_SENTENCES) / 8, fmt
        assert audio.duration_sec == pytest.approx(body["duration_sec"], abs=0.15), fmt
        assert_speaks(transcriber, audio, TWELVE_SENTENCES)


def test_speed_factor_one_and_a_half_shortens_audio(client):
    durations = {}
    for speed in (1.0, 1.5):
        response = client.post(
            "/api/v1/tts",
            json={
                "text": TWELVE_SENTENCES[:200],
                "speed_factor": speed,
                "export_formats": ["wav"],
                **FAST_QUALITY,
            },
        )
        assert response.status_code == 200, response.text
        durations[speed] = decode_audio(response.content).duration_sec
    assert 1.3 <= durations[1.0] / durations[1.5] <= 1.7, durations


def test_auto_editor_cuts_pauses_inside_the_audio(client):
    durations = {}
    for cut in (False, True):
        response = client.post(
            "/api/v1/tts",
            json={"text": TWELVE_SENTENCES[:300], "use_auto_editor": cut, "ae_margin": 0.0, **FAST_QUALITY},
        )
        assert response.status_code == 200, response.text
        durations[cut] = decode_audio(response.content).duration_sec
    assert durations[True] < 0.95 * durations[False], durations


def test_ebu_normalisation_hits_the_requested_loudness(client):
    response = client.post(
        "/api/v1/tts",
        json={
            "text": ONE_SENTENCE,
            "normalize_audio": True,
            "normalize_method": "ebu",
            "normalize_level": -18.0,
            "export_formats": ["wav"],
            **FAST_QUALITY,
        },
    )
    assert response.status_code == 200, response.text
    audio = decode_audio(response.content)
    loudness = pyloudnorm.Meter(audio.sample_rate).integrated_loudness(audio.samples.astype(np.float64))
    assert -19.5 <= loudness <= -16.5


def test_impossible_threshold_retries_then_falls_back_and_says_so(client):
    response = client.post(
        "/api/v1/tts",
        params={"response_mode": "url"},
        json={
            "text": ONE_SENTENCE,
            "validation_threshold": 1.01,
            "num_candidates_per_chunk": 2,
            "max_attempts_per_candidate": 2,
            "export_formats": ["wav"],
        },
    )
    assert response.status_code == 200, response.text
    (chunk,) = response.json()["chunks"]
    assert chunk["passed"] is False
    assert chunk["attempts"] == 4, "2 rounds of 2 candidates each"
    assert chunk["fallback"] == "longest_transcript"
    assert chunk["transcript"]
    assert response.headers["x-chunks-failed-validation"] == "1"


def test_openai_client_gets_speech_in_every_format(piper_app, transcriber):
    from openai import OpenAI

    client = OpenAI(base_url=f"{piper_app}/v1", api_key="not-needed")
    for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=ONE_SENTENCE, response_format=fmt
        ) as response:
            data = response.read()
        audio = decode_any(data, fmt, 24_000)  # OpenAI's pcm is 24 kHz s16le
        assert 2.0 < audio.duration_sec < 8.0, fmt
        if fmt in ("wav", "flac"):
            assert audio.sample_rate == 24_000, "OpenAI's speech endpoint answers at 24 kHz"
        assert_speaks(transcriber, audio, ONE_SENTENCE)
    mp3 = client.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input="Hello there.")
    assert container_format(mp3.content) == "mp3"


def test_openai_sse_stream_carries_the_whole_audio_as_base64_deltas(client, transcriber):
    import base64
    import json

    response = client.post(
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "input": TWELVE_SENTENCES[:250],
            "response_format": "pcm",
            "stream_format": "sse",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1]["type"] == "speech.audio.done"
    deltas = [event for event in events[:-1] if event["type"] == "speech.audio.delta"]
    assert len(deltas) == len(events) - 1 >= 2, "a multi-chunk text streams in several deltas"
    audio = decode_pcm(b"".join(base64.b64decode(event["audio"]) for event in deltas), 24_000)
    assert_speaks(transcriber, audio, TWELVE_SENTENCES[:250])


def test_health_names_engines_and_ready_replicas(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "healthy"
    assert health["engines"]["tts"]["name"] == "piper"
    assert health["engines"]["tts"]["supports_cloning"] is False
    assert "tiny.en" in health["engines"]["validator"]["model"]
    assert {"Ingress", "Chunker", "TTS", "Validator", "PostProcess"} <= set(health["deployments"])
    for name, deployment in health["deployments"].items():
        assert deployment["status"] == "HEALTHY", name
        assert deployment["replicas"].get("RUNNING", 0) >= 1, name
    # Every running TTS replica reports itself: no GPU in this cluster, so none assigned, CPU used.
    tts = health["engines"]["tts"]
    assert len(tts["replicas"]) == health["deployments"]["TTS"]["replicas"]["RUNNING"]
    assert tts["replicas_agree"] is True
    for replica in tts["replicas"]:
        assert replica["replica_id"] and replica["node_id"], replica
        assert replica["engine"] == "piper", replica
        assert (replica["device"], replica["assigned_gpus"]) == ("cpu", []), replica
    assert [replica["device"] for replica in health["engines"]["validator"]["replicas"]] == ["cpu"]


def test_models_voices_and_docs_are_served(client):
    models = client.get("/v1/models").json()
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= {model["id"] for model in models["data"]}
    assert client.get("/docs").status_code == 200
    assert "/api/v1/tts" in client.get("/openapi.json").json()["paths"]
    assert any(voice["id"] == "alloy" for voice in client.get("/v1/audio/voices").json()["voices"])


def test_request_id_is_echoed(client):
    response = client.get("/api/v1/health", headers={"X-Request-ID": "trace-me-123"})
    assert response.headers["x-request-id"] == "trace-me-123"


def assert_error(response, status: int, code: str, param: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param, body
    assert body["error"]["message"]
    return body


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 10_001}, "text"),
        ({"text": "hi", "speed_factor": 3.0}, "speed_factor"),
        ({"text": "hi", "temperature": 0.0}, "temperature"),
        ({"text": "hi", "export_formats": ["ogg"]}, "export_formats.0"),
        ({"text": "hi", "normalize_method": "loud"}, "normalize_method"),
        ({"text": "hi", "num_candidates_per_chunk": 11}, "num_candidates_per_chunk"),
        ({"text": "hi", "project": "a", "folder": "b"}, None),
        ({"text": "hi", "keep_original_wav_ae": True}, "keep_original_wav_ae"),
        ({"text": "hi", "no_such_field": 1}, "no_such_field"),
        # Honoured or refused, never ignored: Piper has no sampler, nothing controls loudness range.
        ({"text": "hi", "temperature": 0.8}, "temperature"),
        ({"text": "hi", "cfg_weight": 0.3, "min_p": 0.1}, "cfg_weight"),
        ({"text": "hi", "normalize_lra": 11}, "normalize_lra"),
        # Limits and the output folder are checked before any generation.
        (
            {"text": "hi", "num_candidates_per_chunk": 10, "max_attempts_per_candidate": 4},
            "num_candidates_per_chunk",
        ),
        ({"text": "hi", "project": "../up"}, "project"),
    ],
)
def test_invalid_tts_fields_get_422_naming_the_field(client, payload, param):
    assert_error(client.post("/api/v1/tts", json=payload), 422, "VALIDATION_ERROR", param)


def test_malformed_json_gets_422_not_500(client):
    response = client.post("/api/v1/tts", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 422, "VALIDATION_ERROR", None)


def test_cloning_on_piper_is_refused_naming_the_capability(client, data_dirs):
    (data_dirs["voices"] / "someone.wav").write_bytes(_tone_wav())
    body = assert_error(
        client.post("/api/v1/tts", json={"text": "hi", "reference_audio_filename": "someone.wav"}),
        422,
        "CAPABILITY_UNSUPPORTED",
        "reference_audio_filename",
    )
    assert "clon" in body["error"]["message"]


def test_unknown_voice_is_404_and_path_escape_is_400(client):
    assert_error(
        client.post("/api/v1/tts", json={"text": "hi", "reference_audio_filename": "nobody"}),
        404,
        "RESOURCE_NOT_FOUND",
        "reference_audio_filename",
    )
    assert_error(
        client.post("/api/v1/tts", json={"text": "hi", "reference_audio_filename": "../../etc/passwd"}),
        400,
        "VALIDATION_ERROR",
        "reference_audio_filename",
    )
    assert_error(
        client.post("/api/v1/tts", json={"text": "hi", "reference_audio_filename": "http://x/y.wav"}),
        400,
        "VALIDATION_ERROR",
        "reference_audio_filename",
    )


def test_bad_return_format_and_unknown_openai_voice(client):
    assert_error(
        client.post("/api/v1/tts", params={"return_format": "ogg"}, json={"text": "hi"}),
        400,
        "VALIDATION_ERROR",
        "return_format",
    )
    assert_error(
        client.post("/v1/audio/speech", json={"input": "hi", "voice": "nobody", "model": "tts-1"}),
        404,
        "RESOURCE_NOT_FOUND",
        "voice",
    )
    assert_error(
        client.post("/v1/audio/speech", json={"input": "hi", "response_format": "ogg"}),
        422,
        "VALIDATION_ERROR",
        "response_format",
    )


def test_unknown_route_uses_the_error_shape(client):
    assert_error(client.get("/api/v1/nope"), 404, "NOT_FOUND", None)


@pytest.mark.parametrize(
    ("target", "received"),
    [
        ("/outputs/../serve_config.yaml", "../serve_config.yaml"),
        ("/outputs/../../etc/passwd", "../../etc/passwd"),
        ("/outputs/%2e%2e/%2e%2e/etc/passwd", "../../etc/passwd"),
        ("/outputs/..%2fserve_config.yaml", "../serve_config.yaml"),
    ],
)
def test_outputs_cannot_escape_their_folder(serve_apps, piper_app, target, received):
    # httpx resolves '..' before sending (the old test never sent one); http.client sends the
    # target byte for byte, and the 404's message shows the path the route was given.
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", serve_apps.port, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 404, body
    assert body["success"] is False and body["error"]["code"] == "RESOURCE_NOT_FOUND", body
    assert repr(received) in body["error"]["message"], f"the server did not get {target!r} as sent: {body}"


def _tone_wav() -> bytes:
    import soundfile

    buffer = io.BytesIO()
    t = np.arange(24000) / 24000
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), 24000, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize(("path", "field"), [("/api/v1/tts", "text"), ("/v1/audio/speech", "input")])
def test_text_past_the_servers_max_text_chars_is_refused_before_any_work(client, path, field):
    body = {field: "Hello there. " * 800}  # 10,400 characters; serve_config.yaml allows 10,000
    if field == "input":
        body |= {"model": "tts-1", "voice": "alloy"}
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field
    assert "at most 10000" in response.json()["error"]["message"]
