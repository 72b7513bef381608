"""Stand-ins for engines a server cannot offer, so a request for them gets a clear answer.

The offline Piper path has no voice-conversion model; the VC deployment then holds
:class:`NoVoiceConversion`, which says so in /api/v1/health (via ``info``) and answers every
conversion with a 4xx naming the missing capability instead of failing to start or returning
something that is not a conversion.
"""

from __future__ import annotations

from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, EngineInfo, VoiceRef
from pipeline.errors import UnsupportedCapability


class NoVoiceConversion:
    """A VCEngine that converts nothing: ``convert`` raises UnsupportedCapability with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.info = EngineInfo(
            name="none",
            model="none",
            device="none",
            sample_rate=24_000,
            supports_cloning=False,
            details={"reason": reason},
        )

    def convert(self, source: AudioClip, target: VoiceRef | None, params: ConversionParams) -> AudioClip:
        raise UnsupportedCapability(f"voice conversion is not available on this server: {self.reason}")
