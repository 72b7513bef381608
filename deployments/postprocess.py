"""PostProcess deployment: join, trim, speed, loudness and encoding, off the ingress's event loop."""

from __future__ import annotations

from pipeline.clip import AudioClip
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import RenderedAudio, render


class PostProcess:
    def render(
        self, clips: list[AudioClip], options: PostProcessOptions, formats: tuple[str, ...]
    ) -> RenderedAudio:
        return render(clips, options, formats)
