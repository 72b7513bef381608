"""PostProcess deployment: join, trim, speed, loudness and encoding, off the ingress's event loop."""

from __future__ import annotations

from functools import partial

from deployments.metrics import ENCODE_STAGE, StageLatency
from pipeline.clip import AudioClip
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import RenderedAudio, render


class PostProcess:
    """Encoding is timed here, apart from the finishing steps: the ingress only sees the whole
    call (its ``post-process`` stage)."""

    def __init__(self) -> None:
        self._stages = StageLatency()

    def render(
        self, clips: list[AudioClip], options: PostProcessOptions, formats: tuple[str, ...]
    ) -> RenderedAudio:
        return render(clips, options, formats, on_encoded=partial(self._stages.observe, ENCODE_STAGE))
