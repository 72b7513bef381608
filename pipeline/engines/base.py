"""Protocols and value types shared by every engine.

Engines are plain classes: a Serve deployment builds one in ``__init__`` and forwards calls.
Nothing here imports torch, onnxruntime or chatterbox (``import chatterbox`` costs ~18 s).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.clip import AudioClip


@dataclass(frozen=True)
class VoiceRef:
    """Reference audio for cloning; travels with the request, so no shared filesystem is needed.

    ``sha256`` is the content hash of the original file bytes: engines key their speaker
    conditioning cache on it.
    """

    name: str
    sha256: str
    audio: AudioClip

    @classmethod
    def from_clip(cls, name: str, audio: AudioClip, file_bytes: bytes | None = None) -> VoiceRef:
        digest_source = file_bytes if file_bytes is not None else audio.samples.tobytes()
        return cls(name=name, sha256=hashlib.sha256(digest_source).hexdigest(), audio=audio)


@dataclass(frozen=True)
class SynthesisParams:
    """Per-call generation settings. ``seed`` is always concrete here (the graph resolves 0)."""

    seed: int
    exaggeration: float = 0.5
    cfg_weight: float = 1.0
    temperature: float = 0.75
    min_p: float = 0.05
    top_p: float = 1.0
    repetition_penalty: float = 1.2
    disable_watermark: bool = True


# The SynthesisParams fields that tune a sampler: a request may set them only where the engine has one.
SAMPLING_FIELDS = ("exaggeration", "cfg_weight", "temperature", "min_p", "top_p", "repetition_penalty")


@dataclass(frozen=True)
class ConversionParams:
    """Per-window voice-conversion settings. ``seed`` is concrete (the ingress resolves 0): it seeds
    S3Gen's flow-matching noise and vocoder excitation, so one seed reproduces the conversion."""

    seed: int
    disable_watermark: bool = True


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is and can do; shown in /api/v1/health and response headers."""

    name: str
    model: str
    device: str
    sample_rate: int
    supports_cloning: bool
    details: dict[str, object] = field(default_factory=dict)
    # The sampling fields of SynthesisParams this engine applies; a request setting another is
    # refused (Piper has no sampler: temperature there would be silently ignored).
    sampling_fields: tuple[str, ...] = ()


@runtime_checkable
class TTSEngine(Protocol):
    """Text to speech. Must be thread-safe: Serve runs a replica's sync methods in a thread pool."""

    info: EngineInfo

    def synthesize(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip: ...


@runtime_checkable
class VCEngine(Protocol):
    """Voice conversion: speech in, the same speech in the target voice out. Thread-safe like TTSEngine.

    ``convert`` returns the engine's rate (``info.sample_rate``) with exactly as many samples as
    ``source`` lasts at that rate, so windows of a long input join back to the input's length.
    ``target`` None means the engine's built-in voice.
    """

    info: EngineInfo

    def convert(self, source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip: ...


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text, used to validate generated chunks."""

    model_name: str

    def transcribe(self, audio: AudioClip) -> str: ...


def as_float32_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels (last axis or first, whichever is smaller) into float32 mono."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        return array
    channel_axis = 0 if array.shape[0] < array.shape[-1] else -1
    return array.mean(axis=channel_axis).astype(np.float32)
