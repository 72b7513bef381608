"""The service's own Prometheus metrics (beside Serve's ray_serve_*), recorded by the ingress
(requests, stage calls, errors, admission), the post-processing replicas (encoding) and the TTS
replicas (the T3 batch).

Exported by Ray's metrics agent as ``ray_tts_*`` with the deployment, replica and our tags.
Metrics of one name are made by one class or function here, whichever process records them:
series of one name merge only when their tag keys and buckets agree. Ray (2.60) rebuilds a
histogram's ``_sum`` from its buckets' midpoints, so read the buckets (``histogram_quantile``)
for anything finer than a bucket.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from ray.serve.metrics import Counter, Gauge, Histogram

from pipeline.graph import ChunkOutcome

TAGS = ("endpoint", "engine")

# From a Piper chunk (tens of ms) to a long Chatterbox request on CPU (minutes).
SECONDS_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600]
# Seconds of work per second of audio: below 1 is faster than real time.
RTF_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 25, 100]
# Whisper scores; 0.85 is the default pass threshold (pipeline/validation.py).
SCORE_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0]
# Counts per chunk, each small count in a bucket of its own. Ray (2.60) exports a histogram's
# _sum as its buckets' midpoints times their counts, so buckets centred on the integers keep the
# sum exact up to 6; Ray takes positive boundaries only, so 0 lands in (0, 0.5] and counts 0.25.
COUNT_BOUNDARIES = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 8.5, 12.5, 16.5, 24.5, 32.5]

# The stage tag of each stage method the ingress calls (deployments/calls.py), and of encoding.
STAGES = {
    "split": "chunk",
    "synthesize": "synthesize",
    "synthesize_stream": "synthesize",
    "transcribe": "validate",
    "render": "post-process",
    "convert": "convert",
}
ENCODE_STAGE = "encode"


class StageLatency:
    """``tts_stage_latency_seconds{stage}``: one observation per stage call that returned.

    The ingress times its calls (``post-process`` includes encoding and the trip back);
    post-processing replicas and the ingress's stream encoder time ``encode`` alone.
    """

    def __init__(self) -> None:
        self._histogram = Histogram(
            "tts_stage_latency_seconds",
            description="Seconds per stage call: chunk, synthesize, validate, post-process, encode, convert.",
            boundaries=SECONDS_BOUNDARIES,
            tag_keys=("stage",),
        )

    def observe(self, stage: str, seconds: float) -> None:
        self._histogram.observe(seconds, tags={"stage": stage})


class Stopwatch:
    """Seconds spent inside its ``with`` blocks, summed: encoding a stream happens a block at a
    time, between the waits for the next block, which must not count."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __enter__(self) -> Stopwatch:
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.perf_counter() - self._began


class SpeechMetrics:
    """What operators ask first: how much speech, how fast, how many retries, how often
    validation fails, how full the admission queue is."""

    ADMISSION_GAUGES: ClassVar[dict[str, str]] = {
        "active": "Synthesis requests running on this ingress replica.",
        "waiting": "Synthesis requests waiting for a slot on this ingress replica.",
        "max_active": "Synthesis requests one ingress replica runs at once (admission limit).",
        "max_waiting": "Synthesis requests one ingress replica holds waiting (admission limit).",
    }

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
        self._chunk_candidates = Histogram(
            "tts_chunk_candidates",
            description="Candidates generated per chunk, retry rounds included.",
            boundaries=COUNT_BOUNDARIES,
            tag_keys=TAGS,
        )
        self._chunk_retries = Histogram(
            "tts_chunk_retries",
            description="Candidate rounds per chunk beyond the first (each ran because none before passed).",
            boundaries=COUNT_BOUNDARIES,
            tag_keys=TAGS,
        )
        self._scores = Histogram(
            "tts_validation_score",
            description="Whisper validation score of each chunk's chosen candidate (validated requests).",
            boundaries=SCORE_BOUNDARIES,
            tag_keys=TAGS,
        )
        self._latency = Histogram(
            "tts_request_latency_seconds",
            description="Seconds from a request's arrival to its audio being ready (a stream: its end).",
            boundaries=SECONDS_BOUNDARIES,
            tag_keys=TAGS,
        )
        self._rtf = Histogram(
            "tts_real_time_factor",
            description="Processing seconds per second of audio returned (admission wait excluded).",
            boundaries=RTF_BOUNDARIES,
            tag_keys=TAGS,
        )
        self._stages = StageLatency()
        self._admission = {
            name: Gauge(f"tts_admission_{name}", description=text)
            for name, text in self.ADMISSION_GAUGES.items()
        }

    def record(
        self,
        endpoint: str,
        engine: str,
        chunks: Sequence[ChunkOutcome],
        audio_sec: float,
        *,
        processing_sec: float,
        latency_sec: float,
        candidates_per_round: int,
    ) -> None:
        """One answered request: its chunks, the candidates they took, the audio returned, its times.

        Every round of a chunk generates ``candidates_per_round`` candidates, so the rounds a
        chunk took are its candidates over that.
        """
        tags = {"endpoint": endpoint, "engine": engine}
        self._answered(tags, audio_sec, processing_sec, latency_sec)
        self._chunks.inc(len(chunks), tags=tags)
        self._candidates.inc(sum(chunk.attempts for chunk in chunks), tags=tags)
        failed = sum(not chunk.passed for chunk in chunks)
        if failed:
            self._failed.inc(failed, tags=tags)
        for chunk in chunks:
            self._chunk_candidates.observe(chunk.attempts, tags=tags)
            self._chunk_retries.observe(math.ceil(chunk.attempts / candidates_per_round) - 1, tags=tags)
            if chunk.chosen.score is not None:
                self._scores.observe(chunk.chosen.score, tags=tags)

    def record_conversion(
        self, engine: str, windows: int, audio_sec: float, *, processing_sec: float, latency_sec: float
    ) -> None:
        """One answered voice conversion (endpoint "vc"): its windows, the audio returned, its times."""
        tags = {"endpoint": "vc", "engine": engine}
        self._answered(tags, audio_sec, processing_sec, latency_sec)
        self._vc_windows.inc(windows, tags=tags)

    def _answered(
        self, tags: dict[str, str], audio_sec: float, processing_sec: float, latency_sec: float
    ) -> None:
        """What every answered request records, whatever its endpoint: count, audio, times."""
        self._requests.inc(tags=tags)
        self._audio_seconds.inc(audio_sec, tags=tags)
        self._latency.observe(latency_sec, tags=tags)
        if audio_sec > 0:
            self._rtf.observe(processing_sec / audio_sec, tags=tags)

    def record_retry(self, stage: str, cause: str) -> None:
        self._stage_retries.inc(tags={"stage": stage, "cause": cause})

    def record_stage(self, method: str, seconds: float) -> None:
        """A stage call that returned, by the method called (deployments/calls.py)."""
        self._stages.observe(STAGES.get(method, method), seconds)

    def record_encode(self, seconds: float) -> None:
        """Encoding done in the ingress: a stream's blocks, summed over the stream."""
        self._stages.observe(ENCODE_STAGE, seconds)

    def record_admission(self, snapshot: Mapping[str, int]) -> None:
        """The admission gate's state (pipeline/admission.py), each time it changes."""
        for name, gauge in self._admission.items():
            gauge.set(snapshot[name])


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


def record_error(route: str, method: str, status: int, code: str) -> None:
    """One error response (deployments/http_errors.py), by route template, status and error code."""
    _errors().inc(tags={"route": route, "method": method, "status": str(status), "code": code})


@functools.cache
def _errors() -> Counter:
    # Made on first use, inside the replica: the error handlers are installed at import, when
    # there is no replica context yet to give the deployment and replica tags.
    return Counter(
        "tts_errors",
        description="Error responses, by route, method, status and error code.",
        tag_keys=("route", "method", "status", "code"),
    )
