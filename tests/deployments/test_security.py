"""API keys, CORS and body limits on a small FastAPI app with the service's error handlers.

tests/integration/test_auth_http.py checks the same through Serve's proxy and the real app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

import deployments.api_keys as api_keys
from deployments.api_keys import KeyRing, keys_from_env, keys_from_file
from deployments.http_errors import install_error_handlers
from deployments.security import SecurityPolicy, install_security
from deployments.uploads import read_upload_form
from pipeline.settings import AppSettings

ALICE = "sk-alice-0123456789abcdef"
CI = "sk-ci-0123456789abcdef"
SPEAKER = "sk-speaker-0123456789abcdef"
ORIGIN = "https://app.example.com"
JSON = {"Content-Type": "application/json"}


class Text(BaseModel):
    text: str


class Holder:
    """The policy the app's middleware reads, swapped by tests as Ingress.reconfigure swaps it."""

    def __init__(self, policy: SecurityPolicy) -> None:
        self.policy = policy


def make_app(holder: Holder) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_security(app, lambda: holder.policy)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/v1/models")
    async def models() -> dict[str, list]:
        return {"data": []}

    @app.post("/v1/audio/speech")
    async def speech(request: Text) -> dict[str, int]:
        return {"chars": len(request.text)}

    @app.get("/api/v1/voices")
    async def voices() -> dict[str, list]:
        return {"voices": []}

    @app.delete("/api/v1/voice/{filename}")
    async def delete_voice(filename: str) -> dict[str, str]:
        return {"deleted": filename}

    @app.post("/api/v1/voice")
    async def upload(request: Request) -> dict[str, int]:
        form = await read_upload_form(request, "voice_file", 1024 * 1024)
        try:
            return {"bytes": len(await form["voice_file"].read())}
        finally:
            await form.close()

    return app


def policy(
    keys: KeyRing | None = None, origins: tuple[str, ...] = (), max_body_bytes: int = 4096, timeout: float = 5
) -> SecurityPolicy:
    return SecurityPolicy(keys, origins, max_body_bytes, timeout)


def ring(text: str = f"alice:{ALICE}\nspeaker:{SPEAKER}:speech\n") -> KeyRing:
    return KeyRing(keys_from_file(text, "keys.txt"), None)


def call(holder: Holder, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(holder))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Key parsing


def test_a_keys_file_gives_names_and_scopes_and_skips_comments() -> None:
    text = f"# team keys\n\nalice:{ALICE}\n  ci:{CI}:all  \nspeaker:{SPEAKER}:speech\n"
    keys = keys_from_file(text, "keys.txt")
    assert [(key.name, key.scope) for key in keys] == [("alice", "all"), ("ci", "all"), ("speaker", "speech")]


def test_the_environment_variable_takes_commas_or_whitespace() -> None:
    keys = keys_from_env(f"alice:{ALICE}, ci:{CI}\nspeaker:{SPEAKER}:speech,", "CHATTERBOX_API_KEYS")
    assert [key.name for key in keys] == ["alice", "ci", "speaker"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"alice={ALICE}", "expected name:key"),
        ("alice:short", r"16\+ characters"),
        (f"alice:{ALICE}:admin", "scope 'admin'"),
        (f"al ice:{ALICE}", "key name"),
        (f"alice:{ALICE}\nalice:{CI}", "given twice: alice"),
        (f"alice:{ALICE}\nbob:{ALICE}", "under two names"),
    ],
)
def test_malformed_entries_are_refused_without_echoing_the_secret(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        keys_from_file(text, "keys.txt")
    assert ALICE not in str(refused.value) and CI not in str(refused.value)


def test_a_key_keeps_only_its_digest() -> None:
    (key,) = keys_from_file(f"alice:{ALICE}", "keys.txt")
    assert ALICE not in repr(key) and ALICE.encode() not in key.digest


def test_every_key_is_compared_in_constant_time_with_no_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = api_keys.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counting)
    keys = KeyRing(keys_from_env(f"alice:{ALICE},ci:{CI},speaker:{SPEAKER}", "KEYS"), None)
    assert keys.match(ALICE).name == "alice"  # the first key: the other two are still compared
    assert len(compared) == 3
    assert keys.match("sk-wrong-0123456789abcdef") is None
    assert len(compared) == 6
    assert {len(a) for a, _ in compared} == {32}, "digests, so a key's length does not show"


# Where keys come from


def test_without_keys_auth_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATTERBOX_API_KEYS", raising=False)
    assert SecurityPolicy.from_settings(AppSettings()).keys is None


def test_keys_come_from_the_environment_and_a_file_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHATTERBOX_API_KEYS", f"ci:{CI}")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{ALICE}\n")
    settings = AppSettings.model_validate({"auth": {"keys_file": str(keys_file)}})
    keys = SecurityPolicy.from_settings(settings).keys
    assert keys is not None and keys.names() == ["ci", "alice"]
    assert keys.match(CI).name == "ci" and keys.match(ALICE).name == "alice"


def test_a_configured_but_empty_keys_file_refuses_everyone(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# nobody yet\n")
    settings = AppSettings.model_validate({"auth": {"keys_file": str(keys_file), "keys_env": None}})
    keys = SecurityPolicy.from_settings(settings).keys
    assert keys is not None and keys.names() == []


def test_a_missing_keys_file_fails_the_start(tmp_path: Path) -> None:
    settings = AppSettings.model_validate({"auth": {"keys_file": str(tmp_path / "absent")}})
    with pytest.raises(FileNotFoundError):
        SecurityPolicy.from_settings(settings)


def test_user_config_overrides_auth_cors_and_the_body_limits_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{ALICE}\n")
    user_config = {
        "auth": {"keys_file": str(keys_file)},
        "cors": {"allow_origins": [ORIGIN]},
        "limits": {"body_timeout_sec": 2, "max_body_bytes": 2048},
        "defaults": {"openai_validate": True},
    }
    changed = SecurityPolicy.from_settings(AppSettings(), user_config)
    assert changed.keys is not None and changed.keys.names() == ["alice"]
    assert (changed.cors_origins, changed.body_timeout_sec, changed.max_body_bytes) == ((ORIGIN,), 2, 2048)
    with pytest.raises(ValueError, match="max_text_chars"):
        SecurityPolicy.from_settings(AppSettings(), {"limits": {"max_text_chars": 10}})


def test_a_changed_keys_file_is_reread_and_a_broken_one_keeps_the_old_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{ALICE}\n")
    now = [0.0]
    keys = KeyRing((), keys_file, clock=lambda: now[0])
    keys_file.write_text(f"ci:{CI}\n")
    assert keys.match(CI) is None, "not re-checked before KEYS_FILE_RECHECK_SEC"
    now[0] += api_keys.KEYS_FILE_RECHECK_SEC
    assert keys.match(CI).name == "ci" and keys.match(ALICE) is None
    keys_file.write_text("ci:short\n")
    now[0] += api_keys.KEYS_FILE_RECHECK_SEC
    assert keys.match(CI).name == "ci"


# The middleware on a real FastAPI app


def test_auth_off_lets_everyone_in() -> None:
    assert call(Holder(policy()), "GET", "/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        (bearer("sk-wrong-0123456789abcdef"), "invalid API key"),
        ({"Authorization": f"Basic {ALICE}"}, "missing API key"),
    ],
)
def test_no_key_or_a_wrong_one_gets_401_in_the_error_shape(headers: dict[str, str], message: str) -> None:
    response = call(Holder(policy(ring())), "GET", "/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_API_KEY" and message in body["error"]["message"]


def test_the_right_key_gets_in_and_health_needs_none() -> None:
    holder = Holder(policy(ring()))
    assert call(holder, "GET", "/v1/models", headers=bearer(ALICE)).status_code == 200
    assert call(holder, "GET", "/v1/models", headers={"Authorization": f"bearer {ALICE}"}).status_code == 200
    assert call(holder, "GET", "/api/v1/health").status_code == 200
    assert call(holder, "GET", "/api/v1/health/").status_code == 401, "only the exact path is exempt"


def test_health_is_exempt_under_a_route_prefix() -> None:
    async def go() -> int:
        transport = httpx.ASGITransport(app=make_app(Holder(policy(ring()))), root_path="/cbx")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/cbx/api/v1/health")).status_code

    assert asyncio.run(go()) == 200


def test_a_speech_key_may_not_change_the_library() -> None:
    holder = Holder(policy(ring()))
    refused = call(holder, "DELETE", "/api/v1/voice/a.wav", headers=bearer(SPEAKER))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    assert call(holder, "GET", "/api/v1/voices", headers=bearer(SPEAKER)).status_code == 200
    assert call(holder, "POST", "/v1/audio/speech", json={"text": "hi"}, headers=bearer(SPEAKER)).json() == {
        "chars": 2
    }
    assert call(holder, "DELETE", "/api/v1/voice/a.wav", headers=bearer(ALICE)).status_code == 200


def test_the_access_log_names_the_key_and_never_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    holder = Holder(policy(ring()))
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        call(holder, "GET", "/v1/models", headers=bearer(ALICE))
        call(holder, "GET", "/v1/models", headers=bearer("sk-wrong-0123456789abcdef"))
        call(holder, "GET", "/api/v1/health")
    lines = [record.getMessage() for record in caplog.records if record.name == "ray.serve"]
    assert any(line.startswith("GET /v1/models 200 ") and line.endswith("key=alice") for line in lines)
    assert any(line.startswith("GET /v1/models 401 ") and line.endswith("key=-") for line in lines)
    assert not any("health" in line for line in lines), "probes are not logged"
    assert not any(ALICE in line or "sk-wrong" in line for line in caplog.text.splitlines())


# CORS


def preflight(holder: Holder, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang",
    }
    return call(holder, "OPTIONS", "/v1/audio/speech", headers=headers)


def test_cors_is_closed_by_default() -> None:
    holder = Holder(policy())
    assert "access-control-allow-origin" not in preflight(holder, ORIGIN).headers
    response = call(holder, "POST", "/v1/audio/speech", json={"text": "hi"}, headers={"Origin": ORIGIN})
    assert not any(name.startswith("access-control-") for name in response.headers)


def test_an_allowed_origin_gets_preflight_and_exposed_headers_even_with_auth_on() -> None:
    holder = Holder(policy(ring(), origins=(ORIGIN,)))
    allowed = preflight(holder, ORIGIN)
    assert allowed.status_code == 200, "a preflight carries no key"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert preflight(holder, "https://evil.example").status_code == 400
    response = call(holder, "POST", "/v1/audio/speech", json={"text": "hi"}, headers={"Origin": ORIGIN})
    assert response.status_code == 401 and response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"]
    assert "X-Request-ID" in exposed and "X-Generation-Seed" in exposed


# Body limits


def test_a_body_over_the_limit_gets_413_by_its_length_or_while_it_streams() -> None:
    holder = Holder(policy(max_body_bytes=4096))
    declared = call(holder, "POST", "/v1/audio/speech", json={"text": "x" * 5000})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert declared.headers["connection"] == "close"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    chunked = call(
        holder, "POST", "/v1/audio/speech", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


def test_a_body_within_the_limit_reaches_the_route_whole_even_in_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"te', b'xt": "he', b'llo"}'):
            yield part

    holder = Holder(policy())
    response = call(
        holder, "POST", "/v1/audio/speech", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.json() == {"chars": 5}


Message = dict[str, Any]


def drive(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> list[Message]:
    """One request whose client sends ``parts`` and then nothing more (a stalled upload)."""

    async def go() -> list[Message]:
        pending = [{"type": "http.request", "body": part, "more_body": True} for part in parts]
        sent: list[Message] = []

        async def receive() -> Message:
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()  # the client stalls
            raise AssertionError

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    return asyncio.run(go())


def status_of(messages: list[Message]) -> tuple[int, dict[bytes, bytes], bytes]:
    start = next(message for message in messages if message["type"] == "http.response.start")
    body = b"".join(
        message.get("body", b"") for message in messages if message["type"] == "http.response.body"
    )
    return start["status"], dict(start["headers"]), body


def test_a_stalled_json_body_gets_408_after_the_body_timeout() -> None:
    app = make_app(Holder(policy(timeout=0.3)))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    started = time.monotonic()
    messages = drive(app, "/v1/audio/speech", headers, [b'{"text": "he'])
    elapsed = time.monotonic() - started
    status, response_headers, body = status_of(messages)
    assert status == 408 and b"REQUEST_TIMEOUT" in body
    assert response_headers[b"connection"] == b"close"
    assert 0.3 <= elapsed < 3


def test_a_stalled_upload_gets_408_through_the_route_that_streams_it() -> None:
    app = make_app(Holder(policy(timeout=0.3)))
    boundary = b"xyz"
    first = b'--xyz\r\nContent-Disposition: form-data; name="voice_file"; filename="a.wav"\r\n\r\nRIFF'
    headers = [
        (b"content-type", b"multipart/form-data; boundary=" + boundary),
        (b"content-length", b"100000"),
    ]
    status, response_headers, body = status_of(drive(app, "/api/v1/voice", headers, [first, b"x" * 1000]))
    assert status == 408 and b"upload stalled" in body
    assert response_headers[b"connection"] == b"close"


def test_an_upload_that_keeps_coming_is_not_cut_off() -> None:
    holder = Holder(policy(timeout=0.3))
    files = {"voice_file": ("a.wav", b"RIFF" + b"x" * 10_000, "audio/wav")}
    response = call(holder, "POST", "/api/v1/voice", files=files)
    assert response.json() == {"bytes": 10_004}, "multipart is not held to max_body_bytes (4096 here)"
