"""Reference voices from a configured directory, resolved safely and loaded into ``VoiceRef``s.

The ingress resolves a name to audio once and sends the audio with the request, so TTS
replicas on other nodes need no shared filesystem.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from pipeline.audio import decode_audio
from pipeline.engines.base import VoiceRef
from pipeline.errors import InvalidRequest, NotFound

VOICE_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")


class VoiceDirectory:
    def __init__(self, root: str | Path, cache_size: int = 64) -> None:
        self.root = Path(root).resolve()
        self._cache: OrderedDict[tuple[str, int, int], VoiceRef] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Voice files below the root, as paths relative to it (usable as reference names)."""
        if not self.root.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and path.suffix.lower() in VOICE_EXTENSIONS
        )

    def resolve(self, name: str, param: str) -> Path:
        """The file for ``name`` (with or without extension), never outside the root."""
        if "://" in name:
            raise InvalidRequest(
                "URL reference audio is disabled on this server; upload the voice instead", param=param
            )
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise InvalidRequest(f"invalid voice path {name!r}", param=param)
        base = self.root.joinpath(*relative.parts)
        candidates = [base] if base.suffix.lower() in VOICE_EXTENSIONS else []
        candidates += [base.with_name(base.name + ext) for ext in VOICE_EXTENSIONS]
        for candidate in candidates:
            if candidate.is_file() and candidate.resolve().is_relative_to(self.root):
                return candidate
        raise NotFound(f"voice {name!r} not found in the voice library", param=param)

    def load(self, name: str, param: str) -> VoiceRef:
        path = self.resolve(name, param)
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = path.read_bytes()
        voice = VoiceRef.from_clip(
            path.relative_to(self.root).as_posix(), decode_audio(data), file_bytes=data
        )
        with self._lock:
            self._cache[key] = voice
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return voice
