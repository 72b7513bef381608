"""The Chatterbox TTS engine: voice cloning on upstream's T3 + S3Gen, safe for concurrent requests.

Upstream's ``ChatterboxTTS.generate`` stores the request's voice on the shared model (concurrent
requests leak voices into each other), samples from torch's global RNG (a seed reproduces nothing
under concurrency), always watermarks and lets every chunk run to 1000 speech tokens (40 s). This
engine keeps the model read-only: each request gets its own conditioning (cached per voice), its
own generators, a token cap from its text length, and the watermark only when asked. T3 decodes
every request of the replica in one batch (pipeline.engines.t3_scheduler); S3Gen renders a chunk
whole, or in blocks while T3 samples it (:class:`IncrementalSynthesis`).

Importing this module is cheap; torch and chatterbox (~18 s) load in :meth:`ChatterboxEngine.load`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.clip import AudioClip
from pipeline.devices import DeviceView, Placement, place
from pipeline.engines.base import SAMPLING_FIELDS, EngineInfo, SynthesisParams, VoiceRef
from pipeline.engines.chatterbox_cache import ConditioningCache
from pipeline.engines.chatterbox_loading import find_checkpoint, resolve_checkpoint
from pipeline.engines.t3_scheduler import BatchLimits, DecodeJob, T3Scheduler
from pipeline.errors import EngineUnavailable, GenerationFailed, InvalidRequest, UnsupportedCapability

if TYPE_CHECKING:
    import torch

    from pipeline.engines.chatterbox_model import ChatterboxModel, SpeakerConditioning
    from pipeline.engines.t3_batching import SpeechTokens

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("float32", "float16", "bfloat16")

# T3 emits 25 speech tokens per second of audio. English read speech runs at about 15 characters
# (spaces and punctuation included) per second; 2.5 tokens per character leaves room for 10
# characters per second, i.e. slow, pause-rich speech, before the cap cuts a chunk short.
DEFAULT_SPEECH_TOKENS_PER_CHAR = 2.5
# Room for leading/trailing silence and for very short texts ("Hi."): one second of tokens.
SPEECH_TOKEN_MARGIN = 25

# The reference server gives the model min(exaggeration, 1.0); upstream would accept up to 2.
MAX_EXAGGERATION = 1.0

# Shorter references condition nothing useful (the voice encoder looks at 1.6 s windows); peaks
# below MIN_REFERENCE_PEAK are digital silence.
MIN_REFERENCE_SEC = 1.0
MIN_REFERENCE_PEAK = 1e-4


@dataclass(frozen=True)
class ChatterboxSettings:
    """How to load Chatterbox. ``checkpoint_dir`` None means ``hf_repo`` (HF cache first, then download).

    ``device`` applies outside Ray: auto picks CUDA, then MPS, then CPU, as torch sees them; in a
    Ray replica the GPUs Ray assigned decide (pipeline.devices), ``cpu`` still forcing CPU.
    ``dtype`` applies to T3 on CUDA; elsewhere it stays float32 (half precision on CPU is slower,
    and upstream runs S3Gen in float32 everywhere). ``cpu_threads`` sets torch's intra-op threads
    for the whole process.
    """

    checkpoint_dir: str | None = None
    hf_repo: str = "ResembleAI/chatterbox"
    device: str = "auto"
    dtype: str = "float32"
    cpu_threads: int | None = None
    conditioning_cache_size: int = 32
    max_new_tokens_cap: int = 1000
    speech_tokens_per_char: float = DEFAULT_SPEECH_TOKENS_PER_CHAR
    # T3's engine loop (pipeline.engines.t3_scheduler): requests and key/value positions decoded
    # at once; row_multiple pads the batch's rows so a seed gives the same tokens alone or batched.
    max_batch_size: int = 8
    max_batch_tokens: int = 16_384
    row_multiple: int = 4
    # Incremental audio (pipeline.engines.chatterbox_streaming): S3Gen renders after this many
    # speech tokens, then every block_tokens more (25 tokens = 1 s of speech). Each block re-runs
    # the flow over the prefix, so streaming a chunk costs more compute than rendering it whole.
    incremental_audio: bool = True
    stream_first_block_tokens: int = 20
    stream_block_tokens: int = 25

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES} or cuda:N; got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {self.dtype!r}")
        if self.max_new_tokens_cap < 1 or self.speech_tokens_per_char <= 0:
            raise ValueError("max_new_tokens_cap and speech_tokens_per_char must be positive")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be positive; got {self.cpu_threads}")
        if self.row_multiple < 1:
            raise ValueError(f"row_multiple must be positive; got {self.row_multiple}")
        BatchLimits(self.max_batch_size, self.max_batch_tokens)  # raises on non-positive limits


def chatterbox_weights_available(settings: ChatterboxSettings) -> str | None:
    """Where complete weights are without downloading (the local dir or the HF cache); else None."""
    found = find_checkpoint(settings.checkpoint_dir, settings.hf_repo)
    return str(found) if found is not None else None


def speech_token_cap(text: str, tokens_per_char: float, max_tokens: int) -> int:
    """How many speech tokens T3 may sample for ``text`` before it is cut off (it may stop sooner)."""
    return min(math.ceil(len(text) * tokens_per_char) + SPEECH_TOKEN_MARGIN, max_tokens)


@dataclass
class _Prepared:
    """A request checked and conditioned, with its T3 job ready to submit."""

    text: str
    job: DecodeJob
    s3gen_generator: torch.Generator
    conditioning: SpeakerConditioning
    cache_hit: bool
    exaggeration: float
    started: float
    conditioned: float


class ChatterboxEngine:
    """Thread-safe: the model is only read after loading, T3 runs in the replica's one engine loop
    (:class:`T3Scheduler`, batching every request's decode steps), S3Gen in the caller's thread.

    Build it with :meth:`load`.
    """

    def __init__(
        self,
        model: ChatterboxModel,
        settings: ChatterboxSettings,
        watermarker: Any | None,
        info: EngineInfo,
        scheduler: T3Scheduler,
    ) -> None:
        self._model = model
        self._settings = settings
        self._watermarker = watermarker
        self._conditionings: ConditioningCache[SpeakerConditioning] = ConditioningCache(
            settings.conditioning_cache_size
        )
        self._scheduler = scheduler
        self.info = info

    @property
    def model(self) -> ChatterboxModel:
        """The loaded upstream components; read-only after loading (tools and tests use them)."""
        return self._model

    @classmethod
    def load(cls, settings: ChatterboxSettings) -> ChatterboxEngine:
        """Find or fetch the weights and build the model; any failure is an EngineUnavailable."""
        started = time.perf_counter()
        directory = resolve_checkpoint(settings.checkpoint_dir, settings.hf_repo)
        try:
            import torch

            # Placed before chatterbox is imported: its imports may already ask torch about CUDA.
            placement = prepare_torch(settings)
            device = torch.device(placement.device)
            from pipeline.engines.chatterbox_model import ChatterboxModel
            from pipeline.engines.t3_batching import BatchedT3

            t3_dtype = getattr(torch, settings.dtype)
            if t3_dtype != torch.float32 and device.type != "cuda":
                logger.warning(
                    "dtype %s applies on CUDA only; T3 runs in float32 on %s", settings.dtype, device
                )
                t3_dtype = torch.float32
            model = ChatterboxModel.load(directory, device, t3_dtype)
        except EngineUnavailable:
            raise
        except Exception as error:
            raise EngineUnavailable(f"could not load Chatterbox from {directory}: {error}") from error
        # T3's speech position table ends at max_speech_tokens.
        settings = replace(
            settings, max_new_tokens_cap=min(settings.max_new_tokens_cap, model.t3.hp.max_speech_tokens)
        )
        watermarker, watermark_problem = load_watermarker()
        if watermark_problem:
            logger.warning("Chatterbox: watermarking unavailable: %s", watermark_problem)
        info = EngineInfo(
            name="chatterbox",
            model=settings.checkpoint_dir or settings.hf_repo,
            device=str(device),
            sample_rate=SAMPLE_RATE,
            supports_cloning=True,
            sampling_fields=SAMPLING_FIELDS,  # all reach T3's sampler (t3_batching.py) or its conditioning
            details={
                "checkpoint": str(directory),
                "t3_dtype": str(t3_dtype).removeprefix("torch."),
                "t3_layers": model.t3.cfg.num_hidden_layers,
                "builtin_voice": model.builtin_voice is not None,
                "watermark": watermark_problem or "perth",
                "max_new_tokens_cap": settings.max_new_tokens_cap,
                "conditioning_cache_size": settings.conditioning_cache_size,
                "gpu_memory_fraction": placement.gpu_memory_fraction,
                "seeded": True,
                "batched": True,
                "incremental": settings.incremental_audio,
            },
        )
        scheduler = T3Scheduler(
            BatchedT3(model.t3, settings.row_multiple),
            BatchLimits(settings.max_batch_size, settings.max_batch_tokens),
        )
        logger.info(
            "Chatterbox loaded from %s on %s in %.1f s", directory, device, time.perf_counter() - started
        )
        return cls(model, settings, watermarker, info, scheduler)

    @property
    def scheduler(self) -> T3Scheduler:
        """The replica's T3 engine loop (its limits change at runtime; its snapshot shows its state)."""
        return self._scheduler

    def synthesize(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip:
        prepared = self._prepare(text, voice, params)
        future = self._scheduler.submit(prepared.job)
        try:
            speech = future.result()
        except BaseException:
            future.cancel()  # an interrupted caller frees its rows at the loop's next step
            raise
        return self._render(prepared, speech)

    async def synthesize_async(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> AudioClip:
        """:meth:`synthesize` for an event loop: cancelling the awaiting task (a client gone, a
        sibling chunk failed) cancels the T3 job, which leaves the batch at the next decode step."""
        prepared = await asyncio.to_thread(self._prepare, text, voice, params)
        # wrap_future cancels the job's future when the awaiting task is cancelled.
        speech = await asyncio.wrap_future(self._scheduler.submit(prepared.job))
        return await asyncio.to_thread(self._render, prepared, speech)

    def synthesize_incrementally(
        self, text: str, voice: VoiceRef | None, params: SynthesisParams
    ) -> IncrementalSynthesis:
        """The chunk's audio in blocks as T3 samples it (:class:`IncrementalSynthesis`).

        Same checks, batch and seed as :meth:`synthesize`; the audio is S3Gen's block rendering
        (pipeline.engines.chatterbox_streaming), close to but not bit-equal to the whole render.
        """
        return IncrementalSynthesis(self, self._prepare(text, voice, params))

    def _prepare(self, text: str, voice: VoiceRef | None, params: SynthesisParams) -> _Prepared:
        """Every check before any model work, then the voice's conditioning and the T3 job."""
        import torch

        if not text.strip():
            raise InvalidRequest("the text to synthesise is empty", param="text")
        if not params.disable_watermark and self._watermarker is None:
            raise UnsupportedCapability(
                f"watermarking is unavailable on this server ({self.info.details['watermark']})",
                param="disable_watermark",
            )
        model = self._model
        text_tokens = model.text_tokens(text)
        if text_tokens.size(1) > model.t3.hp.max_text_tokens:
            raise InvalidRequest(
                f"the text chunk is {text_tokens.size(1)} tokens long; Chatterbox takes at most "
                f"{model.t3.hp.max_text_tokens}",
                param="text",
            )
        started = time.perf_counter()
        conditioning, cache_hit = self._conditioning(voice)
        token_cap = speech_token_cap(
            text, self._settings.speech_tokens_per_char, self._settings.max_new_tokens_cap
        )
        exaggeration = min(params.exaggeration, MAX_EXAGGERATION)

        # The request's own generators, one for T3 and one for S3Gen, both from its seed: the seed
        # alone decides the audio, whatever else runs in the process or shares the batch. Two, not
        # one drawn in turn, because incremental rendering draws S3Gen's noise while T3 samples.
        def seeded() -> torch.Generator:
            return torch.Generator(device=model.device).manual_seed(params.seed)

        job = DecodeJob(conditioning.for_request(exaggeration), text_tokens, params, token_cap, seeded())
        return _Prepared(
            text, job, seeded(), conditioning, cache_hit, exaggeration, started, time.perf_counter()
        )

    def _render(self, prepared: _Prepared, speech: SpeechTokens) -> AudioClip:
        from pipeline.engines.chatterbox_decoding import render_waveform

        sampled = time.perf_counter()
        self._check_spoken(prepared, speech)
        samples = render_waveform(
            self._model.s3gen, speech.tokens, prepared.conditioning.s3gen_reference, prepared.s3gen_generator
        )
        return self._describe(prepared, speech, samples, sampled)

    def _check_spoken(self, prepared: _Prepared, speech: SpeechTokens) -> None:
        if speech.tokens.size(1) == 0:
            raise GenerationFailed(
                f"Chatterbox produced no speech for {prepared.text[:60]!r} (seed {prepared.job.params.seed}: "
                f"{speech.sampled} tokens, stopped by {speech.stop_reason})"
            )

    def _describe(
        self, prepared: _Prepared, speech: SpeechTokens, samples: np.ndarray, sampled: float
    ) -> AudioClip:
        """The rendered samples, watermarked if asked, with the chunk's generation report."""
        job = prepared.job
        if not job.params.disable_watermark:
            samples = apply_watermark(self._watermarker, samples, SAMPLE_RATE)
        finished = time.perf_counter()
        return AudioClip(
            samples,
            SAMPLE_RATE,
            text=prepared.text,
            metadata={
                "seed": job.params.seed,
                "speech_tokens": speech.tokens.size(1),
                "sampled_speech_tokens": speech.sampled,
                "speech_token_cap": job.max_new_tokens,
                "stop_reason": speech.stop_reason,
                "t3_peak_batch": speech.peak_batch,
                "conditioning_cache_hit": prepared.cache_hit,
                "exaggeration": prepared.exaggeration,
                "watermarked": not job.params.disable_watermark,
                "conditioning_sec": prepared.conditioned - prepared.started,
                # From submission to the last token: queueing for the batch included.
                "sampling_sec": sampled - prepared.conditioned,
                "rendering_sec": finished - sampled,
            },
        )

    def _conditioning(self, voice: VoiceRef | None) -> tuple[SpeakerConditioning, bool]:
        """The voice's conditioning and whether this call was spared computing it (the built-in
        voice always is: conds.pt holds it ready)."""
        if voice is None:
            if self._model.builtin_voice is None:
                raise InvalidRequest(
                    f"this Chatterbox checkpoint has no built-in voice ({self.info.details['checkpoint']} "
                    "has no conds.pt): give a reference voice",
                    param="reference_audio_filename",
                )
            return self._model.builtin_voice, True
        return self._conditionings.get_or_compute(voice.sha256, lambda: self._condition(voice))

    def _condition(self, voice: VoiceRef) -> SpeakerConditioning:
        check_reference(voice, param="reference_audio_filename")
        return self._model.condition(voice.audio.samples, voice.audio.sample_rate)


class IncrementalSynthesis:
    """Iterate for AudioClip blocks (each float32 at 24 kHz; together the chunk); the last block's
    metadata is the whole chunk's, as :meth:`ChatterboxEngine.synthesize` reports it, with
    ``final_block`` true (false on the others: pipeline.graph.is_final_block).

    :meth:`cancel` may be called from any thread: the T3 job leaves the batch at its next step and
    iteration ends. Iterating also cancels it when stopped early (closed, or the caller failed).
    """

    # How long the renderer waits for a token before looking at the job again.
    POLL_SEC = 0.05

    def __init__(self, engine: ChatterboxEngine, prepared: _Prepared) -> None:
        self._engine = engine
        self._prepared = prepared
        self._tokens: queue.SimpleQueue[int] = queue.SimpleQueue()
        prepared.job.listener = self._tokens.put
        self._future = engine.scheduler.submit(prepared.job)

    def cancel(self) -> None:
        self._future.cancel()

    def __iter__(self) -> Iterator[AudioClip]:
        from pipeline.engines.chatterbox_streaming import StreamingRenderer

        engine, prepared, job = self._engine, self._prepared, self._prepared.job
        settings = engine._settings
        renderer = StreamingRenderer(
            engine.model.s3gen,
            prepared.conditioning.s3gen_reference,
            prepared.s3gen_generator,
            job.max_new_tokens,
            block_tokens=settings.stream_block_tokens,
            first_block_tokens=settings.stream_first_block_tokens,
        )
        first_audio_sec = None
        try:
            while not self._future.done():
                samples = renderer.feed(self._take(wait=True))
                if samples.size:
                    first_audio_sec = first_audio_sec or time.perf_counter() - prepared.conditioned
                    yield self._block(samples)
            speech = self._future.result()  # a cancelled or failed job raises here
            engine._check_spoken(prepared, speech)
            rest = renderer.finish(self._take(wait=False))
        finally:
            self._future.cancel()
        clip = engine._describe(prepared, speech, rest, time.perf_counter())
        clip.metadata.update(first_audio_sec=first_audio_sec, incremental=True, final_block=True)
        yield clip

    def _take(self, wait: bool) -> list[int]:
        """The tokens sampled since the last call (waiting briefly for one if ``wait``)."""
        tokens = []
        if wait:
            try:
                tokens.append(self._tokens.get(timeout=self.POLL_SEC))
            except queue.Empty:
                return tokens
        while True:
            try:
                tokens.append(self._tokens.get_nowait())
            except queue.Empty:
                return tokens

    def _block(self, samples: np.ndarray) -> AudioClip:
        params = self._prepared.job.params
        if not params.disable_watermark:
            samples = apply_watermark(self._engine._watermarker, samples, SAMPLE_RATE)
        metadata = {"seed": params.seed, "final_block": False}
        return AudioClip(samples, SAMPLE_RATE, text=self._prepared.text, metadata=metadata)


def check_reference(voice: VoiceRef, param: str) -> None:
    """InvalidRequest (naming ``param``) for a reference too short or too quiet to condition on."""
    audio = voice.audio
    if audio.duration_sec < MIN_REFERENCE_SEC:
        raise InvalidRequest(
            f"reference voice {voice.name!r} is {audio.duration_sec:.2f} s long; "
            f"voice cloning needs at least {MIN_REFERENCE_SEC:g} s of speech",
            param=param,
        )
    if float(np.max(np.abs(audio.samples))) < MIN_REFERENCE_PEAK:
        raise InvalidRequest(f"reference voice {voice.name!r} is silent", param=param)


def prepare_torch(settings: ChatterboxSettings) -> Placement:
    """Apply ``cpu_threads`` to torch, place the engine (pipeline.devices) and cap its GPU memory.

    Placement comes before anything asks torch about CUDA: a replica without GPUs hides them first.
    A replica holding part of a GPU (Ray's ``num_gpus: 0.5``) is capped at that share of the
    device's memory, because Ray's fractions reserve nothing: without the cap, two half-GPU replicas
    each grow torch's caching allocator until the other one runs out of memory. The cap covers
    torch's allocations only, not the CUDA context (a few hundred MB per process).
    """
    import torch

    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    placement = place(settings.device, TORCH_VIEW)
    if placement.gpu_memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(
            placement.gpu_memory_fraction, torch.device(placement.device)
        )
    return placement


def _torch_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _torch_mps() -> bool:
    import torch

    return torch.backends.mps.is_available()


TORCH_VIEW = DeviceView("torch", _torch_cuda_devices, _torch_mps)


def load_watermarker() -> tuple[Any | None, str | None]:
    """Perth's neural watermarker (what upstream applies), or why it cannot be had."""
    try:
        # Imported from its module, not as perth.PerthImplicitWatermarker: perth's __init__ swallows
        # the ImportError and leaves None there (resemble-perth 1.0.1 needs pkg_resources, i.e.
        # setuptools < 81), which would hide the cause.
        from perth.perth_net.perth_net_implicit.perth_watermarker import PerthImplicitWatermarker

        return PerthImplicitWatermarker(), None
    except Exception as error:
        return None, f"resemble-perth could not be loaded: {error}"


def apply_watermark(watermarker: Any, samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Perth's imperceptible watermark on float32 samples (the same length comes back)."""
    import torch

    # Perth runs its network with autograd on; nothing here needs gradients.
    with torch.inference_mode():
        marked = watermarker.apply_watermark(samples, sample_rate=sample_rate)
    return np.asarray(marked, dtype=np.float32)
