"""Finished audio plus its encoded files: what one post-processing call returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.audio import encode_audio
from pipeline.clip import AudioClip
from pipeline.postprocess import PostProcessOptions, finish


@dataclass(frozen=True)
class RenderedAudio:
    """The encoded files, and the finished samples only where no file was asked for (a streamed
    chunk): a whole file's float32 samples would travel back to the ingress for nothing, a copy
    as large again as the longest answer (measured: 122 MB for 23 minutes of 22 kHz speech)."""

    clip: AudioClip | None
    files: dict[str, bytes]
    sample_rate: int
    duration_sec: float


def render(
    clips: Sequence[AudioClip],
    options: PostProcessOptions,
    formats: Sequence[str],
    on_encoded: Callable[[float], None] | None = None,
) -> RenderedAudio:
    """``on_encoded`` gets the seconds the encoding took, apart from finishing: operators ask
    which of the two is slow."""
    clip = finish(clips, options)
    started = time.perf_counter()
    files = {fmt: encode_audio(clip, fmt) for fmt in dict.fromkeys(formats)}
    if on_encoded is not None and files:
        on_encoded(time.perf_counter() - started)
    return RenderedAudio(
        clip=None if formats else clip,
        files=files,
        sample_rate=clip.sample_rate,
        duration_sec=clip.duration_sec,
    )
