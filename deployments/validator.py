"""Validator deployment: Whisper transcripts of generated chunks."""

from __future__ import annotations

from pipeline.clip import AudioClip
from pipeline.engines.whisper import WhisperTranscriber
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

    def info(self) -> dict[str, str]:
        return {"model": self._transcriber.model_name, "device": self._transcriber.device}

    def transcribe(self, audio: AudioClip) -> str:
        return self._transcriber.transcribe(audio)
