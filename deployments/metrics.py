"""The service's own Prometheus metrics (beside Serve's ray_serve_*), recorded by the ingress.

Exported by Ray's metrics agent as ``ray_tts_*`` with the deployment, replica and our tags.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from ray.serve.metrics import Counter, Gauge

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


class BatchMetrics:
    """A TTS replica's T3 engine loop: how full the batch is, and what left it how.

    Copied from the loop's own snapshot every period (counters as the deltas since the last copy),
    so the decode loop never waits on the metrics client.
    """

    GAUGES: ClassVar[dict[str, str]] = {
        "running_requests": "Chunks in the T3 batch now.",
        "queued_requests": "Chunks waiting to join the T3 batch.",
        "reserved_tokens": "Key/value positions the running chunks may hold (prompt + token cap).",
        "max_batch_size": "The batch size limit in force.",
    }
    COUNTERS: ClassVar[dict[str, str]] = {
        "finished_total": "Chunks whose speech tokens are done.",
        "cancelled_running_total": "Chunks dropped from the batch because their caller went away.",
        "cancelled_queued_total": "Chunks dropped before joining the batch because their caller went away.",
        "steps_total": "Batched decode steps.",
    }

    def __init__(self, engine: str) -> None:
        self._tags = {"engine": engine}
        self._gauges = {
            name: Gauge(f"tts_t3_{name}", description=text, tag_keys=("engine",))
            for name, text in self.GAUGES.items()
        }
        self._counters = {
            name: Counter(f"tts_t3_{name.removesuffix('_total')}", description=text, tag_keys=("engine",))
            for name, text in self.COUNTERS.items()
        }
        self._last: dict[str, int] = {}

    def publish(self, snapshot: Mapping[str, int]) -> None:
        for name, gauge in self._gauges.items():
            gauge.set(snapshot.get(name, 0), tags=self._tags)
        for name, counter in self._counters.items():
            delta = snapshot.get(name, 0) - self._last.get(name, 0)
            if delta > 0:
                counter.inc(delta, tags=self._tags)
            self._last[name] = snapshot.get(name, 0)

    def publish_forever(self, snapshot: Callable[[], Mapping[str, int]], period_sec: float) -> None:
        while True:
            try:
                self.publish(snapshot())
            except Exception:  # metrics must never take the replica down
                logging.getLogger("ray.serve").exception("publishing T3 batch metrics failed")
            time.sleep(period_sec)
