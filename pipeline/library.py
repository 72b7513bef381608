"""The voice library and the VC input store: validated audio files with JSON sidecars, in folders.

Both are one ``AudioLibrary`` over a ``FileStore`` (a local, possibly shared, directory). Layout
is the reference server's (factsheet §12): ``<folder>/<name>.<ext>`` plus ``<name>.<ext>.json``,
so an existing ``reference_audio/`` folder can be used as the library root as it is, and files
dropped into the folder by hand are listed with metadata derived from the file.

Crash safety: the audio is committed first and its sidecar second, each by an atomic rename,
under the entry's lock. A crash between the two leaves a complete audio file whose sidecar is
old or missing; the listing then derives what it cannot trust from the file itself (the sidecar
records the audio's size and hash). Nothing is ever half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.audio import decode_audio, probe_audio
from pipeline.clip import AudioClip
from pipeline.errors import Conflict, InvalidRequest, NotFound, UnsupportedMediaType
from pipeline.storage import FileStore, clean_folder, clean_name, relative_key

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")
SIDECAR_SUFFIX = ".json"
# Peaks below this are digital silence: nothing to clone or convert.
MIN_PEAK = 1e-4
COPY_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LibraryKind:
    """What differs between the voice library and the VC input store."""

    noun: str  # "voice", "VC input": for messages
    file_field: str  # the multipart field of the upload
    min_sec: float
    max_sec: float
    newest_first: bool  # list order: voices by name, VC inputs newest first (as the reference)

    def with_field(self, file_field: str) -> LibraryKind:
        """The same limits for audio arriving in another form field (VC's ``input_audio``)."""
        return dataclasses.replace(self, file_field=file_field)


class EntryMetadata(BaseModel):
    """The sidecar. Unknown keys (the reference's ``url``, ``uploaded_date``) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str = ""
    tags: list[str] = []
    default_parameters: dict[str, Any] = {}
    duration_seconds: float = 0.0
    sample_rate: int = 0
    file_size_bytes: int = 0
    format: str = ""
    sha256: str | None = None
    created_date: str | None = None
    last_updated: str | None = None
    usage_count: int = 0
    last_used: str | None = None


@dataclass(frozen=True)
class LibraryEntry:
    key: PurePosixPath
    metadata: EntryMetadata

    @property
    def filename(self) -> str:
        """The path relative to the library root: what requests name the file by."""
        return self.key.as_posix()

    @property
    def folder_path(self) -> str | None:
        parent = self.key.parent.as_posix()
        return None if parent == "." else parent


@dataclass(frozen=True)
class EntryFilter:
    """List and bulk-delete filters. ``filenames`` overrides the rest (as the reference does)."""

    folder: PurePosixPath | None = None
    search: str | None = None
    tag: str | None = None
    filenames: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return self.folder is None and not self.search and not self.tag and not self.filenames

    def matches(self, entry: LibraryEntry) -> bool:
        if self.filenames:
            return entry.filename in self.filenames or entry.key.name in self.filenames
        if self.folder is not None and entry.key.parent.parts[: len(self.folder.parts)] != self.folder.parts:
            return False
        if self.tag and self.tag.lower() not in (tag.lower() for tag in entry.metadata.tags):
            return False
        if self.search:
            needle = self.search.lower()
            haystack = [
                entry.metadata.name,
                entry.metadata.description,
                entry.filename,
                *entry.metadata.tags,
            ]
            if not any(needle in text.lower() for text in haystack):
                return False
        return True


class AudioLibrary:
    """Thread-safe and multi-process-safe: state lives in the store, the decode cache is keyed by
    each file's size and modification time, so another process's overwrite is seen at once."""

    def __init__(self, store: FileStore, kind: LibraryKind, cache_size: int = 64) -> None:
        self.store = store
        self.kind = kind
        self._cache: OrderedDict[tuple[str, int, int], tuple[AudioClip, str]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    # Writing.

    def add(
        self,
        upload: BinaryIO,
        original_filename: str,
        *,
        name: str | None = None,
        folder: str | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        default_parameters: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> LibraryEntry:
        """Stage the upload in the store, prove it is usable audio, commit it as
        ``<folder>/<name><ext>`` (409 if that name is taken) and write its sidecar."""
        with self.store.staged_file() as (staged, stream):
            shutil.copyfileobj(upload, stream, COPY_BLOCK_BYTES)
            stream.flush()
            os.fsync(stream.fileno())
            return self._add_staged(
                staged,
                original_filename,
                name=name,
                folder=folder,
                description=description,
                tags=tags,
                default_parameters=default_parameters,
                overwrite=overwrite,
            )

    def _add_staged(
        self,
        staged: Path,
        original_filename: str,
        *,
        name: str | None,
        folder: str | None,
        description: str | None,
        tags: Sequence[str],
        default_parameters: dict[str, Any] | None,
        overwrite: bool,
    ) -> LibraryEntry:
        if "/" in original_filename or "\\" in original_filename or original_filename.startswith("."):
            raise InvalidRequest(
                f"the uploaded file's name {original_filename!r} may not contain a path",
                param=self.kind.file_field,
            )
        extension = PurePosixPath(original_filename).suffix.lower()
        if extension not in AUDIO_EXTENSIONS:
            raise UnsupportedMediaType(
                f"{self.kind.file_field} must be one of {', '.join(AUDIO_EXTENSIONS)}; "
                f"got {original_filename!r}",
                param=self.kind.file_field,
            )
        given_name = _without_audio_extension(name) if name else None
        stem = clean_name(given_name or PurePosixPath(original_filename).stem, "name")
        folder_key = clean_folder(folder, "folder_path")
        clip = validated_audio(staged, self.kind)
        key = folder_key / f"{stem}{extension}"
        now = _now()
        metadata = EntryMetadata(
            name=given_name or stem,
            description=description if description is not None else f"{self.kind.noun} file: {key.name}",
            tags=[tag for tag in tags if tag],
            default_parameters=default_parameters or {},
            duration_seconds=round(clip.duration_sec, 3),
            sample_rate=clip.sample_rate,
            file_size_bytes=staged.stat().st_size,
            format=extension.removeprefix("."),
            sha256=_file_sha256(staged),
            created_date=now,
            last_updated=now,
        )
        with self.store.lock(_entry_lock_name(folder_key / stem)):
            taken = [other for other in _same_stem(key) if self.store.exists(other)]
            if taken and not overwrite:
                raise Conflict(
                    f"{self.kind.noun} {taken[0].as_posix()!r} already exists; "
                    "set overwrite=true to replace it",
                    param="name",
                )
            self.store.commit(staged, key)
            for other in taken:
                if other != key:
                    self.store.delete(other)
                    self.store.delete(_sidecar(other))
            self._write_sidecar(key, metadata)
        return LibraryEntry(key, metadata)

    def update(self, reference: str, changes: dict[str, Any]) -> LibraryEntry:
        """Merge ``changes`` (name, description, tags, default_parameters, folder_path) into the
        sidecar; a new ``folder_path`` moves the voice there (409 if that name is taken)."""
        entry = self.find(reference, "filename")
        with self.store.lock(_entry_lock_name(entry.key.with_suffix(""))):
            entry = self._entry(entry.key)
            updates = {key: value for key, value in changes.items() if key != "folder_path"}
            metadata = entry.metadata.model_copy(update={**updates, "last_updated": _now()})
            if "folder_path" not in changes:
                self._write_sidecar(entry.key, metadata)
                return LibraryEntry(entry.key, metadata)
            folder = changes["folder_path"]
            target = clean_folder("" if folder.strip() == "/" else folder, "folder_path") / entry.key.name
            if target == entry.key:
                self._write_sidecar(entry.key, metadata)
                return LibraryEntry(entry.key, metadata)
            with self.store.lock(_entry_lock_name(target.with_suffix(""))):
                if any(self.store.exists(other) for other in _same_stem(target)):
                    raise Conflict(
                        f"{self.kind.noun} {target.as_posix()!r} already exists", param="folder_path"
                    )
                # Sidecar first: a crash in between leaves an orphan sidecar (ignored), never a
                # moved voice without its metadata.
                self._write_sidecar(target, metadata)
                self.store.move(entry.key, target)
                self.store.delete(_sidecar(entry.key))
            self.store.prune_empty_folders(entry.key.parent)
            return LibraryEntry(target, metadata)

    def delete(self, reference: str) -> list[str]:
        entry = self.find(reference, "filename")
        return self._delete_entries([entry])

    def delete_matching(self, entry_filter: EntryFilter) -> list[str]:
        """Every entry matching the filter; with no filter, nothing (400): never the whole library."""
        if entry_filter.is_empty:
            raise InvalidRequest(
                "bulk delete needs a filter (folder, tag, search or filenames); "
                "deleting everything at once is not allowed",
                param="folder",
            )
        if entry_filter.folder is not None and entry_filter.folder.parts:
            self._require_folder(entry_filter.folder)
        return self._delete_entries(self.entries(entry_filter))

    def record_use(self, entry: LibraryEntry) -> None:
        """usage_count + 1 and last_used, as the reference keeps them; a failure only logs."""
        try:
            with self.store.lock(_entry_lock_name(entry.key.with_suffix(""))):
                current = self._entry(entry.key)
                updated = current.metadata.model_copy(
                    update={"usage_count": current.metadata.usage_count + 1, "last_used": _now()}
                )
                self._write_sidecar(entry.key, updated)
        except Exception:
            logger.warning("could not record the use of %s", entry.filename, exc_info=True)

    # Reading.

    def entries(self, entry_filter: EntryFilter | None = None) -> list[LibraryEntry]:
        entry_filter = entry_filter or EntryFilter()
        found = [self._entry(key) for key in self.store.files() if key.suffix.lower() in AUDIO_EXTENSIONS]
        matching = [entry for entry in found if entry_filter.matches(entry)]
        if self.kind.newest_first:
            return sorted(matching, key=lambda entry: entry.metadata.created_date or "", reverse=True)
        return sorted(matching, key=lambda entry: entry.filename.lower())

    def folder_tree(self) -> dict[str, Any]:
        """The reference's folder listing, with each folder's direct subfolders (its were one level off)."""
        keys = [key for key in self.store.files() if key.suffix.lower() in AUDIO_EXTENSIONS]
        folders = [PurePosixPath(), *self.store.folders()]
        tree = []
        for folder in folders:
            tree.append(
                {
                    "path": folder.as_posix() if folder.parts else "root",
                    "voice_count": sum(1 for key in keys if key.parent == folder),
                    "subfolders": [
                        other.as_posix() for other in folders if other.parts and other.parent == folder
                    ],
                }
            )
        return {"folders": tree, "total_folders": len(tree), "total_voices": len(keys)}

    def find(self, reference: str, param: str) -> LibraryEntry:
        """The entry ``reference`` names: ``folder/name.ext``, or without the extension, or a bare
        name found anywhere in the library if only one file has it (409 when several do)."""
        key = relative_key(reference, param)
        candidates = [key] if key.suffix.lower() in AUDIO_EXTENSIONS else []
        candidates += [key.with_name(key.name + extension) for extension in AUDIO_EXTENSIONS]
        for candidate in candidates:
            if self.store.exists(candidate):
                return self._entry(candidate)
        if len(key.parts) == 1:
            matches = [
                other
                for other in self.store.files()
                if other.suffix.lower() in AUDIO_EXTENSIONS and key.name in (other.name, other.stem)
            ]
            if len(matches) == 1:
                return self._entry(matches[0])
            if matches:
                raise Conflict(
                    f"{reference!r} names several {self.kind.noun}s "
                    f"({', '.join(match.as_posix() for match in matches[:5])}): give the folder too",
                    param=param,
                )
        raise NotFound(f"{self.kind.noun} {reference!r} not found", param=param)

    def load(self, reference: str, param: str) -> tuple[LibraryEntry, AudioClip, str]:
        """The entry, its decoded audio and the file's sha256 (what engines key conditionings on)."""
        entry = self.find(reference, param)
        path = self.store.local_path(entry.key)
        stat = path.stat()
        cache_key = (entry.filename, stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return (entry, *self._cache[cache_key])
        data = path.read_bytes()
        try:
            clip = decode_audio(data)
        except InvalidRequest as error:
            raise InvalidRequest(
                f"{self.kind.noun} {entry.filename!r}: {error.message}", param=param
            ) from error
        loaded = (clip, hashlib.sha256(data).hexdigest())
        with self._cache_lock:
            self._cache[cache_key] = loaded
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return (entry, *loaded)

    # Helpers.

    def _entry(self, key: PurePosixPath) -> LibraryEntry:
        metadata = self._read_sidecar(key)
        size = self.store.size(key)
        if metadata is None or metadata.file_size_bytes != size:
            metadata = self._derived_metadata(key, size, metadata)
        return LibraryEntry(key, metadata)

    def _read_sidecar(self, key: PurePosixPath) -> EntryMetadata | None:
        raw = self.store.read_bytes(_sidecar(key))
        if raw is None:
            return None
        try:
            return EntryMetadata.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            logger.warning("ignoring the unreadable sidecar of %s", key.as_posix())
            return None

    def _derived_metadata(self, key: PurePosixPath, size: int, stale: EntryMetadata | None) -> EntryMetadata:
        """Metadata from the file itself, for files added by hand (no sidecar) or whose sidecar
        describes an older file; user-given fields of a stale sidecar are kept."""
        try:
            duration, sample_rate = probe_audio(self.store.local_path(key))
        except Exception:
            duration, sample_rate = 0.0, 0
        base = (
            stale.model_dump()
            if stale
            else {"name": key.stem, "description": f"{self.kind.noun} file: {key.name}"}
        )
        return EntryMetadata.model_validate(
            {
                **base,
                "duration_seconds": round(duration, 3),
                "sample_rate": sample_rate,
                "file_size_bytes": size,
                "format": key.suffix.lower().removeprefix("."),
                "sha256": None,
            }
        )

    def _write_sidecar(self, key: PurePosixPath, metadata: EntryMetadata) -> None:
        self.store.write_bytes(_sidecar(key), metadata.model_dump_json(indent=2).encode())

    def _delete_entries(self, entries: Iterable[LibraryEntry]) -> list[str]:
        deleted = []
        for entry in entries:
            with self.store.lock(_entry_lock_name(entry.key.with_suffix(""))):
                if self.store.delete(entry.key):
                    deleted.append(entry.filename)
                self.store.delete(_sidecar(entry.key))
            self.store.prune_empty_folders(entry.key.parent)
        return deleted

    def _require_folder(self, folder: PurePosixPath) -> None:
        if folder not in self.store.folders():
            raise NotFound(f"folder {folder.as_posix()!r} does not exist", param="folder")


def validated_audio(source: Path | BinaryIO, kind: LibraryKind) -> AudioClip:
    """Decoded in full, within the kind's length limits: proof that an upload is finite, audible
    audio of a usable length (the reference only looked at magic bytes)."""
    field_name = kind.file_field
    try:
        clip = decode_audio(source, max_duration_sec=kind.max_sec)
    except InvalidRequest as error:
        raise InvalidRequest(error.message, param=field_name) from error
    except Exception as error:  # decoders raise many types on hostile input; none may be a 500
        raise InvalidRequest(f"{field_name} is not decodable audio ({error})", param=field_name) from error
    if clip.duration_sec < kind.min_sec:
        raise InvalidRequest(
            f"{field_name} holds {clip.duration_sec:.2f} s of audio; a {kind.noun} needs at least "
            f"{kind.min_sec:g} s",
            param=field_name,
        )
    if float(np.max(np.abs(clip.samples))) < MIN_PEAK:
        raise InvalidRequest(f"{field_name} is silent", param=field_name)
    return clip


def _without_audio_extension(name: str) -> str:
    for extension in AUDIO_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def _sidecar(key: PurePosixPath) -> PurePosixPath:
    return key.with_name(key.name + SIDECAR_SUFFIX)


def _same_stem(key: PurePosixPath) -> list[PurePosixPath]:
    """The entry under every audio extension: ``bob.wav`` and ``bob.mp3`` would both answer to ``bob``."""
    stem = key.with_suffix("")
    return [stem.with_name(stem.name + extension) for extension in AUDIO_EXTENSIONS]


def _entry_lock_name(stem_key: PurePosixPath) -> str:
    # Lower-cased: on case-insensitive filesystems "Bob" and "bob" are one file.
    return stem_key.as_posix().lower()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
