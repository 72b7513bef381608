"""Answers shared by the routes that produce audio files (TTS, VC): the audio itself, or stored
files handed out as URLs (the reference's ``response_mode`` / ``return_format`` contract)."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import Response

from pipeline.audio import FILE_EXTENSIONS, MEDIA_TYPES, OUTPUT_FORMATS
from pipeline.errors import InvalidField, InvalidRequest
from pipeline.outputs import OutputStore
from pipeline.rendering import RenderedAudio
from pipeline.schemas import OutputFile

AUDIO_RESPONSE_MODES = {"stream", "file", "download"}
RESPONSE_MODES = (*sorted(AUDIO_RESPONSE_MODES), "url")


def wants_audio(response_mode: str) -> bool:
    """Whether the answer is the audio itself (stream/file/download) or JSON with URLs (url)."""
    mode = response_mode.lower()
    if mode not in RESPONSE_MODES:
        raise InvalidField(
            f"response_mode must be one of {', '.join(RESPONSE_MODES)}; got {response_mode!r}",
            param="response_mode",
        )
    return mode in AUDIO_RESPONSE_MODES


def requested_formats(export_formats: list[str], return_format: str | None) -> list[str]:
    """The formats to produce, the one for the response body first."""
    formats = list(dict.fromkeys(export_formats))
    if return_format is None:
        return formats
    return_format = return_format.lower()
    if return_format not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"return_format must be one of {', '.join(OUTPUT_FORMATS)}", param="return_format"
        )
    return [return_format, *(fmt for fmt in formats if fmt != return_format)]


async def store_outputs(
    outputs: OutputStore, http_request: Request, folder: str | None, stem: str, files: dict[str, bytes]
) -> list[dict[str, str]]:
    # Behind a Serve route prefix the outputs route lives under it (Serve sets root_path).
    url_prefix = f"{http_request.scope.get('root_path', '')}/outputs"
    return await asyncio.to_thread(outputs.save, folder, stem, files, url_prefix)


def audio_response(
    files: dict[str, bytes], fmt: str, stem: str, stored: list[dict[str, str]], headers: dict[str, str]
) -> Response:
    """The first format as the body; the other stored formats named in ``X-Alternative-Formats``."""
    if stored:
        stem = stored[0]["filename"].rsplit(".", 1)[0]
    headers = headers | {"Content-Disposition": f'attachment; filename="{stem}.{FILE_EXTENSIONS[fmt]}"'}
    alternatives = "|".join(f"{item['format']}:{item['url']}" for item in stored[1:])
    if alternatives:
        headers["X-Alternative-Formats"] = alternatives
    return Response(content=files[fmt], media_type=MEDIA_TYPES[fmt], headers=headers)


def files_summary(
    stored: list[dict[str, str]], seed: int, engine: str, rendered: RenderedAudio, processing_time_sec: float
) -> dict[str, object]:
    """The fields of ``AudioFilesResponse`` for one finished generation."""
    return {
        "output_files": [OutputFile(**item) for item in stored],
        "generation_seed_used": seed,
        "processing_time_seconds": round(processing_time_sec, 3),
        "engine": engine,
        "sample_rate": rendered.sample_rate,
        "duration_sec": round(rendered.duration_sec, 3),
    }
