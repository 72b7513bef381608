"""VC deployment: one voice-conversion engine per replica (GPU in production), chosen by ``engine``."""

from __future__ import annotations

from dataclasses import replace

from ray import serve
from ray.serve.exceptions import RayServeException

from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, EngineInfo, VCEngine, VoiceRef
from pipeline.engines.selection import build_vc_engine
from pipeline.settings import AppSettings


class VC:
    def __init__(self, settings: dict) -> None:
        # A load failure raises here, so the replica fails to start and Serve reports the cause.
        self._engine: VCEngine = build_vc_engine(AppSettings.model_validate(settings))
        try:
            self._replica_id: str | None = serve.get_replica_context().replica_id.unique_id
        except RayServeException:  # built outside Serve (a script, a unit test)
            self._replica_id = None

    def info(self) -> EngineInfo:
        return self._engine.info

    def convert(self, source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip:
        converted = self._engine.convert(source, target, params)
        # Which replica converted each window: the per-window report shows how a request was spread.
        return replace(converted, metadata={**converted.metadata, "replica": self._replica_id})
