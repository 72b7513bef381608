"""pipeline/url_sources.py: the SSRF guard, against real local HTTP(S) servers on 127.0.0.1.

Tests name hosts like ``audio.test`` and map them with a fake resolver; the fetcher must connect
to the address it checked (there is no DNS here, so a fetch that resolved by itself would fail).
The allow predicate sees (address, port), so one local server stands for the public host and
another, on the same 127.0.0.1, for an internal service that must never be contacted.
"""

from __future__ import annotations

import datetime
import ipaddress
import pickle
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.errors import InvalidRequest, PayloadTooLarge
from pipeline.url_sources import (
    AddressPredicate,
    IPAddress,
    UpstreamTimeout,
    UrlFetcher,
    UrlSourcePolicy,
    _HopGuard,
    default_address_allowed,
    is_public_address,
    is_url,
    resolve_host,
)

PARAM = "reference_audio_filename"
LOOPBACK = ipaddress.ip_address("127.0.0.1")
AUDIO = bytes(range(256)) * 200  # 51,200 bytes, every byte value

# ---------------------------------------------------------------------------------------------
# Address policy


@pytest.mark.parametrize(
    ("literal", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped public address
        ("2002:808:808::1", True),  # 6to4 of a public address
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.0.0.1", False),
        ("10.255.255.255", False),
        ("172.16.0.1", False),
        ("172.31.255.254", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("169.254.0.1", False),
        ("100.64.0.1", False),  # CGNAT
        ("100.127.255.254", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("192.0.0.8", False),  # IETF protocol assignments (is_global says True on 3.11)
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("224.0.0.1", False),  # multicast (is_global says True on 3.11)
        ("239.255.255.250", False),
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fc00::1", False),
        ("fd12:3456:789a::1", False),
        ("fe80::1", False),
        ("febf::1", False),
        ("fec0::1", False),  # site-local (is_global says True on 3.11)
        ("ff02::1", False),  # multicast (is_global says True on 3.11)
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:192.168.0.1", False),
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated)
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::1", False),  # local-use NAT64
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:db8::1", False),  # documentation
        ("2001::1", False),  # Teredo
        ("100::1", False),  # discard-only
    ],
)
def test_address_policy(literal: str, public: bool) -> None:
    address = ipaddress.ip_address(literal)
    assert is_public_address(address) is public
    assert default_address_allowed(address, 443) is public


@pytest.mark.parametrize(
    ("spelling", "meant"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("10.1", "10.0.0.1"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
    ],
)
def test_odd_ipv4_spellings_are_judged_by_what_they_resolve_to(spelling: str, meant: str) -> None:
    addresses = resolve_host(spelling, 80)  # the real resolver; numeric forms need no DNS
    assert addresses == [ipaddress.ip_address(meant)]
    assert not any(is_public_address(address) for address in addresses)


# ---------------------------------------------------------------------------------------------
# Policy model and is_url


def test_policy_defaults_are_off_and_bounded() -> None:
    policy = UrlSourcePolicy()
    assert policy.enabled is False
    assert policy.max_bytes == 20 * 1024 * 1024
    assert (policy.timeout_sec, policy.connect_timeout_sec, policy.max_redirects) == (15.0, 5.0, 3)
    assert policy.allowed_schemes == ["http", "https"]
    assert policy.allowed_hosts == []


@pytest.mark.parametrize(
    "fields",
    [
        {"max_bytes": 0},
        {"max_redirects": -1},
        {"timeout_sec": 0},
        {"allowed_schemes": ["ftp"]},
        {"allowed_schemes": []},
        {"unknown_option": True},
    ],
)
def test_policy_rejects_bad_config(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UrlSourcePolicy(**fields)


@pytest.mark.parametrize(
    ("source", "url_like"),
    [
        ("http://example.com/a.wav", True),
        ("https://example.com/a.wav", True),
        ("HTTPS://EXAMPLE.COM/A.WAV", True),
        ("file:///etc/passwd", True),
        ("ftp://example.com/a.wav", True),
        ("gopher://127.0.0.1:6379/_INFO", True),
        ("dict://127.0.0.1:11211/stats", True),
        ("voices/linda.wav", False),
        ("linda", False),
        ("/abs/path.wav", False),
        ("C://voices/a.wav", False),  # a drive letter, not a scheme
        ("data:audio/wav;base64,AAAA", False),
        ("http:/example.com", False),
        (" http://example.com", False),
    ],
)
def test_is_url(source: str, url_like: bool) -> None:
    assert is_url(source) is url_like


def test_upstream_timeout_is_a_504_that_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(UpstreamTimeout("slow", param=PARAM)))
    assert type(error) is UpstreamTimeout
    assert (error.status_code, error.code, error.param) == (504, "UPSTREAM_TIMEOUT", PARAM)


# ---------------------------------------------------------------------------------------------
# Refusals before any connection


class FakeResolver:
    """Maps test host names to addresses; IP literals resolve to themselves; records every call."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = {"audio.test": "127.0.0.1", **(names or {})}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host in self.names:
            return [ipaddress.ip_address(self.names[host])]
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown test host {host!r}") from None


def allow_ports(*ports: int) -> AddressPredicate:
    """127.0.0.1 on the given ports only: the test's stand-in for "public"."""
    return lambda address, port: address == LOOPBACK and port in ports


def enabled_policy(**fields: object) -> UrlSourcePolicy:
    return UrlSourcePolicy(**{"enabled": True, "timeout_sec": 5.0, "connect_timeout_sec": 2.0, **fields})


def test_disabled_policy_refuses_without_resolving() -> None:
    resolver = FakeResolver()
    fetcher = UrlFetcher(UrlSourcePolicy(), resolve=resolver, address_allowed=lambda a, p: True)
    with pytest.raises(InvalidRequest, match="disabled on this server") as refused:
        fetcher.fetch("http://audio.test/voice.wav", PARAM)
    assert refused.value.param == PARAM
    assert PARAM in refused.value.message
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http or https"),
        ("ftp://audio.test/voice.wav", "only http or https"),
        ("gopher://audio.test:70/_GET", "only http or https"),
        ("dict://audio.test:11211/stats", "only http or https"),
        ("ws://audio.test/voice.wav", "only http or https"),
        ("http://user:secret@audio.test/voice.wav", "user name or password"),
        ("http://user@audio.test/voice.wav", "user name or password"),
        ("http://audio.test@evil.test/voice.wav", "user name or password"),
        ("http:///voice.wav", "no host"),
        ("not a url", "only http or https"),
    ],
)
def test_refused_urls_never_resolve(url: str, reason: str) -> None:
    resolver = FakeResolver({"evil.test": "127.0.0.1"})
    fetcher = UrlFetcher(enabled_policy(), resolve=resolver, address_allowed=lambda a, p: True)
    with pytest.raises(InvalidRequest, match=reason) as refused:
        fetcher.fetch(url, PARAM)
    assert refused.value.param == PARAM
    assert resolver.calls == []


def test_https_only_policy_refuses_http() -> None:
    fetcher = UrlFetcher(
        enabled_policy(allowed_schemes=["https"]), resolve=FakeResolver(), address_allowed=lambda a, p: True
    )
    with pytest.raises(InvalidRequest, match="only https"):
        fetcher.fetch("http://audio.test/voice.wav", PARAM)


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("http://169.254.169.254/latest/meta-data/", {}),
        ("http://metadata.test/latest/meta-data/", {"metadata.test": "169.254.169.254"}),
        ("http://intranet.test/", {"intranet.test": "10.1.2.3"}),
        ("http://[::1]/", {}),
        ("http://[fd00::5]/", {}),
        ("http://[::ffff:192.168.0.1]/", {}),
        ("http://nowhere.test/", {}),  # does not resolve: same refusal, no name oracle
    ],
)
def test_blocked_or_unresolvable_hosts_are_refused(url: str, names: dict[str, str]) -> None:
    fetcher = UrlFetcher(enabled_policy(), resolve=FakeResolver(names))  # the real address policy
    with pytest.raises(InvalidRequest, match="not a reachable public host") as refused:
        fetcher.fetch(url, PARAM)
    assert refused.value.param == PARAM


def test_every_resolved_address_must_pass() -> None:
    def mixed(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]

    fetcher = UrlFetcher(enabled_policy(), resolve=mixed)
    with pytest.raises(InvalidRequest, match="not a reachable public host"):
        fetcher.fetch("http://mixed.test/voice.wav", PARAM)


def test_slow_resolver_counts_against_the_deadline() -> None:
    released = threading.Event()

    def hanging(host: str, port: int) -> list[IPAddress]:
        released.wait(30.0)
        return [LOOPBACK]

    fetcher = UrlFetcher(enabled_policy(timeout_sec=0.5), resolve=hanging, address_allowed=lambda a, p: True)
    try:
        with pytest.raises(UpstreamTimeout):
            fetcher.fetch("http://audio.test/voice.wav", PARAM)
        # The fetch gave up while the resolver was still hanging: it did not wait for it.
        assert not released.is_set()
    finally:
        released.set()


# ---------------------------------------------------------------------------------------------
# Local servers

Route = Callable[[BaseHTTPRequestHandler, "LocalServer"], None]


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 that records (path, Host header) of every request."""

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str | None]] = []
        self.closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.local = self  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "audio.test", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        local: LocalServer = self.server.local  # type: ignore[attr-defined]
        local.requests.append((self.path, self.headers.get("Host")))
        route = local.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self, local)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    servers: list[LocalServer] = []

    def start(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> LocalServer:
        servers.append(LocalServer(routes, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def body(payload: bytes, *headers: tuple[str, str]) -> Route:
    def route(handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/wav")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def fetcher_for(*servers: LocalServer, **fields: object) -> tuple[UrlFetcher, FakeResolver]:
    resolver = FakeResolver()
    fetcher = UrlFetcher(
        enabled_policy(**fields),
        resolve=resolver,
        address_allowed=allow_ports(*(server.port for server in servers)),
    )
    return fetcher, resolver


# ---------------------------------------------------------------------------------------------
# Fetching


def test_fetch_returns_the_exact_bytes_from_the_pinned_address(serve: Callable[..., LocalServer]) -> None:
    server = serve({"/voices/linda.wav": body(AUDIO)})
    fetcher, resolver = fetcher_for(server)
    assert fetcher.fetch(server.url("/voices/linda.wav"), PARAM) == AUDIO
    # The server saw the original name although the connection went to the checked 127.0.0.1.
    assert server.requests == [("/voices/linda.wav", f"audio.test:{server.port}")]
    assert resolver.calls == [("audio.test", server.port)]


def test_https_pins_the_address_and_verifies_the_real_name(
    serve: Callable[..., LocalServer], tls_pair: tuple[ssl.SSLContext, ssl.SSLContext, list[str]]
) -> None:
    server_tls, client_tls, server_names = tls_pair
    server = serve({"/voice.wav": body(AUDIO)}, tls=server_tls)
    resolver = FakeResolver()
    fetcher = UrlFetcher(
        enabled_policy(), resolve=resolver, address_allowed=allow_ports(server.port), verify=client_tls
    )
    # The certificate is for audio.test only: without SNI/verification by name this fails.
    assert fetcher.fetch(server.url("/voice.wav", scheme="https"), PARAM) == AUDIO
    assert server_names == ["audio.test"]
    assert server.requests == [("/voice.wav", f"audio.test:{server.port}")]


def test_https_certificate_for_another_name_is_refused(
    serve: Callable[..., LocalServer], tls_pair: tuple[ssl.SSLContext, ssl.SSLContext, list[str]]
) -> None:
    server_tls, client_tls, _ = tls_pair
    server = serve({"/voice.wav": body(AUDIO)}, tls=server_tls)
    fetcher = UrlFetcher(
        enabled_policy(),
        resolve=FakeResolver({"other.test": "127.0.0.1"}),
        address_allowed=allow_ports(server.port),
        verify=client_tls,
    )
    with pytest.raises(InvalidRequest, match="could not download"):
        fetcher.fetch(server.url("/voice.wav", host="other.test", scheme="https"), PARAM)
    assert server.requests == []


@pytest.mark.parametrize(
    "blocked",
    [
        "http://internal.test:{canary}/secret",  # a name resolving to an address:port not allowed
        "http://127.0.0.1:{canary}/secret",
        "http://2130706433:{canary}/secret",
        "//internal.test:{canary}/secret",  # scheme-relative
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.test/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
    ],
)
def test_redirect_to_a_blocked_destination_is_refused_before_connecting(
    serve: Callable[..., LocalServer], blocked: str
) -> None:
    canary = serve({"/secret": body(b"internal secret")})
    location = blocked.format(canary=canary.port)
    public = serve({"/voice.wav": redirect(location)})
    resolver = FakeResolver({"internal.test": "127.0.0.1", "metadata.test": "169.254.169.254"})

    def allowed(address: IPAddress, port: int) -> bool:
        # The public server, or anything the real policy allows; the canary's 127.0.0.1 is neither.
        return (address == LOOPBACK and port == public.port) or is_public_address(address)

    fetcher = UrlFetcher(enabled_policy(connect_timeout_sec=1.0), resolve=resolver, address_allowed=allowed)
    with pytest.raises(InvalidRequest, match="not a reachable public host") as refused:
        fetcher.fetch(public.url("/voice.wav"), PARAM)
    assert refused.value.param == PARAM
    assert public.requests == [("/voice.wav", f"audio.test:{public.port}")]
    assert canary.requests == []


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "only http or https"),
        ("gopher://audio.test:70/_INFO", "only http or https"),
        ("http://user:pw@audio.test:{port}/voice.wav", "user name or password"),
        ("http://other.test:{port}/voice.wav", "not allowed on this server"),
    ],
)
def test_redirect_is_rechecked_like_the_first_url(
    serve: Callable[..., LocalServer], location: str, reason: str
) -> None:
    routes: dict[str, Route] = {"/voice.wav": body(AUDIO)}
    server = serve(routes)
    routes["/start"] = redirect(location.format(port=server.port))
    fetcher = UrlFetcher(
        enabled_policy(allowed_hosts=["Audio.Test"]),
        resolve=FakeResolver({"other.test": "127.0.0.1"}),
        address_allowed=allow_ports(server.port),
    )
    with pytest.raises(InvalidRequest, match=reason):
        fetcher.fetch(server.url("/start"), PARAM)
    assert [path for path, _ in server.requests] == ["/start"]


@pytest.mark.parametrize(
    ("allowed_hosts", "host", "fetched"),
    [
        (["audio.test"], "audio.test", True),
        (["*.cdn.test"], "eu.cdn.test", True),
        (["*.cdn.test"], "cdn.test", False),
        (["*.cdn.test"], "evilcdn.test", False),
        (["audio.test"], "other.test", False),
    ],
)
def test_allowed_hosts(
    serve: Callable[..., LocalServer], allowed_hosts: list[str], host: str, fetched: bool
) -> None:
    server = serve({"/voice.wav": body(AUDIO)})
    resolver = FakeResolver(
        {name: "127.0.0.1" for name in ("eu.cdn.test", "cdn.test", "evilcdn.test", "other.test")}
    )
    fetcher = UrlFetcher(
        enabled_policy(allowed_hosts=allowed_hosts),
        resolve=resolver,
        address_allowed=allow_ports(server.port),
    )
    if fetched:
        assert fetcher.fetch(server.url("/voice.wav", host=host), PARAM) == AUDIO
    else:
        with pytest.raises(InvalidRequest, match="not allowed on this server"):
            fetcher.fetch(server.url("/voice.wav", host=host), PARAM)
        assert server.requests == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "localhost", "[::ffff:127.0.0.1]"],
)
def test_default_policy_never_reaches_a_local_service(serve: Callable[..., LocalServer], host: str) -> None:
    server = serve({"/admin": body(b"local admin page")})
    fetcher = UrlFetcher(enabled_policy())  # real resolver, real address policy
    with pytest.raises(InvalidRequest, match="not a reachable public host"):
        fetcher.fetch(f"http://{host}:{server.port}/admin", PARAM)
    assert server.requests == []


@pytest.mark.parametrize(
    ("chain_length", "max_redirects", "fetched"), [(0, 0, True), (2, 2, True), (3, 2, False)]
)
def test_redirect_limit(
    serve: Callable[..., LocalServer], chain_length: int, max_redirects: int, fetched: bool
) -> None:
    routes: dict[str, Route] = {}
    server = serve(routes)
    for hop in range(chain_length):
        # Alternate relative and absolute Locations, and 3xx codes.
        nxt = f"/hop/{hop + 1}" if hop % 2 else server.url(f"/hop/{hop + 1}")
        routes[f"/hop/{hop}"] = redirect(nxt, status=(302, 301, 307, 308, 303)[hop % 5])
    routes[f"/hop/{chain_length}"] = body(AUDIO)
    fetcher, _ = fetcher_for(server, max_redirects=max_redirects)
    if fetched:
        assert fetcher.fetch(server.url("/hop/0"), PARAM) == AUDIO
        assert len(server.requests) == chain_length + 1
    else:
        with pytest.raises(InvalidRequest, match=f"more than {max_redirects} redirects"):
            fetcher.fetch(server.url("/hop/0"), PARAM)
        assert len(server.requests) == max_redirects + 1


def test_endless_redirect_loop_is_cut(serve: Callable[..., LocalServer]) -> None:
    server = serve({"/loop": redirect("/loop")})
    fetcher, _ = fetcher_for(server)
    with pytest.raises(InvalidRequest, match="more than 3 redirects"):
        fetcher.fetch(server.url("/loop"), PARAM)
    assert len(server.requests) == 4


ENDLESS_BYTES = 64 * 1024 * 1024
CHUNK = b"\x00" * 65536


class EndlessBody:
    """A chunked body far above the limit, no Content-Length; records how far it got."""

    def __init__(self) -> None:
        self.written = 0
        self.error: OSError | None = None
        self.finished = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            while self.written < ENDLESS_BYTES:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                self.written += len(CHUNK)
            handler.wfile.write(b"0\r\n\r\n")
        except OSError as exc:
            self.error = exc
        finally:
            self.finished.set()


def test_body_over_max_bytes_stops_the_download_early(serve: Callable[..., LocalServer]) -> None:
    endless = EndlessBody()
    server = serve({"/huge.wav": endless})
    fetcher, _ = fetcher_for(server, max_bytes=256 * 1024)
    with pytest.raises(PayloadTooLarge) as refused:
        fetcher.fetch(server.url("/huge.wav"), PARAM)
    assert (refused.value.status_code, refused.value.param) == (413, PARAM)
    assert endless.finished.wait(5.0)
    assert endless.error is not None  # the client closed the connection on it
    assert endless.written < ENDLESS_BYTES // 4


def test_declared_length_over_max_bytes_is_refused_before_reading(serve: Callable[..., LocalServer]) -> None:
    def declares_huge(handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(50 * 1024 * 1024))
        handler.end_headers()
        local.closing.wait(10.0)  # never sends the body: reading it would hang until the deadline

    server = serve({"/big.wav": declares_huge})
    fetcher, _ = fetcher_for(server, max_bytes=1024 * 1024, timeout_sec=5.0)
    # Reading the body would hang until the 5 s deadline and raise UpstreamTimeout instead.
    with pytest.raises(PayloadTooLarge):
        fetcher.fetch(server.url("/big.wav"), PARAM)


@pytest.mark.parametrize(("size", "fetched"), [(4096, True), (4097, False)])
def test_max_bytes_boundary(serve: Callable[..., LocalServer], size: int, fetched: bool) -> None:
    payload = AUDIO[:size] if size <= len(AUDIO) else AUDIO
    server = serve({"/v.wav": body(payload)})
    fetcher, _ = fetcher_for(server, max_bytes=4096)
    if fetched:
        assert fetcher.fetch(server.url("/v.wav"), PARAM) == payload
    else:
        with pytest.raises(PayloadTooLarge):
            fetcher.fetch(server.url("/v.wav"), PARAM)


def drip(header_lines: list[bytes], drip_headers: bool) -> Route:
    """One byte per 0.2 s: of the header block, or of the body after prompt headers."""

    def route(handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.close_connection = True
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n"
        try:
            if drip_headers:
                handler.wfile.write(head[:17])
                for byte in head[17:]:
                    if local.closing.wait(0.2):
                        return
                    handler.wfile.write(bytes([byte]))
            else:
                handler.wfile.write(head)
            for _ in range(200):
                if local.closing.wait(0.2):
                    return
                handler.wfile.write(b"x")
        except OSError:
            pass

    return route


@pytest.mark.parametrize(
    "route",
    [
        drip([b"Content-Length: 200"], drip_headers=False),
        drip([b"Connection: close"], drip_headers=False),  # body ends when the connection does
        drip([b"X-Padding: " + b"a" * 200, b"Content-Length: 200"], drip_headers=True),
    ],
    ids=["body-with-length", "body-until-close", "headers"],
)
def test_slow_drip_hits_the_total_deadline(serve: Callable[..., LocalServer], route: Route) -> None:
    server = serve({"/slow.wav": route})
    fetcher, _ = fetcher_for(server, timeout_sec=1.0)
    # Each byte comes within any per-read timeout; only a total deadline stops the 40 s drip.
    with pytest.raises(UpstreamTimeout) as timed_out:
        fetcher.fetch(server.url("/slow.wav"), PARAM)
    assert (timed_out.value.status_code, timed_out.value.param) == (504, PARAM)


@pytest.mark.parametrize("status", [404, 403, 500])
def test_error_status_names_the_param(serve: Callable[..., LocalServer], status: int) -> None:
    def fails(handler: BaseHTTPRequestHandler, local: LocalServer) -> None:
        handler.send_error(status)

    server = serve({"/voice.wav": fails})
    fetcher, _ = fetcher_for(server)
    with pytest.raises(InvalidRequest, match=f"HTTP {status}") as refused:
        fetcher.fetch(server.url("/voice.wav"), PARAM)
    assert refused.value.param == PARAM
    assert PARAM in refused.value.message


def test_missing_file_is_a_404(serve: Callable[..., LocalServer]) -> None:
    server = serve({})
    fetcher, _ = fetcher_for(server)
    with pytest.raises(InvalidRequest, match="HTTP 404") as refused:
        fetcher.fetch(server.url("/nope.wav"), "input_audio_source")
    assert refused.value.param == "input_audio_source"


def test_compressed_body_is_refused(serve: Callable[..., LocalServer]) -> None:
    server = serve({"/voice.wav": body(b"\x1f\x8b not really gzip", ("Content-Encoding", "gzip"))})
    fetcher, _ = fetcher_for(server)
    with pytest.raises(InvalidRequest, match="'gzip'-encoded"):
        fetcher.fetch(server.url("/voice.wav"), PARAM)


def test_hop_guard_refuses_a_connection_to_any_other_address() -> None:
    # Defence in depth behind the pinning: httpx is never given a name to resolve, but if it ever
    # connected elsewhere (a proxy, a future default), the guard stops it at connect time.
    guard = _HopGuard(LOOPBACK, time.monotonic() + 5.0)
    guard.trace("connection.connect_tcp.started", {"host": "127.0.0.1", "port": 80})
    with pytest.raises(RuntimeError, match="not the checked address"):
        guard.trace("connection.connect_tcp.started", {"host": "10.0.0.1", "port": 80})


def test_connection_refused_is_an_invalid_request() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    fetcher = UrlFetcher(enabled_policy(), resolve=FakeResolver(), address_allowed=allow_ports(closed_port))
    with pytest.raises(InvalidRequest, match="could not download"):
        fetcher.fetch(f"http://audio.test:{closed_port}/voice.wav", PARAM)


# ---------------------------------------------------------------------------------------------
# A test CA and a certificate for audio.test (cryptography is locked in, via google-auth).


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "url_sources test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audio.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("audio.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "audio.test.pem", directory / "audio.test.key"
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, ca_cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_pair(tls_files: tuple[Path, Path, bytes]) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str]]:
    """Server context (recording the SNI names it is asked for) and a client trusting the test CA."""
    cert_path, key_path, ca_pem = tls_files
    server_names: list[str] = []
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_path, key_path)
    server_tls.sni_callback = lambda sock, name, context: server_names.append(name)
    client_tls = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    return server_tls, client_tls, server_names
