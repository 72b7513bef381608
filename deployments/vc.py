"""VC deployment: one voice-conversion engine per replica (GPU in production), chosen by ``engine``."""

from __future__ import annotations

from dataclasses import replace

from deployments.fleet import ReplicaIdentity, ReplicaReport
from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, EngineInfo, VCEngine, VoiceRef
from pipeline.engines.selection import build_vc_engine
from pipeline.settings import AppSettings


class VC:
    def __init__(self, settings: dict) -> None:
        # A load failure raises here, so the replica fails to start and Serve reports the cause.
        self._engine: VCEngine = build_vc_engine(AppSettings.model_validate(settings))
        self._replica = ReplicaIdentity.current()

    def info(self) -> EngineInfo:
        return self._engine.info

    def report(self) -> ReplicaReport:
        """This replica's engine, device and GPUs, for the ingress's view of the fleet."""
        return ReplicaReport(self._replica, self._engine.info)

    def convert(self, source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip:
        converted = self._engine.convert(source, target, params)
        # Which replica converted each window: the per-window report shows how a request was spread.
        return replace(converted, metadata={**converted.metadata, "replica": self._replica.replica_id})
