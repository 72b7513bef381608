"""HTTP routes of the voice library and the VC input store (factsheet §5, §6, with its bugs fixed).

A mixin of the Ingress: Serve turns methods of the ingress class and its bases into routes.
Library calls touch the disk, so they run in threads, off the event loop that serves every request.

No `from __future__ import annotations` here: FastAPI must resolve the route annotations at runtime.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile

from deployments.content_types import require_json
from deployments.http_errors import validate_body
from deployments.uploads import read_upload_form
from pipeline.errors import InvalidRequest
from pipeline.library import AudioLibrary
from pipeline.library_schemas import (
    VCInputUploadFields,
    VoiceMetadataUpdate,
    VoiceUploadFields,
    entry_filter,
    paginate,
    vc_input_view,
    voice_view,
)
from pipeline.settings import AppSettings

router = APIRouter()

Page = Annotated[int, Query(ge=1)]
PageSize = Annotated[int, Query(ge=1, le=100)]
Confirm = Annotated[bool, Query(description="Must be true: deleting cannot be undone.")]


def form_fields(form: FormData, file_field: str, model: type[BaseModel]) -> Any:
    """The form's text fields through ``model`` (422 naming a bad or unknown field)."""
    fields = {key: value for key, value in form.multi_items() if key != file_field}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"only one file may be sent, in {file_field!r}", param=key)
    return validate_body(model, fields)


def uploaded_file(form: FormData, file_field: str) -> UploadFile:
    upload = form.get(file_field)
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise InvalidRequest(f"{file_field} (an audio file) is required", param=file_field)
    return upload


def _require_confirm(confirm: bool) -> None:
    if not confirm:
        raise InvalidRequest("add confirm=true to delete", param="confirm")


class LibraryRoutes:
    """Needs ``self._settings``, ``self._voices`` and ``self._vc_inputs`` (set by the Ingress)."""

    _settings: AppSettings
    _voices: AudioLibrary
    _vc_inputs: AudioLibrary

    # Voices.

    @router.post("/api/v1/voice", tags=["voices"])
    async def upload_voice(self, request: Request) -> dict[str, Any]:
        """Multipart: voice_file, name, description, tags (comma-separated), folder_path,
        default_parameters (a JSON object), overwrite. 409 if the name is taken, 413 over the limit."""
        form = await read_upload_form(request, "voice_file", self._settings.library.max_upload_bytes)
        try:
            fields: VoiceUploadFields = form_fields(form, "voice_file", VoiceUploadFields)
            upload = uploaded_file(form, "voice_file")
            entry = await asyncio.to_thread(
                self._voices.add,
                upload.file,
                upload.filename,
                name=fields.name,
                folder=fields.folder_path,
                description=fields.description,
                tags=fields.tags,
                default_parameters=fields.defaults_dict,
                overwrite=fields.overwrite,
            )
        finally:
            await form.close()
        return {
            "success": True,
            "message": f"Voice '{entry.metadata.name}' uploaded successfully",
            "voice_metadata": voice_view(entry),
            "filename": entry.filename,
        }

    @router.get("/api/v1/voices", tags=["voices"])
    async def list_voices(
        self,
        page: Page = 1,
        page_size: PageSize = 50,
        search: str | None = None,
        folder: str | None = None,
        project: Annotated[str | None, Query(description="Alias of folder; folder wins.")] = None,
        tag: str | None = None,
    ) -> dict[str, Any]:
        selected = entry_filter(folder=folder if folder is not None else project, search=search, tag=tag)
        entries = await asyncio.to_thread(self._voices.entries, selected)
        return paginate([voice_view(entry) for entry in entries], page, page_size, "voices")

    @router.get("/api/v1/voices/folders", tags=["voices"])
    async def voice_folders(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._voices.folder_tree)

    @router.put(
        "/api/v1/voice/{filename:path}/metadata", tags=["voices"], dependencies=[Depends(require_json)]
    )
    async def update_voice(
        self, filename: str, update: Annotated[VoiceMetadataUpdate, Body()]
    ) -> dict[str, Any]:
        entry = await asyncio.to_thread(self._voices.update, filename, update.changes())
        return {
            "success": True,
            "message": f"Voice '{entry.metadata.name}' updated",
            "voice_metadata": voice_view(entry),
            "filename": entry.filename,
        }

    @router.delete("/api/v1/voice/{filename:path}", tags=["voices"])
    async def delete_voice(self, filename: str, confirm: Confirm = False) -> dict[str, Any]:
        _require_confirm(confirm)
        deleted = await asyncio.to_thread(self._voices.delete, filename)
        return _deleted(deleted, "voice")

    @router.delete("/api/v1/voices", tags=["voices"])
    async def delete_voices(
        self,
        confirm: Confirm = False,
        folder: str | None = None,
        tag: str | None = None,
        search: str | None = None,
        filenames: Annotated[str | None, Query(description="Comma-separated; overrides the rest.")] = None,
    ) -> dict[str, Any]:
        _require_confirm(confirm)
        selected = entry_filter(folder=folder, search=search, tag=tag, filenames=filenames)
        deleted = await asyncio.to_thread(self._voices.delete_matching, selected)
        return _deleted(deleted, "voice")

    # VC inputs.

    @router.post("/api/v1/vc_input", tags=["vc inputs"])
    async def upload_vc_input(self, request: Request) -> dict[str, Any]:
        """Multipart: vc_input_file, text, folder_path (or project), overwrite."""
        form = await read_upload_form(request, "vc_input_file", self._settings.library.max_upload_bytes)
        try:
            fields: VCInputUploadFields = form_fields(form, "vc_input_file", VCInputUploadFields)
            upload = uploaded_file(form, "vc_input_file")
            entry = await asyncio.to_thread(
                self._vc_inputs.add,
                upload.file,
                upload.filename,
                folder=fields.folder_path if fields.folder_path is not None else fields.project,
                description=fields.text or "",
                overwrite=fields.overwrite,
            )
        finally:
            await form.close()
        return {
            "success": True,
            "message": f"VC input '{entry.key.name}' uploaded successfully",
            "metadata": vc_input_view(entry),
            "filename": entry.filename,
        }

    @router.get("/api/v1/vc_inputs", tags=["vc inputs"])
    async def list_vc_inputs(
        self,
        page: Page = 1,
        page_size: PageSize = 50,
        search: str | None = None,
        filenames: str | None = None,
        folder: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        selected = entry_filter(
            folder=folder if folder is not None else project, search=search, filenames=filenames
        )
        entries = await asyncio.to_thread(self._vc_inputs.entries, selected)
        listing = paginate([vc_input_view(entry) for entry in entries], page, page_size, "files")
        return {**listing, "total_files": listing["total"]}

    @router.get("/api/v1/vc_inputs/folders", tags=["vc inputs"])
    async def vc_input_folders(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._vc_inputs.folder_tree)

    @router.delete("/api/v1/vc_input/{filename:path}", tags=["vc inputs"])
    async def delete_vc_input(self, filename: str, confirm: Confirm = False) -> dict[str, Any]:
        _require_confirm(confirm)
        deleted = await asyncio.to_thread(self._vc_inputs.delete, filename)
        return _deleted(deleted, "VC input")

    @router.delete("/api/v1/vc_inputs", tags=["vc inputs"])
    async def delete_vc_inputs(
        self,
        confirm: Confirm = False,
        folder: str | None = None,
        project: str | None = None,
        search: str | None = None,
        filenames: str | None = None,
    ) -> dict[str, Any]:
        _require_confirm(confirm)
        selected = entry_filter(
            folder=folder if folder is not None else project, search=search, filenames=filenames
        )
        deleted = await asyncio.to_thread(self._vc_inputs.delete_matching, selected)
        return _deleted(deleted, "VC input")


def _deleted(deleted: list[str], noun: str) -> dict[str, Any]:
    return {
        "success": True,
        "message": f"Deleted {len(deleted)} {noun} files",
        "deleted_files": deleted,
        "deleted_count": len(deleted),
    }
