"""The one storage interface for user files (the voice library, VC inputs), and safe names inside it.

The default store is a local directory. Several ingress replicas and processes may share it (a
KubeRay ReadWriteMany volume, NFS, EFS): nothing is cached in memory that another process could
make stale, every write is a staged file renamed into place (readers never see half a file), and
writers of one entry serialise on a lock file next to the data (``filelock``: ``flock`` locks,
which Linux NFSv4 clients, EFS and CephFS honour across machines).
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from filelock import FileLock

from pipeline.errors import InvalidRequest

# Dot-folders hold the store's own files; names can never start with a dot, so no entry collides.
STAGING_DIR = ".staging"
LOCKS_DIR = ".locks"
# A staged file this old belongs to a request that died (a crash, a killed replica).
STALE_STAGING_SEC = 3600.0
LOCK_TIMEOUT_SEC = 30.0

ROOT = PurePosixPath()  # the key of the store's root folder
MAX_NAME_CHARS = 100
MAX_FOLDER_DEPTH = 8
# The reference replaces these inside a name (factsheet §11); control characters go too.
_REPLACED_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:$")


def clean_name(text: str, param: str) -> str:
    """A name that is one safe path component, or 400: separators and traversal are refused, not
    silently rewritten, so a hostile name never lands somewhere the caller did not mean."""
    name = unicodedata.normalize("NFKC", text)
    if "/" in name or "\\" in name:
        raise InvalidRequest(f"{param} {text!r} may not contain '/' or '\\'", param=param)
    name = _REPLACED_CHARS.sub("_", name).strip(" .")
    if not name:
        raise InvalidRequest(f"{param} {text!r} is empty once cleaned", param=param)
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"{param} is longer than {MAX_NAME_CHARS} characters", param=param)
    return name


def clean_folder(text: str | None, param: str) -> PurePosixPath:
    """A relative folder inside a store (empty for the root); absolute paths and '..' are 400."""
    if text is None:
        return PurePosixPath()
    normalised = unicodedata.normalize("NFKC", text).replace("\\", "/").strip()
    if normalised.startswith("/") or _WINDOWS_DRIVE.match(normalised.split("/", 1)[0]):
        raise InvalidRequest(f"{param} {text!r} must be a relative folder", param=param)
    parts = [part for part in normalised.split("/") if part.strip()]
    if any(part.strip() in (".", "..") for part in parts):
        raise InvalidRequest(f"{param} {text!r} may not contain '.' or '..' parts", param=param)
    if len(parts) > MAX_FOLDER_DEPTH:
        raise InvalidRequest(f"{param} is deeper than {MAX_FOLDER_DEPTH} folders", param=param)
    return PurePosixPath(*(clean_name(part, param) for part in parts))


def relative_key(text: str, param: str) -> PurePosixPath:
    """A file path relative to a store (``folder/name.ext``), held to the same rules as names."""
    folder, _, name = unicodedata.normalize("NFKC", text).replace("\\", "/").rpartition("/")
    return (
        clean_folder(folder, param) / clean_name(name, param)
        if folder
        else PurePosixPath(clean_name(name, param))
    )


class FileStore(Protocol):
    """What the libraries need from storage. Keys are clean relative paths (see ``relative_key``)."""

    def exists(self, key: PurePosixPath) -> bool: ...

    def local_path(self, key: PurePosixPath) -> Path: ...

    def size(self, key: PurePosixPath) -> int: ...

    def read_bytes(self, key: PurePosixPath) -> bytes | None: ...

    def write_bytes(self, key: PurePosixPath, data: bytes) -> None: ...

    def staged_file(self) -> AbstractContextManager[tuple[Path, BinaryIO]]: ...

    def commit(self, staged: Path, key: PurePosixPath) -> None: ...

    def move(self, source: PurePosixPath, target: PurePosixPath) -> None: ...

    def delete(self, key: PurePosixPath) -> bool: ...

    def lock(self, name: str) -> FileLock: ...

    def files(self, folder: PurePosixPath = ROOT) -> Iterator[PurePosixPath]: ...

    def folders(self) -> list[PurePosixPath]: ...

    def prune_empty_folders(self, folder: PurePosixPath) -> None: ...


class LocalDirectoryStore:
    """A directory tree as a ``FileStore``. Every path it touches is checked to stay under the root,
    symlinks included."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / LOCKS_DIR).mkdir(exist_ok=True)
        self._sweep_stale_staging()

    def local_path(self, key: PurePosixPath) -> Path:
        path = self.root.joinpath(*key.parts)
        if not key.parts or key.is_absolute() or ".." in key.parts or key.parts[0].startswith("."):
            raise InvalidRequest(f"invalid path {key.as_posix()!r}")
        if not path.resolve().is_relative_to(self.root):
            raise InvalidRequest(f"path {key.as_posix()!r} leaves the store")
        return path

    def exists(self, key: PurePosixPath) -> bool:
        return self.local_path(key).is_file()

    def size(self, key: PurePosixPath) -> int:
        return self.local_path(key).stat().st_size

    def read_bytes(self, key: PurePosixPath) -> bytes | None:
        try:
            return self.local_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: PurePosixPath, data: bytes) -> None:
        with self.staged_file() as (staged, stream):
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
            self.commit(staged, key)

    @contextmanager
    def staged_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A new file in the store's staging folder (same filesystem as the data, so committing it is
        one atomic rename); removed on exit unless it was committed."""
        staging = self.root / STAGING_DIR
        # Made again if someone cleaned the data folder under a running server (a 500 otherwise).
        staging.mkdir(exist_ok=True)
        staged = staging / f"{uuid.uuid4().hex}.part"
        try:
            with staged.open("xb") as stream:
                yield staged, stream
        finally:
            with suppress(FileNotFoundError):
                staged.unlink()

    def commit(self, staged: Path, key: PurePosixPath) -> None:
        """Rename a staged file into place, replacing what is there: readers see the old file or the
        new one, never a mix. Callers that must not replace check under ``lock`` first."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    def move(self, source: PurePosixPath, target: PurePosixPath) -> None:
        destination = self.local_path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.local_path(source), destination)

    def delete(self, key: PurePosixPath) -> bool:
        try:
            self.local_path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def lock(self, name: str) -> FileLock:
        """A cross-process lock for one entry (``name`` is any string; it is hashed into a file name)."""
        digest = uuid.uuid5(uuid.NAMESPACE_URL, name).hex
        return FileLock(self.root / LOCKS_DIR / f"{digest}.lock", timeout=LOCK_TIMEOUT_SEC)

    def files(self, folder: PurePosixPath = ROOT) -> Iterator[PurePosixPath]:
        """Every file at or below ``folder``, hidden files and the store's own folders left out."""
        base = self.root.joinpath(*folder.parts)
        if not base.is_dir():
            return
        for directory, subdirectories, filenames in os.walk(base):
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            relative = Path(directory).relative_to(self.root)
            for filename in sorted(filenames):
                if not filename.startswith("."):
                    yield PurePosixPath(relative.as_posix()) / filename

    def folders(self) -> list[PurePosixPath]:
        found = []
        for directory, subdirectories, _ in os.walk(self.root):
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            relative = Path(directory).relative_to(self.root).as_posix()
            if relative != ".":
                found.append(PurePosixPath(relative))
        return found

    def prune_empty_folders(self, folder: PurePosixPath) -> None:
        """Remove ``folder`` and its parents while they are empty (never the root)."""
        parts = list(folder.parts)
        while parts:
            with suppress(OSError):  # not empty, or already gone
                self.root.joinpath(*parts).rmdir()
            parts.pop()

    def _sweep_stale_staging(self) -> None:
        cutoff = time.time() - STALE_STAGING_SEC
        for staged in (self.root / STAGING_DIR).glob("*.part"):
            with suppress(OSError):
                if staged.stat().st_mtime < cutoff:
                    staged.unlink()
