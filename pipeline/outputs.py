"""Generated files kept under the outputs directory, for responses that hand out URLs."""

from __future__ import annotations

import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pipeline.audio import FILE_EXTENSIONS
from pipeline.errors import InvalidRequest, NotFound

_FOLDER_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class OutputStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def save(
        self, folder: str | None, stem: str, files: dict[str, bytes], url_prefix: str = "/outputs"
    ) -> list[dict[str, str]]:
        """Write every file atomically (temp file + rename): a reader never sees half a file.

        ``url_prefix`` is where the app serves the outputs folder (behind its Serve route prefix).
        """
        directory = self.root.joinpath(*self._folder_parts(folder))
        directory.mkdir(parents=True, exist_ok=True)
        saved = []
        for fmt, data in files.items():
            filename = f"{stem}.{FILE_EXTENSIONS[fmt]}"
            handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".partial-")
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temp_path, directory / filename)
            relative = (directory / filename).relative_to(self.root).as_posix()
            saved.append({"format": fmt, "filename": filename, "url": f"{url_prefix}/{relative}"})
        return saved

    def path_of(self, relative: str) -> Path:
        parts = PurePosixPath(relative).parts
        if not parts or ".." in parts or PurePosixPath(relative).is_absolute():
            raise NotFound(f"no output file {relative!r}")
        path = self.root.joinpath(*parts)
        if (
            not path.is_file()
            or path.name.startswith(".partial-")
            or not path.resolve().is_relative_to(self.root)
        ):
            raise NotFound(f"no output file {relative!r}")
        return path

    @staticmethod
    def _folder_parts(folder: str | None) -> list[str]:
        # Request schemas check folders before any work; this keeps the store safe on its own.
        try:
            return folder_parts(folder) if folder else []
        except ValueError as error:
            raise InvalidRequest(str(error), param="project") from error


def folder_parts(folder: str) -> list[str]:
    """The sub-folders of a project folder name (``a/b``), or ValueError naming what is wrong."""
    parts = [part for part in folder.replace("\\", "/").split("/") if part]
    for part in parts:
        if part in (".", "..") or not _FOLDER_PART.match(part):
            raise ValueError(f"invalid project folder {folder!r}: use letters, digits, spaces, '_', '-', '.'")
    return parts


def output_stem(kind: str, parts: list[str], now: datetime | None = None) -> str:
    """The reference's naming: ``tts_<YYYY-MM-DD_HHMMSS>_<microseconds>_<parts>``."""
    now = now or datetime.now(UTC)
    return f"{kind}_{now:%Y-%m-%d_%H%M%S}_{now:%f}_{'_'.join(parts) or 'default'}"
