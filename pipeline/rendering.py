"""Finished audio plus its encoded files: what one post-processing call returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.audio import encode_audio
from pipeline.clip import AudioClip
from pipeline.postprocess import PostProcessOptions, finish


@dataclass(frozen=True)
class RenderedAudio:
    clip: AudioClip
    files: dict[str, bytes]


def render(clips: Sequence[AudioClip], options: PostProcessOptions, formats: Sequence[str]) -> RenderedAudio:
    clip = finish(clips, options)
    return RenderedAudio(clip=clip, files={fmt: encode_audio(clip, fmt) for fmt in dict.fromkeys(formats)})
