"""The voice-conversion logic behind ``POST /api/v1/vc``: sources resolved, windows converted across
VC replicas, the result post-processed. The route only parses HTTP and formats the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.clip import AudioClip
from pipeline.conversion import VoiceConversionPipeline
from pipeline.engines.base import EngineInfo
from pipeline.errors import UnsupportedCapability
from pipeline.graph import RenderFn
from pipeline.outputs import output_stem
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import RenderedAudio
from pipeline.schemas import VCOptions
from pipeline.serving import random_seed
from pipeline.sources import AudioSources


@dataclass(frozen=True)
class ConversionOutcome:
    rendered: RenderedAudio
    windows: list[dict[str, Any]]
    seed: int
    engine: EngineInfo
    processing_time_sec: float


class ConversionService:
    def __init__(
        self,
        pipeline: VoiceConversionPipeline,
        render: RenderFn,
        sources: AudioSources,
        engine_info: Callable[[], Awaitable[EngineInfo]],
    ) -> None:
        self._pipeline = pipeline
        self._render = render
        self._sources = sources
        self._engine_info = engine_info

    async def check_available(self, param: str) -> EngineInfo:
        """Before any upload is decoded: 422 naming the missing capability when there is no VC model."""
        engine = await self._engine_info()
        if engine.name == "none":
            raise UnsupportedCapability(
                "voice conversion needs the Chatterbox model, which this server has not loaded "
                f"({engine.details.get('reason', 'engine: piper')})",
                param=param,
            )
        return engine

    async def stored_input(self, reference: str) -> AudioClip:
        return await asyncio.to_thread(self._sources.vc_input, reference, "input_audio_source")

    async def run(self, source: AudioClip, options: VCOptions, formats: tuple[str, ...]) -> ConversionOutcome:
        started = time.perf_counter()
        engine = await self.check_available("target_voice_source")
        target = None
        if options.target_voice_source is not None:
            resolved = await asyncio.to_thread(
                self._sources.voice, options.target_voice_source, "target_voice_source"
            )
            target = resolved.voice
        seed = options.seed or random_seed()
        converted = await self._pipeline.run(
            source,
            target,
            seed=seed,
            disable_watermark=options.disable_watermark,
            chunk_sec=options.chunk_sec,
            overlap_sec=options.overlap_sec,
        )
        post = PostProcessOptions(
            crossfade_ms=0.0,
            trim=options.trim,
            trim_threshold_ms=options.trim_threshold_ms,
            normalize_audio=options.normalize_audio,
            normalize_method=options.normalize_method,
            normalize_level=options.normalize_level,
            normalize_tp=options.normalize_tp,
            output_sample_rate=options.sample_rate,
        )
        rendered = await self._render([converted.audio], post, formats)
        return ConversionOutcome(
            rendered=rendered,
            windows=[dataclasses.asdict(window) for window in converted.windows],
            seed=seed,
            engine=engine,
            processing_time_sec=time.perf_counter() - started,
        )


def conversion_output_stem(options: VCOptions) -> str:
    """The reference's VC naming (factsheet §12): ``vc_<ts>_<µs>_[chunk<n>]_[overlap<x>]_voice<target>``."""
    parts = []
    if options.chunk_sec != 60:
        parts.append(f"chunk{options.chunk_sec:g}")
    if options.overlap_sec != 0.1:
        parts.append(f"overlap{options.overlap_sec:g}")
    target = options.target_voice_source or "builtin"
    stem = target.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    parts.append("voice" + "".join(char for char in stem if char.isalnum() or char == "_")[:10])
    return output_stem("vc", parts)
