"""``POST /api/v1/vc``: voice conversion, as JSON (stored input) or multipart (uploaded input).

A mixin of the Ingress, like the library routes. The body is parsed here rather than by FastAPI
because one route takes two content types (as the reference's does); both are validated by the
same pydantic models, so bad JSON or a bad field is a 4xx naming it (the reference answered 500).

No `from __future__ import annotations` here: FastAPI must resolve the route annotations at runtime.
"""

import asyncio
import json
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from deployments.content_types import is_json, is_multipart
from deployments.http_errors import validate_body
from deployments.library_routes import form_fields, uploaded_file
from deployments.metrics import SpeechMetrics
from deployments.responses import (
    audio_response,
    files_summary,
    requested_formats,
    store_outputs,
    wants_audio,
)
from deployments.uploads import read_upload_form
from pipeline.admission import AdmissionGate
from pipeline.clip import AudioClip
from pipeline.concurrency import within
from pipeline.conversion_serving import ConversionOutcome, ConversionService, conversion_output_stem
from pipeline.errors import InvalidRequest, UnsupportedMediaType
from pipeline.library import AudioLibrary, validated_audio
from pipeline.outputs import OutputStore
from pipeline.schemas import VCOptions, VCRequest, VCResponse
from pipeline.settings import AppSettings

router = APIRouter()

_VC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VCRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["input_audio"],
                    "properties": {
                        "input_audio": {"type": "string", "format": "binary"},
                        **VCOptions.model_json_schema()["properties"],
                    },
                }
            },
        },
    }
}


def _conversion_headers(outcome: ConversionOutcome) -> dict[str, str]:
    engine = outcome.engine
    return {
        "X-Engine": f"{engine.name}; model={engine.model}; device={engine.device}",
        "X-Generation-Seed": str(outcome.seed),
        "X-Sample-Rate": str(outcome.rendered.sample_rate),
        "X-Audio-Duration-Sec": f"{outcome.rendered.duration_sec:.3f}",
        "X-Processing-Time-Sec": f"{outcome.processing_time_sec:.3f}",
        "X-VC-Windows": str(len(outcome.windows)),
    }


class VCRoutes:
    """Needs the Ingress's settings, conversion service, output store, metrics and VC input store."""

    _settings: AppSettings
    _admission: AdmissionGate
    _conversions: ConversionService
    _outputs: OutputStore
    _metrics: SpeechMetrics
    _vc_inputs: AudioLibrary

    @router.post("/api/v1/vc", tags=["voice conversion"], openapi_extra=_VC_BODY)
    async def convert_voice(
        self,
        http_request: Request,
        response_mode: Annotated[
            str, Query(description="stream|file|download return audio; url returns JSON")
        ] = "stream",
        return_format: Annotated[str | None, Query(description="Format of the audio body")] = None,
    ) -> Response:
        """JSON: input_audio_source names a stored VC input. Multipart: the input_audio file itself.
        Long inputs are cut into chunk_sec windows (overlap_sec crossfades) converted in parallel."""
        arrived = time.perf_counter()
        audio_wanted = wants_audio(response_mode)
        content_type = http_request.headers.get("content-type", "")
        if is_multipart(content_type):
            options, source = await self._multipart_request(http_request)
        elif is_json(content_type):
            options, source = await self._json_request(http_request)
        else:
            raise UnsupportedMediaType(
                "send JSON (input_audio_source, target_voice_source, ...) or multipart/form-data "
                "(an input_audio file and the same fields)",
                param="content-type",
            )
        formats = requested_formats(options.export_formats, return_format)
        async with self._admission.admit():
            outcome = await within(
                self._conversions.run(source, options, tuple(formats)),
                self._settings.limits.request_timeout_sec,
            )
        self._metrics.record_conversion(
            outcome.engine.name,
            len(outcome.windows),
            outcome.rendered.duration_sec,
            processing_sec=outcome.processing_time_sec,
            latency_sec=time.perf_counter() - arrived,
        )
        stem = conversion_output_stem(options)
        stored: list[dict[str, str]] = []
        if not audio_wanted or len(formats) > 1:
            stored = await store_outputs(self._outputs, http_request, None, stem, outcome.rendered.files)
        headers = _conversion_headers(outcome)
        if audio_wanted:
            return audio_response(outcome.rendered.files, formats[0], stem, stored, headers)
        summary = files_summary(
            stored, outcome.seed, outcome.engine.name, outcome.rendered, outcome.processing_time_sec
        )
        body = VCResponse(**summary, windows=outcome.windows)
        return Response(content=body.model_dump_json(), media_type="application/json", headers=headers)

    async def _json_request(self, http_request: Request) -> tuple[VCOptions, AudioClip]:
        try:
            payload = json.loads(await http_request.body())
        except ValueError as error:
            raise InvalidRequest(f"the body is not valid JSON: {error}", param="body") from error
        options: VCRequest = validate_body(VCRequest, payload)
        await self._conversions.check_available("input_audio_source")
        return options, await self._conversions.stored_input(options.input_audio_source)

    async def _multipart_request(self, http_request: Request) -> tuple[VCOptions, AudioClip]:
        # Refused before the upload is read when there is no VC model to use it.
        await self._conversions.check_available("input_audio")
        form = await read_upload_form(http_request, "input_audio", self._settings.library.max_upload_bytes)
        try:
            options: VCOptions = form_fields(form, "input_audio", VCOptions)
            upload = uploaded_file(form, "input_audio")
            kind = self._vc_inputs.kind
            source = await asyncio.to_thread(validated_audio, upload.file, kind.with_field("input_audio"))
        finally:
            await form.close()
        return options, source
