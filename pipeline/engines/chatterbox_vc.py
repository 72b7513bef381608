"""The Chatterbox voice-conversion engine: upstream's S3Gen, safe for concurrent requests.

Upstream's ``ChatterboxVC.generate`` stores the target voice on the shared model
(``set_target_voice`` overwrites ``self.ref_dict``, so concurrent requests convert into each
other's voices), samples from torch's global RNG and always watermarks. This engine keeps S3Gen
read-only: each request gets its target's speaker prompt (cached per voice), its own
``torch.Generator``, the watermark only when asked, and exactly as many samples as its input
lasts, so windows of a long input join back to the input's length.

Conversion is upstream's: source at 16 kHz -> S3Gen's speech tokenizer (25 tokens/s) -> S3Gen's
flow matching and vocoder, prompted by the target's ``embed_ref`` (its first 10 s at 24 kHz).

Importing this module is cheap; torch and chatterbox (~18 s) load in :meth:`ChatterboxVCEngine.load`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.clip import AudioClip
from pipeline.conversion import fit_length
from pipeline.engines.base import ConversionParams, EngineInfo, VoiceRef
from pipeline.engines.chatterbox import (
    SAMPLE_RATE,
    ChatterboxSettings,
    apply_watermark,
    check_reference,
    load_watermarker,
    prepare_torch,
)
from pipeline.engines.chatterbox_cache import ConditioningCache
from pipeline.engines.chatterbox_loading import resolve_checkpoint
from pipeline.errors import EngineUnavailable, InvalidRequest, UnsupportedCapability

logger = logging.getLogger(__name__)

# S3Gen renders 2 mel frames of 480 samples per 25 Hz speech token.
SAMPLES_PER_SPEECH_TOKEN = 960
# Measured on chatterbox-tts 0.1.7: the speech tokenizer's STFT fails on fewer than 201 samples at
# 16 kHz (12.5 ms), and S3Gen fails on a single token (its 40 ms fade-in is longer than the
# output). 0.1 s always yields at least 2 tokens.
MIN_SOURCE_SEC = 0.1

TARGET_PARAM = "target_voice_source"
SOURCE_PARAM = "input_audio"

S3GenReference = Mapping[str, Any]  # embed_ref's dict: prompt tokens, prompt mels, speaker x-vector


class ChatterboxVCEngine:
    """Thread-safe: S3Gen is only read after loading; the target cache has its own lock.

    Build it with :meth:`load`.
    """

    def __init__(
        self,
        s3gen: Any,
        device: Any,
        builtin_reference: S3GenReference | None,
        settings: ChatterboxSettings,
        watermarker: Any | None,
        info: EngineInfo,
    ) -> None:
        self._s3gen = s3gen
        self._device = device
        self._builtin_reference = builtin_reference
        self._watermarker = watermarker
        self._targets: ConditioningCache[S3GenReference] = ConditioningCache(settings.conditioning_cache_size)
        self.info = info

    @property
    def s3gen(self) -> Any:
        """Upstream's S3Gen module; read-only after loading (tools and tests use it)."""
        return self._s3gen

    @classmethod
    def load(cls, settings: ChatterboxSettings) -> ChatterboxVCEngine:
        """Find or fetch the weights (TTS's checkpoint) and build S3Gen; failures are EngineUnavailable."""
        started = time.perf_counter()
        directory = resolve_checkpoint(settings.checkpoint_dir, settings.hf_repo)
        try:
            import torch

            # Placed before chatterbox is imported: its imports may already ask torch about CUDA.
            placement = prepare_torch(settings)
            device = torch.device(placement.device)
            from pipeline.engines.chatterbox_model import load_builtin_voice, load_s3gen

            if settings.dtype != "float32":
                logger.warning("dtype %s applies to T3 only; VC runs S3Gen in float32", settings.dtype)
            s3gen = load_s3gen(directory, device)
            builtin_voice = load_builtin_voice(directory, device, torch.float32)
        except EngineUnavailable:
            raise
        except Exception as error:
            raise EngineUnavailable(f"could not load Chatterbox VC from {directory}: {error}") from error
        builtin_reference = None
        if builtin_voice is not None:
            builtin_reference = align_reference(builtin_voice.s3gen_reference, s3gen.flow.token_mel_ratio)
        watermarker, watermark_problem = load_watermarker()
        if watermark_problem:
            logger.warning("Chatterbox VC: watermarking unavailable: %s", watermark_problem)
        info = EngineInfo(
            name="chatterbox",
            model=settings.checkpoint_dir or settings.hf_repo,
            device=str(device),
            sample_rate=SAMPLE_RATE,
            supports_cloning=True,
            details={
                "checkpoint": str(directory),
                "task": "voice_conversion",
                "s3gen_dtype": "float32",
                "builtin_voice": builtin_reference is not None,
                "watermark": watermark_problem or "perth",
                "conditioning_cache_size": settings.conditioning_cache_size,
                "min_source_sec": MIN_SOURCE_SEC,
                "gpu_memory_fraction": placement.gpu_memory_fraction,
                "seeded": True,
            },
        )
        logger.info(
            "Chatterbox VC loaded from %s on %s in %.1f s", directory, device, time.perf_counter() - started
        )
        return cls(s3gen, device, builtin_reference, settings, watermarker, info)

    def convert(self, source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip:
        import librosa
        import torch
        from chatterbox.models.s3tokenizer import S3_SR

        from pipeline.engines.chatterbox_decoding import render_waveform

        if source.duration_sec < MIN_SOURCE_SEC:
            raise InvalidRequest(
                f"the audio to convert is {source.duration_sec:.3f} s long; voice conversion needs "
                f"at least {MIN_SOURCE_SEC:g} s",
                param=SOURCE_PARAM,
            )
        if not params.disable_watermark and self._watermarker is None:
            raise UnsupportedCapability(
                f"watermarking is unavailable on this server ({self.info.details['watermark']})",
                param="disable_watermark",
            )
        output_samples = round(source.duration_sec * SAMPLE_RATE)
        started = time.perf_counter()
        reference, cache_hit = self._reference(target)
        conditioned = time.perf_counter()
        # librosa.load(audio, sr=S3_SR) in upstream resamples with librosa's default (soxr_hq).
        source_16k = source.samples
        if source.sample_rate != S3_SR:
            source_16k = librosa.resample(source.samples, orig_sr=source.sample_rate, target_sr=S3_SR)
        with torch.inference_mode():
            speech_tokens, _ = self._s3gen.tokenizer([torch.from_numpy(np.ascontiguousarray(source_16k))])
        tokenized = time.perf_counter()
        generator = torch.Generator(device=self._device).manual_seed(params.seed)
        samples = render_waveform(self._s3gen, speech_tokens.to(self._device), reference, generator)
        # The tokenizer rounds the source to whole 40 ms tokens; the padding or cut is at the end only.
        samples = fit_length(samples, output_samples)
        if not params.disable_watermark:
            samples = fit_length(apply_watermark(self._watermarker, samples, SAMPLE_RATE), output_samples)
        finished = time.perf_counter()
        return AudioClip(
            samples,
            SAMPLE_RATE,
            metadata={
                "seed": params.seed,
                "speech_tokens": speech_tokens.size(1),
                "conditioning_cache_hit": cache_hit,
                "watermarked": not params.disable_watermark,
                "conditioning_sec": conditioned - started,
                "tokenize_sec": tokenized - conditioned,
                "rendering_sec": finished - tokenized,
            },
        )

    def _reference(self, target: VoiceRef | None) -> tuple[S3GenReference, bool]:
        """The target's S3Gen prompt and whether this call was spared computing it (the built-in
        voice always is: conds.pt holds it ready)."""
        if target is None:
            if self._builtin_reference is None:
                raise InvalidRequest(
                    f"this Chatterbox checkpoint has no built-in voice ({self.info.details['checkpoint']} "
                    "has no conds.pt): give a target voice",
                    param=TARGET_PARAM,
                )
            return self._builtin_reference, True
        return self._targets.get_or_compute(target.sha256, lambda: self._embed(target))

    def _embed(self, target: VoiceRef) -> S3GenReference:
        """Upstream ``set_target_voice``: the target at 24 kHz, its first 10 s, through ``embed_ref``."""
        from pipeline.engines.chatterbox_model import embed_s3gen_reference, reference_at_24k

        check_reference(target, param=TARGET_PARAM)
        reference_24k = reference_at_24k(target.audio.samples, target.audio.sample_rate)
        reference = embed_s3gen_reference(self._s3gen, reference_24k, self._device)
        return align_reference(reference, self._s3gen.flow.token_mel_ratio)


def align_reference(reference: S3GenReference, token_mel_ratio: int) -> S3GenReference:
    """The speaker prompt with exactly ``token_mel_ratio`` mel frames per prompt token.

    Upstream quirk: ``embed_ref`` keeps one mel frame more than its prompt tokens cover whenever the
    reference's mel length is odd; the flow then takes that frame for the first frame of the new
    speech and drops it, so the output is one frame (20 ms) short and leads the source by 20 ms.
    Cutting the prompt's spare frame keeps the output in step with the source, 960 samples a token.
    """
    prompt_frames = token_mel_ratio * reference["prompt_token"].size(-1)
    if reference["prompt_feat"].size(1) <= prompt_frames:
        return reference
    return {**reference, "prompt_feat": reference["prompt_feat"][:, :prompt_frames]}
