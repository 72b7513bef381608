"""The HTTP API: FastAPI routes on Ray Serve. Routes parse and format; SpeechService does the work.

No `from __future__ import annotations` here: FastAPI must resolve the route annotations at runtime.
"""

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from deployments.calls import resilient
from deployments.http_errors import install_error_handlers
from deployments.metrics import SpeechMetrics
from pipeline.audio import FILE_EXTENSIONS, MEDIA_TYPES, OUTPUT_FORMATS, StreamingEncoder
from pipeline.clip import AudioClip
from pipeline.engines.base import EngineInfo
from pipeline.errors import InvalidRequest
from pipeline.graph import ChunkOutcome, TTSPipeline
from pipeline.outputs import OutputStore
from pipeline.schemas import OPENAI_MODELS, OpenAISpeechRequest, OutputFile, TTSRequest, TTSResponse
from pipeline.serving import SpeechResult, SpeechService, native_output_stem
from pipeline.settings import AppSettings, DefaultsConfig
from pipeline.voices import VoiceDirectory

logger = logging.getLogger("ray.serve")

VERSION = "0.1.0"
AUDIO_RESPONSE_MODES = {"stream", "file", "download"}
ENGINE_INFO_TIMEOUT_SEC = 5.0

api = FastAPI(
    title="Chatterbox TTS Extended Plus on Ray Serve",
    version=VERSION,
    description="Text to speech with voice cloning, Whisper-validated generation and an OpenAI dialect.",
)
install_error_handlers(api)


# Module helpers come before the class: serve.ingress snapshots the routes' globals when it decorates.


def _engine_header(engine: EngineInfo) -> str:
    return f"{engine.name}; model={engine.model}; device={engine.device}"


def _result_headers(result: SpeechResult) -> dict[str, str]:
    return {
        "X-Engine": _engine_header(result.engine),
        "X-Generation-Seed": str(result.seed),
        "X-Sample-Rate": str(result.rendered.clip.sample_rate),
        "X-Audio-Duration-Sec": f"{result.rendered.clip.duration_sec:.3f}",
        "X-Processing-Time-Sec": f"{result.processing_time_sec:.3f}",
        "X-Chunks": str(len(result.chunks)),
        "X-Validation": "whisper" if result.validated else "bypassed",
        "X-Chunks-Failed-Validation": str(result.failed_chunks),
        "X-Candidates-Generated": str(sum(chunk.attempts for chunk in result.chunks)),
    }


StreamedChunk = tuple[ChunkOutcome, AudioClip]
StreamDone = Callable[[list[ChunkOutcome], float], None]


async def _encoded_chunks(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[bytes]:
    outcome, clip = first
    outcomes, audio_sec = [outcome], clip.duration_sec
    encoder = StreamingEncoder(fmt, clip.sample_rate)
    yield encoder.encode(clip)
    async for outcome, clip in rest:
        outcomes.append(outcome)
        audio_sec += clip.duration_sec
        yield encoder.encode(clip)
    yield encoder.close()
    on_done(outcomes, audio_sec)


async def _audio_stream(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[bytes]:
    async for data in _encoded_chunks(first, rest, fmt, on_done):
        if data:
            yield data


async def _sse_events(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[str]:
    """OpenAI's speech SSE events: base64 audio deltas, then a done event."""
    async for data in _encoded_chunks(first, rest, fmt, on_done):
        if data:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield f"data: {json.dumps(event)}\n\n"
    yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n"


def _plain(value: Any) -> str:
    """Serve's status enums as their plain names (str() of a str-Enum gives 'Class.NAME')."""
    return str(getattr(value, "value", value))


def _deployment_states() -> dict[str, dict[str, Any]]:
    """Each deployment of this app as Serve's controller sees it: status, replicas per state, message."""
    try:
        status = serve.status()
    except Exception:  # health must answer even when the controller is briefly unreachable
        logger.exception("serve.status() failed")
        return {}
    application = status.applications.get(serve.get_replica_context().app_name)
    if application is None:
        return {}
    return {
        name: {
            "status": _plain(deployment.status),
            "replicas": {_plain(state): count for state, count in deployment.replica_states.items()},
            **({"message": deployment.message} if deployment.message else {}),
        }
        for name, deployment in application.deployments.items()
    }


@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        chunker: DeploymentHandle,
        tts: DeploymentHandle,
        validator: DeploymentHandle,
        postprocess: DeploymentHandle,
        settings: dict,
    ) -> None:
        self._settings = AppSettings.model_validate(settings)
        self._tts = tts
        self._validator = validator
        self._engine_info: EngineInfo | None = None
        self._validator_info: dict[str, str] | None = None
        self._pipeline = TTSPipeline(
            split=resilient(chunker, "split"),
            synthesize=resilient(tts, "synthesize"),
            transcribe=resilient(validator, "transcribe"),
            render=resilient(postprocess, "render"),
        )
        self._service = SpeechService(
            self._pipeline,
            VoiceDirectory(self._settings.voices_dir),
            engine_info=self._tts_info,
            validator_model=self._validator_model,
            defaults=self._settings.defaults,
        )
        self._outputs = OutputStore(self._settings.outputs_dir)
        self._metrics = SpeechMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Server defaults (validation threshold, OpenAI voice map, ...) change without a restart."""
        merged = {**self._settings.defaults.model_dump(), **(user_config.get("defaults") or {})}
        self._service.defaults = DefaultsConfig.model_validate(merged)

    async def _tts_info(self) -> EngineInfo:
        if self._engine_info is None:
            self._engine_info = await self._tts.info.remote()
        return self._engine_info

    async def _validator_details(self) -> dict[str, str]:
        if self._validator_info is None:
            self._validator_info = await self._validator.info.remote()
        return self._validator_info

    async def _validator_model(self) -> str:
        return (await self._validator_details())["model"]

    @api.get("/", include_in_schema=False)
    async def root(self) -> dict[str, Any]:
        return {
            "message": "Chatterbox TTS Extended Plus on Ray Serve",
            "version": VERSION,
            "endpoints": {
                "api_docs": "/docs",
                "health_check": "/api/v1/health",
                "tts_generation": "/api/v1/tts",
                "openai_speech": "/v1/audio/speech",
            },
        }

    @api.get("/api/v1/health")
    async def health(self) -> JSONResponse:
        """200 when every stage has a running replica, else 503 with each stage's status and message.

        Engine details come from the stages themselves, with a timeout: a TTS deployment whose
        replicas cannot load must not hang the health check.
        """
        deployments = _deployment_states()
        engines: dict[str, Any] = {}
        try:
            engine = await asyncio.wait_for(self._tts_info(), ENGINE_INFO_TIMEOUT_SEC)
            engines["tts"] = {
                "name": engine.name,
                "model": engine.model,
                "device": engine.device,
                "sample_rate": engine.sample_rate,
                "supports_cloning": engine.supports_cloning,
                **engine.details,
            }
        except (TimeoutError, RayError) as error:
            engines["tts"] = {"name": "unavailable", "error": str(error) or type(error).__name__}
        try:
            engines["validator"] = await asyncio.wait_for(self._validator_details(), ENGINE_INFO_TIMEOUT_SEC)
        except (TimeoutError, RayError) as error:
            engines["validator"] = {"model": "unavailable", "error": str(error) or type(error).__name__}
        healthy = all(state["status"] == "HEALTHY" for state in deployments.values()) and all(
            "error" not in details for details in engines.values()
        )
        return JSONResponse(
            status_code=200 if healthy else 503,
            content={
                "status": "healthy" if healthy else "degraded",
                "version": VERSION,
                "engines": engines,
                "deployments": deployments,
            },
        )

    @api.post("/api/v1/tts", response_model=TTSResponse)
    async def tts(
        self,
        request: TTSRequest,
        http_request: Request,
        response_mode: Annotated[
            str, Query(description="stream|file|download return audio; url returns JSON")
        ] = "stream",
        return_format: Annotated[str | None, Query(description="Format of the audio body")] = None,
    ) -> Response:
        wants_audio = response_mode.lower() in AUDIO_RESPONSE_MODES
        formats = list(dict.fromkeys(request.export_formats))
        if return_format is not None:
            return_format = return_format.lower()
            if return_format not in OUTPUT_FORMATS:
                raise InvalidRequest(
                    f"return_format must be one of {', '.join(OUTPUT_FORMATS)}", param="return_format"
                )
            formats = [return_format, *(fmt for fmt in formats if fmt != return_format)]
        job = await self._service.native_job(request, tuple(formats))
        result = await self._service.run(job)
        self._metrics.record("native", result.engine.name, result.chunks, result.rendered.clip.duration_sec)
        stored: list[dict[str, str]] = []
        if not wants_audio or len(formats) > 1:
            # Behind a Serve route prefix the outputs route lives under it (Serve sets root_path).
            url_prefix = f"{http_request.scope.get('root_path', '')}/outputs"
            stored = await asyncio.to_thread(
                self._outputs.save,
                request.output_folder,
                native_output_stem(request),
                result.rendered.files,
                url_prefix,
            )
        if not wants_audio:
            return Response(
                content=TTSResponse(
                    output_files=[OutputFile(**item) for item in stored],
                    generation_seed_used=result.seed,
                    processing_time_seconds=round(result.processing_time_sec, 3),
                    engine=result.engine.name,
                    sample_rate=result.rendered.clip.sample_rate,
                    duration_sec=round(result.rendered.clip.duration_sec, 3),
                    validated=result.validated,
                    chunks=result.chunk_reports(),
                ).model_dump_json(),
                media_type="application/json",
                headers=_result_headers(result),
            )
        fmt = formats[0]
        stem = stored[0]["filename"].rsplit(".", 1)[0] if stored else native_output_stem(request)
        headers = _result_headers(result) | {
            "Content-Disposition": f'attachment; filename="{stem}.{FILE_EXTENSIONS[fmt]}"'
        }
        alternatives = "|".join(f"{item['format']}:{item['url']}" for item in stored[1:])
        if alternatives:
            headers["X-Alternative-Formats"] = alternatives
        return Response(content=result.rendered.files[fmt], media_type=MEDIA_TYPES[fmt], headers=headers)

    @api.get("/outputs/{path:path}", include_in_schema=False)
    async def output_file(self, path: str) -> FileResponse:
        file_path = self._outputs.path_of(path)
        media_type = next(
            (MEDIA_TYPES[fmt] for fmt, ext in FILE_EXTENSIONS.items() if file_path.suffix == f".{ext}"), None
        )
        return FileResponse(file_path, media_type=media_type)

    @api.post("/v1/audio/speech")
    async def openai_speech(self, request: OpenAISpeechRequest) -> Response:
        job = await self._service.openai_job(request)
        engine = await self._tts_info()
        chunks = self._pipeline.stream(job, self._service.defaults.stream_chunks_in_flight)
        # Wait for the first chunk before answering, so a failure still gets a proper error status.
        first = await anext(chunks)
        fmt = request.response_format
        headers = {
            "X-Engine": _engine_header(engine),
            "X-Generation-Seed": str(job.params.seed),
        }

        def on_done(outcomes: list[ChunkOutcome], audio_sec: float) -> None:
            self._metrics.record("openai", engine.name, outcomes, audio_sec)

        if request.stream_format == "sse":
            return StreamingResponse(
                _sse_events(first, chunks, fmt, on_done), media_type="text/event-stream", headers=headers
            )
        headers["Content-Disposition"] = f'attachment; filename="speech.{FILE_EXTENSIONS[fmt]}"'
        return StreamingResponse(
            _audio_stream(first, chunks, fmt, on_done), media_type=MEDIA_TYPES[fmt], headers=headers
        )

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "chatterbox-serve"}
                for model in OPENAI_MODELS
            ],
        }

    @api.get("/v1/audio/voices")
    async def voices(self) -> dict[str, Any]:
        return {
            "voices": [
                *(
                    {"id": name, "name": name, "builtin": True}
                    for name in self._service.defaults.openai_voices
                ),
                *({"id": name, "name": name, "builtin": False} for name in self._service.voice_names()),
            ]
        }
