"""Who may call the API, and what a request body may cost: API keys, CORS and body limits.

Three pure ASGI middlewares, not ``BaseHTTPMiddleware``: that one runs the app in a separate task
behind a memory stream, which changes how streamed responses and client disconnects reach the
routes. Their settings come from a ``SecurityPolicy`` read on every request, so a user_config change
(``Ingress.reconfigure``) applies to the next request without a restart.

Through Serve's proxy the body reaches the replica as it arrives: the proxy puts each chunk uvicorn
reads on a queue that the replica's ``receive()`` pulls from. A stalled body therefore blocks
``receive()`` here, and the timeout below is what ends it: Serve's only bound is the whole
request's ``http_options.request_timeout_s``, which a client may even switch off with its
``X-Request-Timeout-Seconds`` header. Serve's proxy also reads the body off the socket and queues
it in memory as fast as the client sends it, so a front proxy should cap body size as well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.api_keys import KeyRing, key_ring
from deployments.content_types import is_multipart
from deployments.http_errors import error_response
from pipeline.errors import Forbidden, PayloadTooLarge, RequestTimeout, ServiceError, Unauthorized
from pipeline.settings import AppSettings, AuthConfig, CorsConfig, LimitsConfig

logger = logging.getLogger("ray.serve")

# Load balancers and Kubernetes probes call it without credentials.
EXEMPT_PATHS = frozenset({"/api/v1/health"})
# Headers our routes set that a browser script may read; add new response headers here.
EXPOSED_HEADERS = (
    "X-Request-ID",
    "X-Engine",
    "X-Generation-Seed",
    "X-Sample-Rate",
    "X-Audio-Duration-Sec",
    "X-Processing-Time-Sec",
    "X-Chunks",
    "X-Validation",
    "X-Chunks-Failed-Validation",
    "X-Candidates-Generated",
    "X-VC-Windows",
    "X-Alternative-Formats",
    "Retry-After",
    "Content-Disposition",
)
CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
# Only these limits change through user_config: the others shape jobs and apply at deploy.
RUNTIME_LIMITS = frozenset({"max_body_bytes", "body_timeout_sec"})


@dataclass(frozen=True)
class SecurityPolicy:
    """What the middlewares enforce; ``keys`` None means auth is off (no keys configured)."""

    keys: KeyRing | None
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    body_timeout_sec: float

    @classmethod
    def from_settings(
        cls, settings: AppSettings, user_config: Mapping[str, Any] | None = None
    ) -> SecurityPolicy:
        """The app's settings with the user_config's ``auth``, ``cors`` and body ``limits`` over them."""
        overrides = user_config or {}
        auth = AuthConfig.model_validate({**settings.auth.model_dump(), **(overrides.get("auth") or {})})
        cors = CorsConfig.model_validate({**settings.cors.model_dump(), **(overrides.get("cors") or {})})
        limit_overrides = overrides.get("limits") or {}
        if unknown := sorted(set(limit_overrides) - RUNTIME_LIMITS):
            raise ValueError(f"user_config limits may set {sorted(RUNTIME_LIMITS)}, not {unknown}")
        limits = LimitsConfig.model_validate({**settings.limits.model_dump(), **limit_overrides})
        return cls(key_ring(auth), tuple(cors.allow_origins), limits.max_body_bytes, limits.body_timeout_sec)


PolicySource = Callable[[], SecurityPolicy]


def install_security(api: FastAPI, policy: PolicySource) -> None:
    """Outermost first: CORS (a preflight carries no key, and a 401 needs CORS headers for a browser
    to read it), then API keys (an unknown caller's body is never read), then body limits."""
    api.add_middleware(BodyLimits, policy=policy)
    api.add_middleware(ApiKeyAuth, policy=policy)
    api.add_middleware(ConfiguredCORS, policy=policy)


class ConfiguredCORS:
    """Starlette's CORSMiddleware for the configured origins; none configured: no CORS headers at all."""

    def __init__(self, app: ASGIApp, policy: PolicySource) -> None:
        self.app = app
        self._policy = policy
        self._built: tuple[tuple[str, ...], ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = self._policy().cors_origins if scope["type"] == "http" else ()
        if not origins:
            await self.app(scope, receive, send)
            return
        if self._built is None or self._built[0] != origins:
            # Headers "*" echoes what a preflight asks for (the openai JS client adds its own
            # X-Stainless-* headers); no credentials: keys travel in a header, never in cookies.
            cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=list(CORS_METHODS),
                allow_headers=["*"],
                expose_headers=list(EXPOSED_HEADERS),
            )
            self._built = (origins, cors)
        await self._built[1](scope, receive, send)


class ApiKeyAuth:
    """``Authorization: Bearer <key>`` on every route but health, and one access log line per request
    naming the key (never the key itself); Serve's log format adds the request id."""

    def __init__(self, app: ASGIApp, policy: PolicySource) -> None:
        self.app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self._policy().keys if scope["type"] == "http" else None
        path = _route_path(scope) if keys is not None else ""
        if keys is None or path in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        key_name = "-"

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            presented = _bearer_token(Headers(scope=scope))
            key = keys.match(presented) if presented is not None else None
            if key is None:
                missing = "missing API key: send Authorization: Bearer <key>"
                refusal = Unauthorized("invalid API key" if presented else missing)
                await _respond(refusal, scope, send_noting_status)
                return
            key_name = key.name
            if not key.may(scope["method"], path):
                scoped = f"the API key {key.name!r} may not change the voice library or the VC inputs"
                await _respond(Forbidden(scoped), scope, send_noting_status)
                return
            await self.app(scope, receive, send_noting_status)
        finally:
            logger.info(
                "%s %s %s %.1f ms key=%s",
                scope["method"],
                _loggable(scope["path"]),
                status or "-",
                (time.perf_counter() - started) * 1000,
                key_name,
            )


class BodyLimits:
    """Bodies over ``max_body_bytes`` get 413, bodies that do not arrive in time get 408.

    A JSON (non-multipart) body is read here whole, within ``body_timeout_sec`` and counting bytes
    (a chunked body has no Content-Length to check first), then handed to the route: FastAPI turns
    any error raised while it reads a body into a 400, so the limits must be enforced before it.
    A multipart upload streams on to its route, which caps its size (deployments/uploads.py);
    here it gets 408 once no data has come for ``body_timeout_sec``.
    """

    def __init__(self, app: ASGIApp, policy: PolicySource) -> None:
        self.app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else Headers()
        if not _has_body(headers):
            await self.app(scope, receive, send)
            return
        policy = self._policy()
        if is_multipart(headers.get("content-type", "")):
            await self._streamed(scope, receive, send, policy.body_timeout_sec)
            return
        declared = headers.get("content-length", "")
        try:
            if declared.isdigit() and int(declared) > policy.max_body_bytes:
                raise _too_large(policy.max_body_bytes)
            async with asyncio.timeout(policy.body_timeout_sec):
                body = await _read_body(receive, policy.max_body_bytes)
        except TimeoutError:
            late = RequestTimeout(f"the request body did not arrive within {policy.body_timeout_sec:g} s")
            await _respond(late, scope, send)
            return
        except PayloadTooLarge as error:
            await _respond(error, scope, send)
            return
        if body is not None:  # None: the client went away before sending it all
            await self.app(scope, _replaying(body, receive), send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, timeout_sec: float) -> None:
        body_done = False
        response_started = False

        async def receive_within() -> Message:
            nonlocal body_done
            if body_done:  # later calls wait for a disconnect while a response streams: no limit
                return await receive()
            try:
                async with asyncio.timeout(timeout_sec):
                    message = await receive()
            except TimeoutError:
                raise _BodyStalled from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within, send_noting_start)
        except _BodyStalled:
            # Not a ServiceError: it must pass the app's exception handlers and reach this one,
            # which can close the connection (the rest of the upload may still be in flight).
            if response_started:
                raise
            stalled = RequestTimeout(f"the upload stalled: no data for {timeout_sec:g} s")
            await _respond(stalled, scope, send)


async def _respond(error: ServiceError, scope: Scope, send: Send) -> None:
    """The error in the API's one shape. A refused body may still be on its way, so the connection
    closes after a 408 or 413 rather than reading what is left of it as the next request."""
    headers = error.headers()
    if error.status_code in (408, 413):
        headers = {**headers, "Connection": "close"}
    response = error_response(error.status_code, error.to_dict(), Request(scope), headers)
    await response(scope, _no_receive, send)


def _bearer_token(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _route_path(scope: Scope) -> str:
    """The path inside the app: Serve mounts an app at its route_prefix through ``root_path``."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class _BodyStalled(Exception):
    pass


def _has_body(headers: Headers) -> bool:
    # HTTP/1.1: a request without Content-Length and Transfer-Encoding has no body.
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_body_bytes)")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body read ahead, then the client's own messages (a disconnect while a response streams)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _loggable(path: str) -> str:
    # A percent-encoded newline in a path must not start a forged log line.
    return path if path.isprintable() else ascii(path)
