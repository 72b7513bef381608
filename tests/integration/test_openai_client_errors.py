"""The official ``openai`` client against the Piper app: our errors surface as its typed exceptions.

``max_retries=0`` so each call is one request: the client would otherwise retry 5xx (honouring
Retry-After) and hide the overload test's 503.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from pipeline.audio import decode_audio
from tests.conftest import app_config
from tests.integration.test_back_pressure import wait_for_admission, with_admission

pytestmark = pytest.mark.slow

SENTENCE = "The client hears this sentence."
ONE_SLOT = {"max_active_requests": 1, "max_waiting_requests": 0, "retry_after_sec": 7}
DEFAULT_MAX_ACTIVE = 16  # serve_config.yaml's admission.max_active_requests


@pytest.fixture(scope="module")
def speech_client(piper_app) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{piper_app}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_success_returns_audio(speech_client):
    response = speech_client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
    )
    assert decode_audio(response.content).duration_sec > 1.0


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"input": ""}, "input", "VALIDATION_ERROR"),
        ({"input": "Hello there. " * 800}, "input", "VALIDATION_ERROR"),
        ({"speed": 9.0}, "speed", "VALIDATION_ERROR"),
        ({"response_format": "ogg"}, "response_format", "VALIDATION_ERROR"),
        ({"model": "tts-9000"}, "model", "VALIDATION_ERROR"),
        ({"instructions": "Whisper it."}, "instructions", "VALIDATION_ERROR"),
        ({"input": "Привет, как дела?"}, "input", "UNSUPPORTED_LANGUAGE"),
    ],
    ids=["empty", "too-long", "speed", "format", "model", "instructions", "cyrillic"],
)
def test_invalid_input_raises_unprocessable_entity_with_our_message(speech_client, fields, param, code):
    request = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, **fields}
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        speech_client.audio.speech.create(**request)
    error = raised.value
    assert error.status_code == 422
    assert (error.param, error.code) == (param, code), error.body
    assert error.body["message"] in error.message, "the client shows the server's message"
    assert error.request_id, "the request id reaches the client"


def test_bad_request_raises_bad_request_error(speech_client):
    with pytest.raises(openai.BadRequestError) as raised:
        speech_client.audio.speech.create(model="tts-1", voice="../../etc/passwd", input=SENTENCE)
    assert raised.value.status_code == 400
    assert raised.value.param == "voice"
    assert raised.value.code == "VALIDATION_ERROR"
    assert "voice" in raised.value.message


def test_unknown_voice_raises_not_found(speech_client):
    with pytest.raises(openai.NotFoundError) as raised:
        speech_client.audio.speech.create(model="tts-1", voice="nobody-by-this-name", input=SENTENCE)
    assert raised.value.param == "voice"
    assert raised.value.code == "RESOURCE_NOT_FOUND"
    assert "nobody-by-this-name" in raised.value.message


@pytest.fixture
def one_slot(serve_apps, data_dirs, piper_app, client):
    """Admission shrunk to one running request and none waiting (Ingress user_config, no restart)."""
    config = app_config(serve_apps.port, data_dirs, engine="piper")
    serve_apps.deploy(with_admission(config, ONE_SLOT))
    try:
        wait_for_admission(client, ONE_SLOT["max_active_requests"])
        yield
    finally:
        serve_apps.deploy(with_admission(config, None))
        wait_for_admission(client, DEFAULT_MAX_ACTIVE)


def test_overload_raises_internal_server_error_with_retry_after(one_slot, speech_client, piper_app, client):
    # 20 syntheses and transcriptions of one sentence hold the only slot for seconds.
    blocker_status: list[int] = []

    def hold_the_slot() -> None:
        with httpx.Client(base_url=piper_app, timeout=300) as http:
            response = http.post(
                "/api/v1/tts",
                json={
                    "text": SENTENCE,
                    "num_candidates_per_chunk": 10,
                    "max_attempts_per_candidate": 2,
                    "validation_threshold": 1.01,
                    "export_formats": ["wav"],
                },
            )
        blocker_status.append(response.status_code)

    blocker = threading.Thread(target=hold_the_slot)
    blocker.start()
    try:
        _wait_until_active(client, 1)
        started = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as raised:
            speech_client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)
        assert time.perf_counter() - started < 2.0, "a refusal must be immediate"
    finally:
        blocker.join(300)
    error = raised.value
    assert error.status_code == 503
    assert error.response.headers["retry-after"] == str(ONE_SLOT["retry_after_sec"])
    assert error.code == "SERVER_OVERLOADED"
    assert "capacity" in error.message
    assert blocker_status == [200], "the request holding the slot is served"


def _wait_until_active(client: httpx.Client, active: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.get("/api/v1/health").json()["admission"]["active"] >= active:
            return
        time.sleep(0.05)
    raise AssertionError("the blocking request never took its slot")
