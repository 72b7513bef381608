"""Audio given by URL (voice references, VC sources), fetched without opening an SSRF hole.

URL sources are off by default. When an operator turns them on, any client can make the server
send a GET to a URL of its choice, so every hop of a download is checked before it connects:
scheme, host allow-list, DNS resolution, and every resolved address against an address policy
(loopback, private, link-local incl. 169.254.169.254, CGNAT, multicast, reserved ... refused).
The connection then goes to the checked address itself (pinned), so a DNS answer that changes
between the check and the connect (DNS rebinding) cannot send it elsewhere. Redirects are followed
by hand, re-checking every hop; the body is capped in bytes and the whole download in time.

httpx has no SSRF guard (it resolves names itself, follows redirects without a hook before the
connect, and its timeouts are per read, not per download), which is why the address policy, the
pinning, the redirect loop and the total deadline below are written by hand on top of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import InvalidRequest, PayloadTooLarge, ServiceError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]
"""``(host, port) -> addresses``; raises ``OSError`` (e.g. ``socket.gaierror``) if it does not resolve."""
AddressPredicate = Callable[[IPAddress, int], bool]
"""``(address, port) -> allowed``: judged for every resolved address before any connection."""


class UrlSourcePolicy(BaseModel):
    """Whether and how the server may download audio that a request names by URL."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Off by default: a URL source makes the server fetch a client-chosen URL, "
        "which is only safe with the checks below; enable it only if clients need it.",
    )
    max_bytes: int = Field(
        20 * 1024 * 1024,
        gt=0,
        description="Largest body accepted (20 MiB); the download stops as soon as it is exceeded, "
        "so a huge or endless body cannot fill memory.",
    )
    timeout_sec: float = Field(
        15.0,
        gt=0,
        description="Total time for the whole download, DNS and redirects included, so a slow-drip "
        "server cannot hold a request (and a replica thread) open.",
    )
    connect_timeout_sec: float = Field(
        5.0, gt=0, description="Time to open each connection (capped by what is left of timeout_sec)."
    )
    max_redirects: int = Field(
        3, ge=0, description="Redirects followed; each hop is re-checked like the first URL."
    )
    allowed_schemes: list[Literal["http", "https"]] = Field(
        default_factory=lambda: ["http", "https"],
        min_length=1,
        description="May be narrowed to https only; no other scheme can ever be fetched.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (ASCII/punycode) that may be fetched, '*.example.com' for any "
        "subdomain; empty means any host. Resolved addresses are checked either way, so an "
        "allowed name that resolves to a private address is still refused.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _normalise_hosts(cls, hosts: list[str]) -> list[str]:
        return [host.strip().lower().rstrip(".") for host in hosts]


class UpstreamTimeout(ServiceError):
    """The URL's server did not deliver the whole body within ``timeout_sec``.

    504 rather than 400 or 408: the request itself was well formed and the client was not slow
    (408 means the client was slow to send its own request); this server acted as a gateway for
    the client's URL and the upstream did not answer in time, which is what 504 means, and a
    retry may succeed.
    """

    status_code = 504
    code = "UPSTREAM_TIMEOUT"
    error_type = "server_error"


# Anything shaped ``scheme://``: file://, ftp://, gopher:// ... are URL-like too, so the caller sends
# them to ``UrlFetcher.fetch`` to be refused instead of looking them up as file names. Two or more
# scheme characters, so a Windows drive letter (``C://x``) is not a scheme.
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


def is_url(source: str) -> bool:
    """Whether ``source`` names a URL (any ``scheme://``) rather than a file; see ``_URL_LIKE``."""
    return _URL_LIKE.match(source) is not None


# Python 3.11's ``is_global`` still says True for these (fixed piecemeal in later versions).
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(network)
    for network in (
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address a URL download may connect to."""
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:a.b.c.d is the IPv4 address a.b.c.d on a dual-stack socket: judge that one.
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        # 6to4 and NAT64 carry an IPv4 destination that a relay/gateway will deliver to.
        embedded = address.sixtofour
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or any(address in network for network in _EXTRA_BLOCKED if network.version == address.version)
    )


def default_address_allowed(address: IPAddress, port: int) -> bool:
    """The production predicate: public addresses only, any port."""
    return is_public_address(address)


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, via the system resolver.

    The system resolver also turns odd IPv4 spellings (``2130706433``, ``0x7f.1``, ``0177.0.0.1``)
    into the address they mean, so those are judged by what they reach, not how they look.
    """
    addresses: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class UrlFetcher:
    """Downloads a URL source under a ``UrlSourcePolicy``.

    ``resolve`` and ``address_allowed`` are seams for tests (and stricter deployments). The
    predicate sees the port as well as the address so a test can tell two local servers apart
    (one allowed, one standing in for an internal service) while both listen on 127.0.0.1.
    """

    def __init__(
        self,
        policy: UrlSourcePolicy,
        *,
        resolve: Resolver = resolve_host,
        address_allowed: AddressPredicate = default_address_allowed,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.policy = policy
        self._resolve = resolve
        self._address_allowed = address_allowed
        self._verify = verify  # httpx's ``verify``: certifi's CAs, or a context (a test CA)

    def fetch(self, url: str, param: str) -> bytes:
        """The body of ``url``, after following at most ``max_redirects`` checked redirects.

        Raises ``InvalidRequest`` (400) for a refused or failed URL, ``PayloadTooLarge`` (413) past
        ``max_bytes`` and ``UpstreamTimeout`` (504) past ``timeout_sec``; all name ``param``.
        """
        if not self.policy.enabled:
            raise InvalidRequest(
                f"{param}: URL sources are disabled on this server; upload the audio instead",
                param=param,
            )
        deadline = time.monotonic() + self.policy.timeout_sec
        target = self._checked_url(url, param)
        for _ in range(self.policy.max_redirects + 1):
            hop = self._pin(target, param, deadline)
            outcome = self._get(hop, param, deadline)
            if isinstance(outcome, bytes):
                return outcome
            target = self._checked_url(outcome, param)
        raise InvalidRequest(f"{param}: more than {self.policy.max_redirects} redirects", param=param)

    def _checked_url(self, raw: str | httpx.URL, param: str) -> httpx.URL:
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise InvalidRequest(f"{param}: invalid URL ({exc})", param=param) from exc
        if url.scheme not in self.policy.allowed_schemes:
            allowed = " or ".join(self.policy.allowed_schemes)
            raise InvalidRequest(f"{param}: only {allowed} URLs are accepted", param=param)
        if url.userinfo:
            raise InvalidRequest(f"{param}: URLs with a user name or password are refused", param=param)
        host = url.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise InvalidRequest(f"{param}: the URL has no host", param=param)
        if url.port is not None and not 0 < url.port < 65536:
            raise InvalidRequest(f"{param}: invalid port {url.port}", param=param)
        if self.policy.allowed_hosts and not _host_listed(host, self.policy.allowed_hosts):
            raise InvalidRequest(f"{param}: host {host!r} is not allowed on this server", param=param)
        return url

    def _pin(self, url: httpx.URL, param: str, deadline: float) -> _Hop:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self._resolve_within(host, port, param, deadline)
        except (OSError, ValueError) as exc:  # ValueError: a name the IDNA codec rejects
            logger.info("URL source host %r does not resolve: %s", host, exc)
            addresses = []
        refused = [address for address in addresses if not self._address_allowed(address, port)]
        if refused or not addresses:
            logger.info("URL source host %r refused: addresses %s, refused %s", host, addresses, refused)
            # One message for "does not resolve" and "resolves to a private address", so clients
            # cannot use this server to map which internal names exist.
            raise InvalidRequest(f"{param}: host {host!r} is not a reachable public host", param=param)
        pinned = addresses[0]
        return _Hop(
            url=url,
            connect_url=url.copy_with(host=str(pinned)),
            host_header=url.netloc.decode("ascii"),
            pinned=pinned,
        )

    def _get(self, hop: _Hop, param: str, deadline: float) -> bytes | httpx.URL:
        """One request: the body, or the next URL when the answer is a redirect."""
        remaining = self._remaining(param, deadline)
        timeout = httpx.Timeout(remaining, connect=min(self.policy.connect_timeout_sec, remaining))
        guard = _HopGuard(hop.pinned, deadline)
        extensions: dict[str, Any] = {"trace": guard.trace}
        if hop.url.scheme == "https":
            # TLS to the pinned IP must still verify the certificate against the real name.
            extensions["sni_hostname"] = hop.url.raw_host.decode("ascii")
        headers = {"Host": hop.host_header, "Accept-Encoding": "identity"}
        # trust_env=False: no proxy from the environment (it would connect instead of the pinned
        # address) and no .netrc credentials. One client per hop: no connection is reused across
        # hops whose TLS name differs.
        client = httpx.Client(trust_env=False, follow_redirects=False, verify=self._verify, timeout=timeout)
        try:
            with (
                guard,
                client,
                client.stream("GET", hop.connect_url, headers=headers, extensions=extensions) as response,
            ):
                if response.has_redirect_location:
                    try:
                        return hop.url.join(response.headers["Location"])
                    except httpx.InvalidURL as exc:
                        raise InvalidRequest(f"{param}: invalid redirect ({exc})", param=param) from exc
                if not response.is_success:
                    raise InvalidRequest(
                        f"{param}: the URL answered HTTP {response.status_code}", param=param
                    )
                return self._read_body(response, guard, param)
        except httpx.TimeoutException as exc:
            raise self._timeout(param) from exc
        except httpx.TransportError as exc:
            if guard.expired:
                raise self._timeout(param) from exc
            raise InvalidRequest(f"{param}: could not download the URL ({exc})", param=param) from exc

    def _read_body(self, response: httpx.Response, guard: _HopGuard, param: str) -> bytes:
        max_bytes = self.policy.max_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            # We asked for identity; a compressed body would make max_bytes count the wrong bytes
            # (and invite a decompression bomb).
            raise InvalidRequest(f"{param}: the URL sent a {encoding!r}-encoded body", param=param)
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise self._too_large(param)
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise self._too_large(param)
        # A body delimited by the connection closing ends "normally" when the guard shuts it.
        if guard.expired:
            raise self._timeout(param)
        return bytes(body)

    def _remaining(self, param: str, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout(param)
        return remaining

    def _resolve_within(self, host: str, port: int, param: str, deadline: float) -> list[IPAddress]:
        """``resolve(host, port)``, given up at the deadline (getaddrinfo itself has no timeout)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="url-source-dns")
        try:
            return executor.submit(self._resolve, host, port).result(timeout=self._remaining(param, deadline))
        except FutureTimeout as exc:
            raise self._timeout(param) from exc
        finally:
            executor.shutdown(wait=False)

    def _too_large(self, param: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"{param}: the URL's body exceeds {self.policy.max_bytes} bytes", param=param)

    def _timeout(self, param: str) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{param}: the URL did not deliver within {self.policy.timeout_sec:g} s", param=param
        )


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL  # as named by the client or a redirect
    connect_url: httpx.URL  # the same URL with the host replaced by the checked address
    host_header: str
    pinned: IPAddress


class _HopGuard:
    """Enforces the total deadline and the pinning on one hop, via httpcore's ``trace`` extension.

    httpx's timeouts are per socket operation, so a server sending a byte every few hundred ms
    (headers or body) never trips them; at the deadline this shuts the hop's socket down, which
    wakes the blocked read. It also refuses any connection that is not to the pinned address.
    """

    def __init__(self, pinned: IPAddress, deadline: float) -> None:
        self.pinned = pinned
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _HopGuard:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started" and ipaddress.ip_address(info["host"]) != self.pinned:
            raise RuntimeError(f"URL fetch tried to connect to {info['host']}, not the checked address")
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            if stream is not None:
                with self._lock:
                    self._socket = stream.get_extra_info("socket")
                    if self.expired:
                        self._shutdown()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is None:
            return
        # The plain socket method, also on an SSLSocket: shut the TCP stream down under TLS
        # without touching the TLS object another thread is reading through. OSError: closed.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._socket, socket.SHUT_RDWR)


def _host_listed(host: str, allowed_hosts: list[str]) -> bool:
    for entry in allowed_hosts:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False
