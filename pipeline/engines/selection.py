"""``engine: auto | chatterbox | piper``: which TTS engine a replica builds, said loudly."""

from __future__ import annotations

import logging

from pipeline.engines.base import TTSEngine
from pipeline.errors import EngineUnavailable
from pipeline.settings import AppSettings

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


def _chatterbox(settings: AppSettings) -> TTSEngine:
    from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings, chatterbox_weights_available

    config = settings.chatterbox
    engine_settings = ChatterboxSettings(
        checkpoint_dir=config.checkpoint_dir,
        hf_repo=config.hf_repo,
        dtype=config.dtype,
        cpu_threads=settings.tts.threads(),
        conditioning_cache_size=config.conditioning_cache_size,
        max_new_tokens_cap=config.max_new_tokens,
        speech_tokens_per_char=config.speech_tokens_per_char,
    )
    # Only the hub path can download; a configured checkpoint_dir fails in load() naming what is missing.
    if config.checkpoint_dir is None and chatterbox_weights_available(engine_settings) is None:
        if not config.download:
            raise EngineUnavailable(
                f"{config.hf_repo} is not in the Hugging Face cache and chatterbox.download is off"
            )
        if settings.engine == "auto":
            _probe_hub(config.hf_repo)
    engine = ChatterboxEngine.load(engine_settings)
    logger.warning("TTS engine: Chatterbox %s on %s", engine.info.model, engine.info.device)
    return engine


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
