"""The HTTP API: FastAPI routes on Ray Serve. Routes parse and format; SpeechService does the work.

No `from __future__ import annotations` here: FastAPI must resolve the route annotations at runtime.
"""

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.calls import StageCalls
from deployments.content_types import require_json
from deployments.fleet import FleetView, running_replicas
from deployments.http_errors import install_error_handlers
from deployments.library_routes import LibraryRoutes
from deployments.library_routes import router as library_router
from deployments.metrics import SpeechMetrics, Stopwatch
from deployments.responses import (
    audio_response,
    files_summary,
    requested_formats,
    store_outputs,
    wants_audio,
)
from deployments.security import SecurityPolicy, install_security
from deployments.vc_routes import VCRoutes
from deployments.vc_routes import router as vc_router
from pipeline.admission import AdmissionGate, DrainingGate
from pipeline.audio import FILE_EXTENSIONS, MEDIA_TYPES, StreamingEncoder
from pipeline.clip import AudioClip
from pipeline.concurrency import within, within_time
from pipeline.conversion import VoiceConversionPipeline
from pipeline.conversion_serving import ConversionService
from pipeline.engines.base import EngineInfo
from pipeline.errors import ServiceError, unwrapped
from pipeline.graph import ChunkOutcome, TTSPipeline
from pipeline.library import AudioLibrary, LibraryKind
from pipeline.outputs import OutputStore
from pipeline.schemas import OPENAI_MODELS, OpenAISpeechRequest, TTSRequest, TTSResponse
from pipeline.serving import SpeechResult, SpeechService, native_output_stem
from pipeline.settings import AdmissionConfig, AppSettings, DefaultsConfig
from pipeline.sources import AudioSources
from pipeline.storage import LocalDirectoryStore
from pipeline.url_sources import UrlFetcher

logger = logging.getLogger("ray.serve")

VERSION = "0.1.0"
ENGINE_INFO_TIMEOUT_SEC = 5.0


def _security_policy() -> SecurityPolicy:
    """The serving Ingress's policy. serve.ingress runs a pickled copy of ``api`` (and of its
    middleware), so the middleware reaches the Ingress through Serve's replica context rather than
    through an object shared at import."""
    return serve.get_replica_context().servable_object._security


api = FastAPI(
    title="Chatterbox TTS Extended Plus on Ray Serve",
    version=VERSION,
    description="Text to speech with voice cloning, Whisper-validated generation and an OpenAI dialect.",
)
install_error_handlers(api)
install_security(api, _security_policy)
api.include_router(library_router)
api.include_router(vc_router)


# Module helpers come before the class: serve.ingress snapshots the routes' globals when it decorates.


def _engine_header(engine: EngineInfo) -> str:
    return f"{engine.name}; model={engine.model}; device={engine.device}"


def _result_headers(result: SpeechResult) -> dict[str, str]:
    return {
        "X-Engine": _engine_header(result.engine),
        "X-Generation-Seed": str(result.seed),
        "X-Sample-Rate": str(result.rendered.sample_rate),
        "X-Audio-Duration-Sec": f"{result.rendered.duration_sec:.3f}",
        "X-Processing-Time-Sec": f"{result.processing_time_sec:.3f}",
        "X-Chunks": str(len(result.chunks)),
        "X-Validation": "whisper" if result.validated else "bypassed",
        "X-Chunks-Failed-Validation": str(result.failed_chunks),
        "X-Candidates-Generated": str(sum(chunk.attempts for chunk in result.chunks)),
    }


# A chunk, or a block of one (incremental jobs): the outcome comes with a chunk's last block only.
StreamedChunk = tuple[ChunkOutcome | None, AudioClip]
StreamDone = Callable[[list[ChunkOutcome], float, float], None]  # (outcomes, audio_sec, encode_sec)


async def _encoded_chunks(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[bytes]:
    outcome, clip = first
    outcomes, audio_sec = [outcome] if outcome is not None else [], clip.duration_sec
    with Stopwatch() as encoding:
        encoder = StreamingEncoder(fmt, clip.sample_rate)
        data = encoder.encode(clip)
    yield data
    async for outcome, clip in rest:
        if outcome is not None:
            outcomes.append(outcome)
        audio_sec += clip.duration_sec
        with encoding:
            data = encoder.encode(clip)
        yield data
    with encoding:
        data = encoder.close()
    yield data
    on_done(outcomes, audio_sec, encoding.seconds)


async def _audio_stream(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[bytes]:
    async for data in _encoded_chunks(first, rest, fmt, on_done):
        if data:
            yield data


async def _sse_events(
    first: StreamedChunk, rest: AsyncIterator[StreamedChunk], fmt: str, on_done: StreamDone
) -> AsyncIterator[str]:
    """OpenAI's speech SSE events: base64 audio deltas, then a done event.

    A failure after the first event (the status is sent by then) ends the stream with an
    ``error`` event in our error shape and no done event, so a client can tell it is incomplete.
    """
    try:
        async for data in _encoded_chunks(first, rest, fmt, on_done):
            if data:
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                yield f"data: {json.dumps(event)}\n\n"
    except ServiceError as error:
        cause = unwrapped(error)
        logger.error("speech stream failed after it started: %s", cause.message)
        yield f"data: {json.dumps({'type': 'error', 'error': cause.to_dict()})}\n\n"
        return
    yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n"


async def _releasing(
    chunks: AsyncGenerator[StreamedChunk, None], release: Callable[[], None]
) -> AsyncIterator[StreamedChunk]:
    """The stream's chunks; its admission slot is freed when it ends, fails or is dropped.

    A client that disconnects makes Starlette stop iterating; this generator's ``finally`` then
    runs when it is closed or collected, frees the slot and closes the pipeline's stream, which
    cancels the chunks still being generated.
    """
    try:
        async for item in chunks:
            yield item
    finally:
        release()
        await chunks.aclose()


def _admission_gate(config: AdmissionConfig, on_change: Callable[[], None]) -> AdmissionGate:
    return AdmissionGate(
        config.max_active_requests, config.max_waiting_requests, config.retry_after_sec, on_change
    )


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


def _libraries(settings: AppSettings) -> tuple[AudioLibrary, AudioLibrary]:
    limits = settings.library
    voices = AudioLibrary(
        LocalDirectoryStore(settings.voices_dir),
        LibraryKind("voice", "voice_file", limits.voice_min_sec, limits.voice_max_sec, newest_first=False),
    )
    vc_inputs = AudioLibrary(
        LocalDirectoryStore(settings.vc_inputs_dir),
        LibraryKind(
            "VC input", "vc_input_file", limits.vc_input_min_sec, limits.vc_input_max_sec, newest_first=True
        ),
    )
    return voices, vc_inputs


@serve.ingress(api)
class Ingress(LibraryRoutes, VCRoutes):
    def __init__(
        self,
        chunker: DeploymentHandle,
        tts: DeploymentHandle,
        vc: DeploymentHandle,
        validator: DeploymentHandle,
        postprocess: DeploymentHandle,
        settings: dict,
    ) -> None:
        self._settings = AppSettings.model_validate(settings)
        self._security = SecurityPolicy.from_settings(self._settings)
        self._tts = tts
        self._vc = vc
        self._validator = validator
        # What each stage's replicas report of themselves, refreshed (deployments/fleet.py), so a
        # redeploy or a fleet of unlike replicas is seen as it is.
        self._fleets = {
            "tts": FleetView(tts.report.remote),
            "vc": FleetView(vc.report.remote),
            "validator": FleetView(validator.report.remote),
        }
        self._metrics = SpeechMetrics()
        self._admission = _admission_gate(self._settings.admission, self._publish_admission)
        self._publish_admission()
        self._stage_calls = calls = StageCalls(
            self._settings.retries,
            self._settings.admission.retry_after_sec,
            on_retry=self._metrics.record_retry,
            on_latency=self._metrics.record_stage,
        )
        self._pipeline = TTSPipeline(
            split=calls(chunker, "split"),
            synthesize=calls(tts, "synthesize"),
            transcribe=calls(validator, "transcribe"),
            render=calls(postprocess, "render"),
            synthesize_blocks=calls.stream(tts, "synthesize_stream"),
        )
        self._voices, self._vc_inputs = _libraries(self._settings)
        sources = AudioSources(self._voices, self._vc_inputs, UrlFetcher(self._settings.url_sources))
        self._service = SpeechService(
            self._pipeline,
            sources,
            engine_info=self._tts_info,
            validator_model=self._validator_model,
            defaults=self._settings.defaults,
            limits=self._settings.limits,
        )
        self._conversions = ConversionService(
            VoiceConversionPipeline(calls(vc, "convert")),
            render=calls(postprocess, "render"),
            sources=sources,
            engine_info=self._vc_info,
        )
        self._outputs = OutputStore(self._settings.outputs_dir)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Server defaults (validation threshold, OpenAI voice map, ...) and admission limits change
        without a restart. Requests admitted before a change keep (and free) their old slot.

        ``draining: true`` (the launcher's first step of a graceful stop) refuses new synthesis and
        turns the health check to 503 on every replica, new ones included: Serve applies a
        user_config to each replica in place and hands it to the replicas it starts later.

        ``auth``, ``cors`` and the body limits (``limits.max_body_bytes``, ``body_timeout_sec``)
        apply from the next request on; they are checked first, so a bad one changes nothing.
        """
        self._security = SecurityPolicy.from_settings(self._settings, user_config)
        merged = {**self._settings.defaults.model_dump(), **(user_config.get("defaults") or {})}
        self._service.defaults = DefaultsConfig.model_validate(merged)
        admission = AdmissionConfig.model_validate(
            {**self._settings.admission.model_dump(), **(user_config.get("admission") or {})}
        )
        if not user_config.get("draining"):
            self._admission = _admission_gate(admission, self._publish_admission)
        elif not isinstance(self._admission, DrainingGate):
            self._admission = DrainingGate(self._admission, admission.retry_after_sec)
            snapshot = self._admission.admitted.snapshot()
            logger.info(
                "draining: new synthesis requests are refused; %d running, %d waiting finish first",
                snapshot["active"],
                snapshot["waiting"],
            )
        self._publish_admission()

    def _publish_admission(self) -> None:
        """The gauges show the gate in force: a gate replaced by ``reconfigure`` still frees its
        requests' slots, and each change it makes republishes the current gate's state."""
        self._metrics.record_admission(self._admission.snapshot())

    async def _tts_info(self) -> EngineInfo:
        return await self._fleets["tts"].engine()

    async def _vc_info(self) -> EngineInfo:
        return await self._fleets["vc"].engine()

    async def _validator_model(self) -> str:
        return (await self._fleets["validator"].engine()).model

    @api.get("/", include_in_schema=False)
    async def root(self) -> dict[str, Any]:
        return {
            "message": "Chatterbox TTS Extended Plus on Ray Serve",
            "version": VERSION,
            "endpoints": {
                "api_docs": "/docs",
                "health_check": "/api/v1/health",
                "tts_generation": "/api/v1/tts",
                "voice_conversion": "/api/v1/vc",
                "voices": "/api/v1/voices",
                "openai_speech": "/v1/audio/speech",
            },
        }

    @api.get("/api/v1/health")
    async def health(self) -> JSONResponse:
        """200 when every stage has a running replica, else 503 with each stage's status and message.

        Engine details come from the stages' replicas themselves, each stage surveyed within a
        timeout: a TTS deployment whose replicas cannot load must not hang the health check. Each
        stage lists its running replicas (node, device, assigned GPUs) and whether they agree.
        A replica that is stopping answers 503 ``draining`` at once, so load balancers stop sending.
        """
        if isinstance(self._admission, DrainingGate):
            return JSONResponse(
                status_code=503,
                content={"status": "draining", "version": VERSION, "admission": self._admission.snapshot()},
            )
        deployments = _deployment_states()
        app_name = serve.get_replica_context().app_name
        running = await running_replicas(app_name, ENGINE_INFO_TIMEOUT_SEC)
        handles = {"tts": self._tts, "vc": self._vc, "validator": self._validator}
        surveys = [
            self._fleets[stage].health(
                None if running is None else running.get(handle.deployment_name, {}),
                ENGINE_INFO_TIMEOUT_SEC,
            )
            for stage, handle in handles.items()
        ]
        engines: dict[str, Any] = dict(zip(handles, await asyncio.gather(*surveys), strict=True))
        if engines["vc"].get("name") == "none":
            # No VC model (the offline Piper default): VC requests get 422; the rest is healthy.
            engines["vc"]["available"] = False
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
                # This ingress replica's synthesis requests: running, waiting, refused since start.
                "admission": self._admission.snapshot(),
                # Stage calls this ingress replica sent again after their replica died, by cause.
                "stage_retries": dict(self._stage_calls.retries),
            },
        )

    @api.post("/api/v1/tts", response_model=TTSResponse, dependencies=[Depends(require_json)])
    async def tts(
        self,
        request: TTSRequest,
        http_request: Request,
        response_mode: Annotated[
            str, Query(description="stream|file|download return audio; url returns JSON")
        ] = "stream",
        return_format: Annotated[str | None, Query(description="Format of the audio body")] = None,
    ) -> Response:
        audio_wanted = wants_audio(response_mode)
        formats = requested_formats(request.export_formats, return_format)
        arrived = time.perf_counter()
        job = await self._service.native_job(request, tuple(formats))
        async with self._admission.admit():
            result = await within(self._service.run(job), self._settings.limits.request_timeout_sec)
        self._metrics.record(
            "native",
            result.engine.name,
            result.chunks,
            result.rendered.duration_sec,
            processing_sec=result.processing_time_sec,
            latency_sec=time.perf_counter() - arrived,
            candidates_per_round=job.policy.num_candidates,
        )
        stored: list[dict[str, str]] = []
        if not audio_wanted or len(formats) > 1:
            stored = await store_outputs(
                self._outputs,
                http_request,
                request.output_folder,
                native_output_stem(request),
                result.rendered.files,
            )
        if not audio_wanted:
            return Response(
                content=TTSResponse(
                    **files_summary(
                        stored,
                        result.seed,
                        result.engine.name,
                        result.rendered,
                        result.processing_time_sec,
                    ),
                    validated=result.validated,
                    chunks=result.chunk_reports(),
                ).model_dump_json(),
                media_type="application/json",
                headers=_result_headers(result),
            )
        return audio_response(
            result.rendered.files, formats[0], native_output_stem(request), stored, _result_headers(result)
        )

    @api.get("/outputs/{path:path}", include_in_schema=False)
    async def output_file(self, path: str) -> FileResponse:
        file_path = self._outputs.path_of(path)
        media_type = next(
            (MEDIA_TYPES[fmt] for fmt, ext in FILE_EXTENSIONS.items() if file_path.suffix == f".{ext}"), None
        )
        return FileResponse(file_path, media_type=media_type)

    @api.post("/v1/audio/speech", dependencies=[Depends(require_json)])
    async def openai_speech(self, request: OpenAISpeechRequest) -> Response:
        arrived = time.perf_counter()
        job = await self._service.openai_job(request)
        engine = await self._tts_info()
        await self._admission.acquire()
        admitted = time.perf_counter()
        chunks = _releasing(
            within_time(
                self._pipeline.stream(job, self._service.defaults.stream_chunks_in_flight),
                self._settings.limits.request_timeout_sec,
            ),
            self._admission.release,
        )
        # Wait for the first chunk before answering, so a failure still gets a proper error status.
        first = await anext(chunks)
        fmt = request.response_format
        headers = {
            "X-Engine": _engine_header(engine),
            "X-Generation-Seed": str(job.params.seed),
        }

        def on_done(outcomes: list[ChunkOutcome], audio_sec: float, encode_sec: float) -> None:
            done = time.perf_counter()
            self._metrics.record_encode(encode_sec)
            self._metrics.record(
                "openai",
                engine.name,
                outcomes,
                audio_sec,
                processing_sec=done - admitted,
                latency_sec=done - arrived,
                candidates_per_round=job.policy.num_candidates,
            )

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
        """OpenAI's built-in names (mapped to configurable defaults), then the voice library."""
        entries = await asyncio.to_thread(self._voices.entries)
        return {
            "voices": [
                *(
                    {"id": name, "name": name, "builtin": True}
                    for name in self._service.defaults.openai_voices
                ),
                *(
                    {
                        "id": entry.filename,
                        "name": entry.metadata.name,
                        "builtin": False,
                        "folder_path": entry.folder_path,
                        "tags": entry.metadata.tags,
                    }
                    for entry in entries
                ),
            ]
        }
