"""The speech service logic behind the HTTP routes: requests in both dialects -> one pipeline job.

Routes stay thin (vLLM's split of router / protocol / serving): they parse HTTP, call this,
and turn the result back into HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipeline.engines.base import SAMPLING_FIELDS, EngineInfo, SynthesisParams, VoiceRef
from pipeline.errors import InvalidField, InvalidRequest, UnsupportedCapability
from pipeline.graph import ChunkOutcome, QualityPolicy, TTSJob, TTSPipeline
from pipeline.outputs import output_stem
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import RenderedAudio
from pipeline.schemas import ChunkReport, OpenAISpeechRequest, TTSRequest
from pipeline.settings import DefaultsConfig, LimitsConfig
from pipeline.sources import AudioSources, ResolvedVoice
from pipeline.speakable import check_script, clean_characters
from pipeline.text import TextOptions

# The reference caps exaggeration at 1.0 although it accepts up to 2.0 (factsheet §3).
MAX_EFFECTIVE_EXAGGERATION = 1.0
OPENAI_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class SpeechResult:
    rendered: RenderedAudio
    chunks: list[ChunkOutcome]
    seed: int
    engine: EngineInfo
    validated: bool
    processing_time_sec: float

    def chunk_reports(self) -> list[ChunkReport]:
        return [
            ChunkReport(
                index=chunk.index,
                text=chunk.text,
                attempts=chunk.attempts,
                passed=chunk.passed,
                fallback=chunk.fallback,
                score=chunk.chosen.score,
                transcript=chunk.chosen.transcript,
                seed=chunk.chosen.seed,
                duration_sec=round(chunk.chosen.duration_sec, 3),
                engine_metadata=chunk.audio.metadata,
            )
            for chunk in self.chunks
        ]

    @property
    def failed_chunks(self) -> int:
        return sum(not chunk.passed for chunk in self.chunks)


class SpeechService:
    def __init__(
        self,
        pipeline: TTSPipeline,
        sources: AudioSources,
        engine_info: Callable[[], Awaitable[EngineInfo]],
        validator_model: Callable[[], Awaitable[str]],
        defaults: DefaultsConfig,
        limits: LimitsConfig,
    ) -> None:
        self._limits = limits
        self._max_text_chars = limits.max_text_chars
        self._pipeline = pipeline
        self._sources = sources
        self._engine_info = engine_info
        self._validator_model = validator_model
        self.defaults = defaults

    async def native_job(self, request: TTSRequest, formats: tuple[str, ...]) -> TTSJob:
        engine = await self._engine_info()
        self._check_text(request.text, "text", engine)
        self._check_generations(request)
        self._check_sampling(request, engine)
        resolved = await self._load_voice(request.reference_audio_filename, "reference_audio_filename")
        voice = resolved.voice if resolved else None
        self._check_capabilities(voice, "reference_audio_filename", engine)
        if resolved and resolved.default_parameters:
            request = with_voice_defaults(request, resolved.default_parameters)
        validate = not request.bypass_whisper_checking
        if validate and request.whisper_model_name is not None:
            await self._check_whisper_model(request.whisper_model_name)
        return TTSJob(
            text=request.text,
            text_options=TextOptions(
                to_lowercase=request.to_lowercase,
                normalize_spacing=request.normalize_spacing,
                fix_dot_letters=request.fix_dot_letters,
                remove_reference_numbers=request.remove_reference_numbers,
                sound_words=request.sound_words_field,
                enable_batching=request.enable_batching,
                smart_batch_short_sentences=request.smart_batch_short_sentences,
            ),
            voice=voice,
            params=SynthesisParams(
                seed=request.seed or random_seed(),
                exaggeration=min(request.exaggeration, MAX_EFFECTIVE_EXAGGERATION),
                cfg_weight=request.cfg_weight,
                temperature=request.temperature,
                min_p=request.min_p,
                top_p=request.top_p,
                repetition_penalty=request.repetition_penalty,
                disable_watermark=request.disable_watermark,
            ),
            policy=QualityPolicy(
                num_candidates=request.num_candidates_per_chunk,
                max_attempts=request.max_attempts_per_candidate,
                validate=validate,
                threshold=(
                    request.validation_threshold
                    if request.validation_threshold is not None
                    else self.defaults.validation_threshold
                ),
                use_longest_transcript_on_fail=request.use_longest_transcript_on_fail,
            ),
            post=PostProcessOptions(
                crossfade_ms=request.crossfade_ms,
                cut_silences=request.use_auto_editor,
                silence_threshold=request.ae_threshold,
                silence_margin_sec=request.ae_margin,
                trim=request.trim,
                trim_threshold_ms=request.trim_threshold_ms,
                speed_factor=request.speed_factor,
                normalize_audio=request.normalize_audio,
                normalize_method=request.normalize_method,
                normalize_level=request.normalize_level,
                normalize_tp=request.normalize_tp,
                output_sample_rate=request.sample_rate,
            ),
            formats=formats,
            max_syntheses_in_flight=self.defaults.syntheses_in_flight,
            max_chunks=self._limits.max_chunks,
        )

    async def openai_job(self, request: OpenAISpeechRequest) -> TTSJob:
        engine = await self._engine_info()
        self._check_text(request.input, "input", engine)
        resolved = await self._openai_voice(request.voice)
        voice = resolved.voice if resolved else None
        self._check_capabilities(voice, "voice", engine)
        defaults = dict(resolved.default_parameters) if resolved else {}
        speed = defaults.pop("speed_factor", request.speed)
        if "speed" in request.model_fields_set:
            speed = request.speed
        policy = QualityPolicy(
            num_candidates=self.defaults.openai_num_candidates,
            max_attempts=self.defaults.openai_max_attempts,
            validate=self.defaults.openai_validate,
            threshold=self.defaults.validation_threshold,
        )
        return TTSJob(
            text=request.input,
            text_options=TextOptions(text_param="input"),
            voice=voice,
            params=SynthesisParams(seed=random_seed(), **defaults),
            policy=policy,
            # OpenAI's speech endpoint answers at 24 kHz (its pcm format is defined as 24 kHz s16le).
            post=PostProcessOptions(speed_factor=speed, output_sample_rate=OPENAI_SAMPLE_RATE),
            formats=(request.response_format,),
            max_syntheses_in_flight=self.defaults.syntheses_in_flight,
            max_chunks=self._limits.max_chunks,
            # Blocks of a chunk can be streamed as rendered only when nothing needs the whole chunk
            # first: no transcript to check, no candidate to choose, no speed change or resampling.
            incremental=bool(engine.details.get("incremental"))
            and not policy.validate
            and policy.num_candidates == 1
            and speed == 1.0
            and engine.sample_rate == OPENAI_SAMPLE_RATE,
        )

    async def run(self, job: TTSJob) -> SpeechResult:
        started = time.perf_counter()
        engine = await self._engine_info()
        result = await self._pipeline.run(job)
        return SpeechResult(
            rendered=result.rendered,
            chunks=result.chunks,
            seed=job.params.seed,
            engine=engine,
            validated=job.policy.validate,
            processing_time_sec=time.perf_counter() - started,
        )

    def _check_text(self, text: str, param: str, engine: EngineInfo) -> None:
        """Too long, nothing but invisible characters, or in a script the engine cannot speak:
        refused before any work is queued."""
        if len(text) > self._max_text_chars:
            raise InvalidField(
                f"{param} has {len(text)} characters; this server takes at most {self._max_text_chars}",
                param=param,
            )
        if not clean_characters(text).strip():
            raise InvalidField(f"{param} has only control or invisible characters", param=param)
        check_script(text, param, engine=f"{engine.name}, {engine.model}")

    def _check_generations(self, request: TTSRequest) -> None:
        limit = self._limits.max_generations_per_chunk
        generations = request.num_candidates_per_chunk * request.max_attempts_per_candidate
        if generations > limit:
            raise InvalidField(
                f"num_candidates_per_chunk x max_attempts_per_candidate is {generations}; this server "
                f"generates at most {limit} candidates per chunk",
                param="num_candidates_per_chunk",
            )

    def _check_sampling(self, request: TTSRequest, engine: EngineInfo) -> None:
        """A sampling field the active engine has no use for is refused, not silently ignored."""
        unused = [
            name
            for name in SAMPLING_FIELDS
            if name in request.model_fields_set and name not in engine.sampling_fields
        ]
        if unused:
            raise InvalidField(
                f"{', '.join(unused)}: the active engine '{engine.name}' ({engine.model}) has no "
                f"sampler and does not use {'it' if len(unused) == 1 else 'them'}; omit "
                f"{'it' if len(unused) == 1 else 'them'} (needs the Chatterbox engine)",
                param=unused[0],
            )

    async def _openai_voice(self, name: str) -> ResolvedVoice | None:
        if name in self.defaults.openai_voices:
            mapped = self.defaults.openai_voices[name]
            return await self._load_voice(mapped, "voice") if mapped else None
        return await self._load_voice(name, "voice")

    async def _load_voice(self, name: str | None, param: str) -> ResolvedVoice | None:
        # File reading and decoding stay off the ingress's event loop, which serves every request.
        return None if name is None else await asyncio.to_thread(self._sources.voice, name, param)

    def _check_capabilities(self, voice: VoiceRef | None, param: str, engine: EngineInfo) -> None:
        if voice is not None and not engine.supports_cloning:
            raise UnsupportedCapability(
                f"voice cloning needs the Chatterbox engine; the active engine is '{engine.name}' "
                f"({engine.model}), which speaks only its built-in voice",
                param=param,
            )

    async def _check_whisper_model(self, requested: str) -> None:
        loaded = await self._validator_model()
        family = requested.removesuffix(".en")
        if family not in loaded:
            raise InvalidRequest(
                f"whisper_model_name {requested!r} is not loaded on this server (loaded: {loaded}); "
                "omit it or set whisper.model in serve_config.yaml",
                param="whisper_model_name",
            )


def with_voice_defaults(request: TTSRequest, defaults: dict[str, object]) -> TTSRequest:
    """The request with the voice's stored defaults filling the fields it left unset."""
    return TTSRequest.model_validate({**defaults, **request.model_dump(exclude_unset=True)})


def output_name_parts(request: TTSRequest, seed_requested: int) -> list[str]:
    """The reference's file-name parts (factsheet §12): temp always, then what differs from defaults."""
    parts = [f"temp{request.temperature:g}"]
    if seed_requested:
        parts.append(f"seed{seed_requested}")
    if request.exaggeration != 0.5:
        parts.append(f"exag{request.exaggeration:g}")
    if request.speed_factor != 1.0:
        parts.append(f"speed{request.speed_factor:g}")
    if request.trim:
        parts.append(f"trim{request.trim_threshold_ms}")
    return parts


def native_output_stem(request: TTSRequest) -> str:
    return output_stem("tts", output_name_parts(request, request.seed))


def random_seed() -> int:
    return secrets.randbelow(2**32 - 1) + 1
