"""Request and response models of the voice library and VC input routes (factsheet §5, §6).

Form fields arrive as strings; these models parse them (tags as a comma list, default_parameters
as a JSON object) and refuse unknown fields, so a misspelt option is a 422 naming it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pipeline.library import EntryFilter, LibraryEntry
from pipeline.schemas import TTSRequest
from pipeline.storage import clean_folder

# The generation settings a voice may carry as its defaults (they apply when a request using
# the voice leaves them unset). Ranges are TTSRequest's own, so a stored default is always valid.
VOICE_DEFAULT_FIELDS = (
    "exaggeration",
    "cfg_weight",
    "temperature",
    "min_p",
    "top_p",
    "repetition_penalty",
    "speed_factor",
)


def _optional(name: str) -> tuple[Any, Any]:
    field = TTSRequest.model_fields[name]
    constraints = {
        key: getattr(meta, key)
        for meta in field.metadata
        for key in ("ge", "gt", "le", "lt")
        if getattr(meta, key, None) is not None
    }
    return (field.annotation | None, Field(None, **constraints))


VoiceDefaults = create_model(
    "VoiceDefaults",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    __doc__="Generation defaults stored with a voice; unset fields are left to the request.",
    **{name: _optional(name) for name in VOICE_DEFAULT_FIELDS},
)


def _parse_defaults(value: object) -> object:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ValueError(f"default_parameters must be a JSON object: {error}") from error
    if value is not None and not isinstance(value, dict):
        raise ValueError("default_parameters must be a JSON object")
    return value


def _parse_tags(value: object) -> object:
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoiceUploadFields(_Strict):
    """The text fields of ``POST /api/v1/voice`` (the file itself is ``voice_file``)."""

    name: str | None = Field(None, max_length=100, description="Defaults to the file's name.")
    description: str | None = Field(None, max_length=2000)
    tags: list[str] = Field(default_factory=list, description="Comma-separated in the form.")
    folder_path: str | None = Field(None, max_length=500)
    default_parameters: VoiceDefaults | None = None  # type: ignore[valid-type]
    overwrite: bool = False

    _tags = field_validator("tags", mode="before")(_parse_tags)
    _defaults = field_validator("default_parameters", mode="before")(_parse_defaults)

    @property
    def defaults_dict(self) -> dict[str, Any]:
        return self.default_parameters.model_dump(exclude_none=True) if self.default_parameters else {}


class VCInputUploadFields(_Strict):
    """The text fields of ``POST /api/v1/vc_input`` (the file itself is ``vc_input_file``)."""

    text: str | None = Field(None, max_length=2000, description="What the recording says, or a note.")
    folder_path: str | None = Field(None, max_length=500)
    project: str | None = Field(None, max_length=500, description="Alias of folder_path; folder_path wins.")
    overwrite: bool = False


class VoiceMetadataUpdate(_Strict):
    """Body of ``PUT /api/v1/voice/{filename}/metadata``: given fields replace the stored ones;
    a new ``folder_path`` moves the voice."""

    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    tags: list[str] | None = None
    folder_path: str | None = Field(None, max_length=500, description="'' or '/' moves it to the root.")
    default_parameters: VoiceDefaults | None = None  # type: ignore[valid-type]

    _tags = field_validator("tags", mode="before")(_parse_tags)

    def changes(self) -> dict[str, Any]:
        given = self.model_dump(exclude_unset=True)
        if "default_parameters" in given:
            defaults = self.default_parameters
            given["default_parameters"] = defaults.model_dump(exclude_none=True) if defaults else {}
        return {key: value for key, value in given.items() if value is not None}


def entry_filter(
    folder: str | None = None,
    search: str | None = None,
    tag: str | None = None,
    filenames: str | None = None,
) -> EntryFilter:
    """Query parameters as a filter; the folder is held to the library's path rules."""
    return EntryFilter(
        folder=clean_folder(folder, "folder") if folder not in (None, "", "root") else None,
        search=search or None,
        tag=tag or None,
        filenames=tuple(name.strip() for name in (filenames or "").split(",") if name.strip()),
    )


def voice_view(entry: LibraryEntry) -> dict[str, Any]:
    """A voice as the reference lists it (VoiceMetadata), plus the filename to use it by."""
    metadata = entry.metadata
    return {
        "name": metadata.name,
        "filename": entry.filename,
        "url": entry.filename,
        "description": metadata.description,
        "duration_seconds": metadata.duration_seconds,
        "sample_rate": metadata.sample_rate,
        "file_size_bytes": metadata.file_size_bytes,
        "format": metadata.format,
        "default_parameters": metadata.default_parameters,
        "tags": metadata.tags,
        "created_date": metadata.created_date,
        "last_updated": metadata.last_updated,
        "last_used": metadata.last_used,
        "usage_count": metadata.usage_count,
        "folder_path": entry.folder_path,
    }


def vc_input_view(entry: LibraryEntry) -> dict[str, Any]:
    metadata = entry.metadata
    return {
        "filename": entry.filename,
        "folder_path": entry.folder_path,
        "text": metadata.description,
        "file_size_bytes": metadata.file_size_bytes,
        "duration_seconds": metadata.duration_seconds,
        "sample_rate": metadata.sample_rate,
        "format": metadata.format,
        "created_date": metadata.created_date,
        "upload_date": metadata.created_date,
    }


def paginate(items: list[Any], page: int, page_size: int, key: str) -> dict[str, Any]:
    """The reference's page envelope, plus ``total`` (it had no total count for voices)."""
    total_pages = max(1, math.ceil(len(items) / page_size))
    shown = items[(page - 1) * page_size : page * page_size]
    return {
        key: shown,
        "count": len(shown),
        "total": len(items),
        "page": page,
        "page_size": page_size,
        "total_pages": total_pages,
        "has_next": page < total_pages,
        "has_previous": page > 1,
    }
