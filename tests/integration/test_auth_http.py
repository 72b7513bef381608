"""API keys, CORS and body limits on the real Serve app (Piper), through Serve's HTTP proxy.

The shared Piper app gets a keys file, an allowed origin and a 2 s body timeout through the
Ingress user_config (applied in place, no restart) for this module's tests, and its own config
back afterwards. The first test runs before that and sees the defaults.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deployments.graceful_stop import with_ingress_user_config
from pipeline.audio import decode_audio
from tests.conftest import app_config

pytestmark = pytest.mark.slow

# Fresh secrets each run, so that finding one in the session's logs can only mean this run leaked it.
TESTER_KEY = f"sk-tester-{secrets.token_urlsafe(24)}"
SPEAKER_KEY = f"sk-speaker-{secrets.token_urlsafe(24)}"
WRONG_KEY = f"sk-wrong-{secrets.token_urlsafe(24)}"
ORIGIN = "https://studio.example.com"
BODY_TIMEOUT_SEC = 2.0
SENTENCE = "The keys are checked before anything else."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_until(condition: Callable[[], bool], what: str, timeout_sec: float = 60) -> None:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not {what} after {timeout_sec:.0f} s")


def preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        "/v1/audio/speech",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


@pytest.fixture(scope="module")
def guarded(serve_apps, data_dirs, piper_app, client, tmp_path_factory) -> Iterator[None]:
    keys_file = tmp_path_factory.mktemp("auth") / "api-keys"
    keys_file.write_text(f"# test callers\ntester:{TESTER_KEY}\nspeaker:{SPEAKER_KEY}:speech\n")
    config = app_config(serve_apps.port, data_dirs, engine="piper")
    security = {
        "auth": {"keys_file": str(keys_file)},
        "cors": {"allow_origins": [ORIGIN]},
        "limits": {"body_timeout_sec": BODY_TIMEOUT_SEC},
    }
    serve_apps.deploy(with_ingress_user_config(config, security))
    try:
        wait_until(lambda: client.get("/v1/models").status_code == 401, "asking for keys")
        yield
    finally:
        serve_apps.deploy(config)
        wait_until(lambda: client.get("/v1/models").status_code == 200, "open again")


def test_by_default_there_are_no_cors_headers(client):
    response = preflight(client, ORIGIN)
    assert "access-control-allow-origin" not in response.headers
    assert client.get("/v1/models").status_code == 200, "and no keys"


def test_without_the_right_key_the_api_answers_401_and_health_needs_none(guarded, client):
    for headers in ({}, bearer(WRONG_KEY), {"Authorization": TESTER_KEY}):
        response = client.post("/api/v1/tts", json={"text": SENTENCE}, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["success"] is False and body["error"]["code"] == "INVALID_API_KEY", body
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/v1/models", headers=bearer(TESTER_KEY)).status_code == 200


def test_the_official_openai_client_gets_speech_with_its_key_and_an_auth_error_without(guarded, piper_app):
    speech = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "wav"}
    right = openai.OpenAI(base_url=f"{piper_app}/v1", api_key=TESTER_KEY, max_retries=0, timeout=300)
    audio = right.audio.speech.create(**speech).content
    assert decode_audio(audio).duration_sec > 1.0
    wrong = openai.OpenAI(base_url=f"{piper_app}/v1", api_key=WRONG_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.audio.speech.create(**speech)
    assert refused.value.status_code == 401 and refused.value.code == "INVALID_API_KEY"


def test_a_speech_only_key_may_not_change_the_voice_library(guarded, client):
    delete = {"url": "/api/v1/voice/nobody.wav", "params": {"confirm": "true"}}
    refused = client.delete(**delete, headers=bearer(SPEAKER_KEY))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN", refused.text
    assert client.get("/api/v1/voices", headers=bearer(SPEAKER_KEY)).status_code == 200
    assert client.delete(**delete, headers=bearer(TESTER_KEY)).status_code == 404, "let in: no such voice"


def test_an_allowed_origin_gets_its_preflight_and_can_read_our_headers(guarded, client):
    allowed = preflight(client, ORIGIN)
    assert allowed.status_code == 200, "a preflight carries no key"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = preflight(client, "https://elsewhere.example.com")
    assert "access-control-allow-origin" not in other.headers
    response = client.post(
        "/v1/audio/speech",
        json={"input": SENTENCE, "response_format": "wav"},
        headers={"Origin": ORIGIN, **bearer(TESTER_KEY)},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-generation-seed", "x-engine"} <= exposed
    assert "x-generation-seed" in response.headers


def test_an_oversize_json_body_gets_413_but_only_a_known_caller_is_told(guarded, client):
    oversize = {"input": "a" * (1024 * 1024 + 1024)}
    response = client.post("/v1/audio/speech", json=oversize, headers=bearer(TESTER_KEY))
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert client.post("/v1/audio/speech", json=oversize).status_code == 401, "keys come before bodies"


def test_a_stalled_body_gets_408_and_the_replica_serves_on(guarded, serve_apps, client):
    head = (
        "POST /v1/audio/speech HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{serve_apps.port}\r\n"
        f"Authorization: Bearer {TESTER_KEY}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 4096\r\n"
        "X-Request-ID: auth-test-stalled-body\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", serve_apps.port), timeout=BODY_TIMEOUT_SEC + 20) as raw:
        started = time.monotonic()
        raw.sendall(head.encode() + b'{"input": "The keys')
        answer = b""
        while chunk := raw.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        elapsed = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:500]
    assert BODY_TIMEOUT_SEC - 0.5 <= elapsed <= BODY_TIMEOUT_SEC + 10, elapsed
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "REQUEST_TIMEOUT" and body["request_id"] == "auth-test-stalled-body"

    assert client.get("/api/v1/health").status_code == 200
    served = client.post("/v1/audio/speech", json={"input": SENTENCE}, headers=bearer(TESTER_KEY))
    assert served.status_code == 200 and decode_audio(served.content).duration_sec > 1.0


def test_the_ingress_logs_the_key_name_and_no_log_holds_a_key(guarded, client):
    request_id = f"auth-test-log-{secrets.token_hex(4)}"
    client.get("/v1/models", headers={**bearer(TESTER_KEY), "X-Request-ID": request_id})
    client.get("/v1/models", headers={**bearer(WRONG_KEY), "X-Request-ID": f"{request_id}-wrong"})
    logs = Path(_session_dir()) / "logs"

    def access_lines() -> list[str]:
        return [
            line
            for path in (logs / "serve").glob("replica_chatterbox_Ingress_*.log")
            for line in path.read_text(errors="replace").splitlines()
            if request_id in line and "GET /v1/models" in line and " key=" in line  # not Serve's own
        ]

    wait_until(lambda: len(access_lines()) == 2, "both requests in the Ingress log", timeout_sec=20)
    wrong, right = sorted(access_lines(), key=lambda line: f"{request_id}-wrong" not in line)
    assert " 200 " in right and "key=tester" in right, right
    assert " 401 " in wrong and "key=-" in wrong, wrong
    sent = [key.encode() for key in (TESTER_KEY, SPEAKER_KEY, WRONG_KEY)]
    leaked = [path.name for path in logs.rglob("*") if path.is_file() and _holds_any(path, sent)]
    assert not leaked, f"an API key is written in {leaked}"


def _holds_any(path: Path, needles: list[bytes]) -> bool:
    data = path.read_bytes()
    return any(needle in data for needle in needles)


def _session_dir() -> str:
    # The test process started this Ray session (tests/conftest.py); its node knows the directory.
    from ray._private import worker

    return worker._global_node.get_session_dir_path()
