"""The post-processing chain that turns a request's chunk clips into its one finished clip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pipeline.audio import (
    change_speed,
    cut_silences,
    join_clips,
    normalize_loudness,
    resample,
    trim_silence,
)
from pipeline.clip import AudioClip


@dataclass(frozen=True)
class PostProcessOptions:
    """What the request asks of post-processing; defaults leave the audio as synthesised."""

    crossfade_ms: float = 20.0
    cut_silences: bool = False
    silence_threshold: float = 0.06
    silence_margin_sec: float = 0.2
    trim: bool = False
    trim_threshold_ms: int = 200
    speed_factor: float = 1.0
    normalize_audio: bool = False
    normalize_method: Literal["ebu", "peak"] = "ebu"
    normalize_level: float = -24.0
    normalize_tp: float = -2.0
    output_sample_rate: int | None = None


def finish(clips: Sequence[AudioClip], options: PostProcessOptions) -> AudioClip:
    """join (crossfade) -> cut pauses -> trim -> speed -> loudness -> resample.

    Trim runs before the speed change so ``trim_threshold_ms`` means silence as synthesised;
    loudness comes after both because each changes what is measured; resampling is last so every
    step works at the engine's native rate.
    """
    clip = join_clips(clips, crossfade_ms=options.crossfade_ms)
    if options.cut_silences:
        clip = cut_silences(clip, threshold=options.silence_threshold, margin_sec=options.silence_margin_sec)
    if options.trim:
        clip = trim_silence(clip, threshold_ms=options.trim_threshold_ms)
    clip = change_speed(clip, options.speed_factor)
    if options.normalize_audio:
        clip = normalize_loudness(
            clip,
            options.normalize_method,
            level_lufs=options.normalize_level,
            true_peak_db=options.normalize_tp,
        )
    if options.output_sample_rate:
        clip = resample(clip, options.output_sample_rate)
    return clip
