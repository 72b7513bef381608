"""Where request audio comes from: ``reference_audio_filename``, OpenAI ``voice``, ``target_voice_source``
and ``input_audio_source`` name a library file or, where the operator enabled it, a URL.

The audio travels with the request as a ``VoiceRef`` (samples + content hash), so TTS and VC
replicas on other nodes need no shared filesystem and cache conditionings by content.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

from pipeline.clip import AudioClip
from pipeline.engines.base import VoiceRef
from pipeline.errors import InvalidRequest
from pipeline.library import AudioLibrary, validated_audio
from pipeline.url_sources import UrlFetcher, is_url


@dataclass(frozen=True)
class ResolvedVoice:
    voice: VoiceRef
    default_parameters: dict[str, Any] = field(default_factory=dict)


class AudioSources:
    """Blocking (disk, network, decoding): call it from a thread."""

    def __init__(self, voices: AudioLibrary, vc_inputs: AudioLibrary, fetcher: UrlFetcher) -> None:
        self.voices = voices
        self.vc_inputs = vc_inputs
        self._fetcher = fetcher

    def voice(self, reference: str, param: str) -> ResolvedVoice:
        """A voice and the generation defaults stored with it (none for URLs)."""
        if is_url(reference):
            clip, digest = self._download(reference, param, self.voices)
            return ResolvedVoice(VoiceRef(name=reference, sha256=digest, audio=clip))
        entry, clip, digest = self.voices.load(reference, param)
        self.voices.record_use(entry)
        return ResolvedVoice(
            VoiceRef(name=entry.filename, sha256=digest, audio=clip), dict(entry.metadata.default_parameters)
        )

    def vc_input(self, reference: str, param: str) -> AudioClip:
        if is_url(reference):
            return self._download(reference, param, self.vc_inputs)[0]
        return self.vc_inputs.load(reference, param)[1]

    def _download(self, url: str, param: str, library: AudioLibrary) -> tuple[AudioClip, str]:
        data = self._fetcher.fetch(url, param)
        try:
            clip = validated_audio(io.BytesIO(data), library.kind)
        except InvalidRequest as error:
            raise InvalidRequest(f"{url}: {error.message}", param=param) from error
        return clip, hashlib.sha256(data).hexdigest()
