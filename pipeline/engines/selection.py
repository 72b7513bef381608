"""``engine: auto | chatterbox | piper``: which TTS and VC engines a replica builds, said loudly."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipeline.engines.base import TTSEngine, VCEngine
from pipeline.errors import EngineUnavailable
from pipeline.settings import AppSettings

if TYPE_CHECKING:
    from pipeline.engines.chatterbox import ChatterboxSettings

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_SEC = 5.0


def build_tts_engine(settings: AppSettings) -> TTSEngine:
    """Chatterbox when asked for (failing loudly), or under ``auto`` when its weights can be had.

    ``auto`` tries, in order: a configured checkpoint dir, the Hugging Face cache, a download
    (if allowed), and falls back to the offline Piper voice with a warning naming the reason.
    """
    if settings.engine == "piper":
        return _piper(settings)
    try:
        return _chatterbox(settings)
    except EngineUnavailable as error:
        if settings.engine == "chatterbox":
            raise
        logger.warning(
            "engine=auto: Chatterbox unavailable (%s); serving the offline Piper voice instead", error
        )
        return _piper(settings)


def build_vc_engine(settings: AppSettings) -> VCEngine:
    """The VC engine, by build_tts_engine's rules; where Chatterbox cannot be had (``engine: piper``,
    or ``auto`` without weights) a stand-in that refuses conversions naming the reason.

    Only Chatterbox converts voices (S3Gen); the offline Piper path has no VC model.
    """
    from pipeline.engines.unavailable import NoVoiceConversion

    if settings.engine == "piper":
        reason = "engine is piper, and the offline Piper voice has no voice-conversion model"
        logger.warning("VC engine: none (%s)", reason)
        return NoVoiceConversion(reason)
    try:
        return _chatterbox_vc(settings)
    except EngineUnavailable as error:
        if settings.engine == "chatterbox":
            raise
        logger.warning("engine=auto: Chatterbox unavailable (%s); voice conversion is off", error)
        return NoVoiceConversion(f"Chatterbox is unavailable: {error.message}")


def _chatterbox(settings: AppSettings) -> TTSEngine:
    from pipeline.engines.chatterbox import ChatterboxEngine

    engine_settings = _chatterbox_settings(settings, cpu_threads=settings.tts.threads())
    engine = ChatterboxEngine.load(engine_settings)
    logger.warning("TTS engine: Chatterbox %s on %s", engine.info.model, engine.info.device)
    return engine


def _chatterbox_vc(settings: AppSettings) -> VCEngine:
    from pipeline.engines.chatterbox_vc import ChatterboxVCEngine

    engine = ChatterboxVCEngine.load(_chatterbox_settings(settings, cpu_threads=settings.vc.threads()))
    logger.warning("VC engine: Chatterbox S3Gen %s on %s", engine.info.model, engine.info.device)
    return engine


def _chatterbox_settings(settings: AppSettings, cpu_threads: int) -> ChatterboxSettings:
    """The engine settings, once it is clear the weights can be had (else EngineUnavailable)."""
    from pipeline.engines.chatterbox import ChatterboxSettings, chatterbox_weights_available

    config = settings.chatterbox
    engine_settings = ChatterboxSettings(
        checkpoint_dir=config.checkpoint_dir,
        hf_repo=config.hf_repo,
        dtype=config.dtype,
        cpu_threads=cpu_threads,
        conditioning_cache_size=config.conditioning_cache_size,
        max_new_tokens_cap=config.max_new_tokens,
        speech_tokens_per_char=config.speech_tokens_per_char,
        max_batch_size=config.batching.max_batch_size,
        max_batch_tokens=config.batching.max_batch_tokens,
        row_multiple=config.row_multiple,
        incremental_audio=config.incremental_audio,
        stream_first_block_tokens=config.stream_first_block_tokens,
        stream_block_tokens=config.stream_block_tokens,
    )
    # Only the hub path can download; a configured checkpoint_dir fails in load() naming what is missing.
    if config.checkpoint_dir is None and chatterbox_weights_available(engine_settings) is None:
        if not config.download:
            raise EngineUnavailable(
                f"{config.hf_repo} is not in the Hugging Face cache and chatterbox.download is off"
            )
        if settings.engine == "auto":
            _probe_hub(config.hf_repo)
    return engine_settings


def _piper(settings: AppSettings) -> TTSEngine:
    from pipeline.engines.piper import PiperEngine, PiperSettings

    engine = PiperEngine(
        PiperSettings(model_path=settings.piper.model_path, cpu_threads=settings.tts.threads())
    )
    logger.warning(
        "TTS engine: Piper voice %s on %s (offline engine, no voice cloning)",
        engine.info.model,
        engine.info.device,
    )
    return engine


def _probe_hub(repo: str) -> None:
    """One quick look at the hub before downloading: offline, hf_hub_download retries for ~25 s a file."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo, timeout=HUB_PROBE_TIMEOUT_SEC)
    except Exception as error:
        raise EngineUnavailable(
            f"Chatterbox weights are not cached and the hub is unreachable ({error})"
        ) from error
