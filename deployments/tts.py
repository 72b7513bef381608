"""TTS deployment: one engine per replica (GPU in production), chosen by ``engine``."""

from __future__ import annotations

import logging

from deployments.fleet import ReplicaIdentity, ReplicaReport
from pipeline.clip import AudioClip
from pipeline.engines.base import EngineInfo, SynthesisParams, TTSEngine, VoiceRef
from pipeline.engines.selection import build_tts_engine
from pipeline.settings import AppSettings

logger = logging.getLogger("ray.serve")


class TTS:
    def __init__(self, settings: dict) -> None:
        # A load failure raises here, so the replica fails to start and Serve reports the cause.
        self._engine: TTSEngine = build_tts_engine(AppSettings.model_validate(settings))
        self._replica = ReplicaIdentity.current()

    def info(self) -> EngineInfo:
        return self._engine.info

    def report(self) -> ReplicaReport:
        """This replica's engine, device and GPUs, for the ingress's view of the fleet."""
        return ReplicaReport(self._replica, self._engine.info)

    def synthesize(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip:
        return self._engine.synthesize(text, voice, params)
