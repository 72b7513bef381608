"""TTS deployment: one engine per replica (GPU in production), chosen by ``engine``.

Its methods are async so that a cancelled call (a client gone, a sibling chunk failed) reaches a
batched engine as a cancelled task, which frees the request's rows in the T3 batch at the next
decode step; engines without an event-loop entry point run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from deployments.fleet import ReplicaIdentity, ReplicaReport
from deployments.metrics import BatchMetrics
from pipeline.clip import AudioClip
from pipeline.engines.base import EngineInfo, SynthesisParams, TTSEngine, VoiceRef
from pipeline.engines.selection import build_tts_engine
from pipeline.engines.t3_scheduler import BatchLimits, T3Scheduler
from pipeline.settings import AppSettings, BatchingConfig

logger = logging.getLogger("ray.serve")

# How often the T3 loop's state is copied into the replica's metrics.
METRICS_PERIOD_SEC = 1.0


class TTS:
    def __init__(self, settings: dict) -> None:
        # A load failure raises here, so the replica fails to start and Serve reports the cause.
        self._engine: TTSEngine = build_tts_engine(AppSettings.model_validate(settings))
        self._replica = ReplicaIdentity.current()
        self._scheduler: T3Scheduler | None = getattr(self._engine, "scheduler", None)
        if self._scheduler is not None:
            metrics = BatchMetrics(self._engine.info.name)
            threading.Thread(
                target=metrics.publish_forever,
                args=(self._scheduler.snapshot, METRICS_PERIOD_SEC),
                name="t3-metrics",
                daemon=True,
            ).start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``batching`` (max_batch_size, max_batch_tokens) applies to the running T3 loop at once."""
        if "batching" not in user_config:
            return
        batching = BatchingConfig.model_validate(user_config["batching"] or {})
        if self._scheduler is None:
            logger.warning(
                "TTS user_config batching ignored: engine %s does not batch", self._engine.info.name
            )
            return
        self._scheduler.configure(BatchLimits(batching.max_batch_size, batching.max_batch_tokens))
        logger.info("T3 batching limits now %s", self._scheduler.limits)

    def info(self) -> EngineInfo:
        return self._engine.info

    def report(self) -> ReplicaReport:
        """This replica's engine, device and GPUs, for the ingress's view of the fleet."""
        return ReplicaReport(self._replica, self._engine.info)

    def batching(self) -> dict[str, int] | None:
        """The T3 loop's live state and counters (None for an engine that does not batch)."""
        return self._scheduler.snapshot() if self._scheduler is not None else None

    async def synthesize_stream(
        self, text: str, voice: VoiceRef | None, params: SynthesisParams
    ) -> AsyncIterator[AudioClip]:
        """The chunk in blocks as rendered (an engine without incremental audio: one whole clip).

        Each block is produced in a worker thread; a cancelled stream cancels the engine's job,
        which leaves the T3 batch at its next step.
        """
        start = getattr(self._engine, "synthesize_incrementally", None)
        if start is None:
            yield await self.synthesize(text, voice, params)
            return
        stream = await asyncio.to_thread(start, text, voice, params)
        blocks = iter(stream)
        try:
            while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                yield block
        finally:
            stream.cancel()

    async def synthesize(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip:
        synthesize_async = getattr(self._engine, "synthesize_async", None)
        if synthesize_async is not None:
            return await synthesize_async(text, voice, params)
        return await asyncio.to_thread(self._engine.synthesize, text, voice, params)
