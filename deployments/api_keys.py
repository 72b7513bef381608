"""API keys: named keys from a file and an environment variable, held as digests, matched in
constant time; the file is re-read when it changes (rotation without a restart)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.settings import AuthConfig

logger = logging.getLogger("ray.serve")

MIN_KEY_CHARS = 16
# How often a request may stat the keys file to see whether it changed (rotation without restart).
KEYS_FILE_RECHECK_SEC = 5.0
KeyScope = Literal["all", "speech"]
SCOPES: tuple[KeyScope, ...] = ("all", "speech")
# What a speech-only key may not do: change the voice library or the stored VC inputs.
LIBRARY_PATH_PREFIXES = ("/api/v1/voice", "/api/v1/vc_input")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    """A key the server accepts, held as its SHA-256 only: the secret itself is never kept or logged."""

    name: str
    scope: KeyScope
    digest: bytes = field(repr=False)

    def may(self, method: str, route_path: str) -> bool:
        return (
            self.scope == "all" or method in READ_METHODS or not route_path.startswith(LIBRARY_PATH_PREFIXES)
        )


def keys_from_file(text: str, source: str) -> tuple[ApiKey, ...]:
    """One ``name:key[:scope]`` entry per line; blank lines and ``#`` comment lines are skipped."""
    entries = [
        (f"{source} line {number}", line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    return _unique([_parsed(where, entry) for where, entry in entries])


def keys_from_env(value: str, variable: str) -> tuple[ApiKey, ...]:
    """Entries separated by commas (or whitespace: a multi-line Kubernetes secret works too)."""
    entries = [entry for entry in re.split(r"[,\s]+", value) if entry]
    return _unique([_parsed(f"{variable} entry {number}", entry) for number, entry in enumerate(entries, 1)])


class KeyRing:
    """The keys in force: the environment variable's (read once) and the file's (re-read when it
    changes, so keys rotate without a restart; a file that cannot be re-read keeps the old keys)."""

    def __init__(
        self,
        env_keys: tuple[ApiKey, ...],
        keys_file: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env_keys = env_keys
        self._keys_file = keys_file
        self._clock = clock
        self._checked_at = clock()
        self._file_stamp: tuple[int, int, int] | None = None
        self._keys = self._load()  # an unreadable or malformed file fails the replica's start

    def match(self, presented: str) -> ApiKey | None:
        """The key whose secret this is, compared with every key in constant time: neither the
        time taken nor an early exit tells a caller how close a guess was or which key it hit."""
        self._refresh()
        digest = _digest(presented)
        matched = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                matched = key
        return matched

    def names(self) -> list[str]:
        return [key.name for key in self._keys]

    def _load(self) -> tuple[ApiKey, ...]:
        if self._keys_file is None:
            return self._env_keys
        stamp = _stamp(self._keys_file)
        keys = _unique([*self._env_keys, *keys_from_file(self._keys_file.read_text(), str(self._keys_file))])
        self._file_stamp = stamp  # only once read: a file that failed is tried again at the next check
        return keys

    def _refresh(self) -> None:
        now = self._clock()
        if self._keys_file is None or now - self._checked_at < KEYS_FILE_RECHECK_SEC:
            return
        self._checked_at = now
        try:
            if _stamp(self._keys_file) == self._file_stamp:
                return
            self._keys = self._load()
        except (OSError, ValueError) as error:
            logger.error("API keys file not re-read, the previous keys stay in force: %s", error)
            return
        logger.info("API keys reloaded from %s: %s", self._keys_file, ", ".join(self.names()) or "none")


def key_ring(auth: AuthConfig) -> KeyRing | None:
    env_value = os.environ.get(auth.keys_env, "") if auth.keys_env else ""
    if auth.keys_file is None and not env_value.strip():
        return None
    env_keys = keys_from_env(env_value, auth.keys_env or "") if env_value.strip() else ()
    ring = KeyRing(env_keys, Path(auth.keys_file).expanduser() if auth.keys_file else None)
    if ring.names():
        logger.info("API keys required; keys in force: %s", ", ".join(ring.names()))
    else:
        logger.warning("API keys required but none configured: every request but health gets 401")
    return ring


def _parsed(where: str, entry: str) -> ApiKey:
    # Messages name the entry's place and its name, never the secret.
    parts = entry.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{where}: expected name:key or name:key:scope")
    name, secret, *scope = parts
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: a key name is 1-64 letters, digits or . _ @ -")
    if len(secret) < MIN_KEY_CHARS or any(char.isspace() for char in secret):
        raise ValueError(f"{where}: the key of {name!r} needs {MIN_KEY_CHARS}+ characters, no spaces")
    key_scope = scope[0] if scope else "all"
    if key_scope not in SCOPES:
        raise ValueError(f"{where}: scope {key_scope!r} of {name!r} is not one of {', '.join(SCOPES)}")
    return ApiKey(name, key_scope, _digest(secret))


def _unique(keys: list[ApiKey]) -> tuple[ApiKey, ...]:
    names = [key.name for key in keys]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"API key names given twice: {', '.join(twice)}")
    if len({key.digest for key in keys}) < len(keys):
        raise ValueError("the same API key is given under two names")
    return tuple(keys)


def _digest(secret: str) -> bytes:
    # Equal-length digests: compare_digest on the raw strings would reveal a key's length.
    return hashlib.sha256(secret.encode()).digest()


def _stamp(path: Path) -> tuple[int, int, int]:
    # os.stat follows symlinks: a Kubernetes secret volume swaps a symlink when the secret changes.
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
