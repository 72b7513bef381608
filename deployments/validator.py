"""Validator deployment: Whisper transcripts of generated chunks."""

from __future__ import annotations

from deployments.fleet import ReplicaIdentity, ReplicaReport
from pipeline.clip import AudioClip
from pipeline.engines.base import EngineInfo
from pipeline.engines.whisper import WHISPER_SAMPLE_RATE, WhisperTranscriber
from pipeline.settings import AppSettings


class Validator:
    def __init__(self, settings: dict) -> None:
        app_settings = AppSettings.model_validate(settings)
        whisper = app_settings.whisper
        self._transcriber = WhisperTranscriber(
            model=whisper.model,
            compute_type=whisper.compute_type,
            cpu_threads=app_settings.validator.threads(),
            beam_size=whisper.beam_size,
        )
        # Described like the other stages' engines, so /api/v1/health reports every stage alike.
        self._info = EngineInfo(
            name="whisper",
            model=self._transcriber.model_name,
            device=self._transcriber.device,
            sample_rate=WHISPER_SAMPLE_RATE,
            supports_cloning=False,
            details={"compute_type": self._transcriber.compute_type},
        )
        self._replica = ReplicaIdentity.current()

    def info(self) -> EngineInfo:
        return self._info

    def report(self) -> ReplicaReport:
        """This replica's model, device and GPUs, for the ingress's view of the fleet."""
        return ReplicaReport(self._replica, self._info)

    def transcribe(self, audio: AudioClip) -> str:
        return self._transcriber.transcribe(audio)
