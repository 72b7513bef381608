"""The service's own Prometheus metrics (beside Serve's ray_serve_*), recorded by the ingress.

Exported by Ray's metrics agent as ``ray_tts_*`` with the deployment, replica and our tags.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.serve.metrics import Counter

from pipeline.graph import ChunkOutcome

TAGS = ("endpoint", "engine")


class SpeechMetrics:
    """What operators ask first: how much speech, how many retries, how often validation fails."""

    def __init__(self) -> None:
        self._requests = Counter("tts_requests", description="Speech requests answered.", tag_keys=TAGS)
        self._chunks = Counter("tts_chunks", description="Text chunks synthesised.", tag_keys=TAGS)
        self._failed = Counter(
            "tts_chunks_failed_validation",
            description="Chunks whose chosen candidate failed Whisper validation (a fallback was used).",
            tag_keys=TAGS,
        )
        self._candidates = Counter(
            "tts_candidates", description="Candidates generated, retries included.", tag_keys=TAGS
        )
        self._vc_windows = Counter(
            "tts_vc_windows", description="Voice-conversion windows converted.", tag_keys=TAGS
        )
        self._audio_seconds = Counter(
            "tts_audio_seconds", description="Seconds of audio returned.", tag_keys=TAGS
        )
        self._stage_retries = Counter(
            "tts_stage_retries",
            description="Stage calls sent again after their replica died (node_lost, replica_crashed).",
            tag_keys=("stage", "cause"),
        )

    def record(self, endpoint: str, engine: str, chunks: Sequence[ChunkOutcome], audio_sec: float) -> None:
        """One answered request: its chunks, the candidates they took, the audio returned."""
        tags = {"endpoint": endpoint, "engine": engine}
        self._requests.inc(tags=tags)
        self._chunks.inc(len(chunks), tags=tags)
        self._candidates.inc(sum(chunk.attempts for chunk in chunks), tags=tags)
        failed = sum(not chunk.passed for chunk in chunks)
        if failed:
            self._failed.inc(failed, tags=tags)
        self._audio_seconds.inc(audio_sec, tags=tags)

    def record_conversion(self, engine: str, windows: int, audio_sec: float) -> None:
        """One answered voice conversion (endpoint "vc"): its windows and the audio returned."""
        tags = {"endpoint": "vc", "engine": engine}
        self._requests.inc(tags=tags)
        self._vc_windows.inc(windows, tags=tags)
        self._audio_seconds.inc(audio_sec, tags=tags)

    def record_retry(self, stage: str, cause: str) -> None:
        self._stage_retries.inc(tags={"stage": stage, "cause": cause})
