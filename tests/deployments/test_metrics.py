"""What each request, stage call, error and admission change adds to the exported metrics.

Ray's metric classes are replaced by recorders here; tests/integration/test_metrics_http.py
scrapes the real ones from Ray's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import ClassVar

import numpy as np
import pytest

from deployments import metrics
from deployments.metrics import SpeechMetrics
from deployments.postprocess import PostProcess
from pipeline.admission import AdmissionGate
from pipeline.clip import AudioClip
from pipeline.graph import ChunkOutcome
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import render
from pipeline.validation import CandidateResult

CLIP = AudioClip(np.zeros(24_000, dtype=np.float32), 24_000)


class Recorded:
    """Every value given to a metric of a name, with its tags: inc, set and observe alike."""

    values: ClassVar[dict[str, list[tuple[float, dict[str, str]]]]] = defaultdict(list)

    def __init__(self, name: str, description: str = "", boundaries=None, tag_keys=None) -> None:
        self.name = name
        self.boundaries = boundaries

    def _record(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.values[self.name].append((value, tags or {}))

    inc = set = observe = _record


@pytest.fixture(autouse=True)
def recorded(monkeypatch) -> dict[str, list[tuple[float, dict[str, str]]]]:
    Recorded.values = defaultdict(list)
    for kind in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(metrics, kind, Recorded)
    metrics._errors.cache_clear()
    yield Recorded.values
    metrics._errors.cache_clear()


def outcome(index: int, attempts: int, score: float | None, passed: bool = True) -> ChunkOutcome:
    chosen = CandidateResult(CLIP, 1, 0, 0, None if score is None else "text", score, None)
    return ChunkOutcome(index, "text", chosen, passed, attempts=attempts, fallback=None)


def values(recorded, name: str) -> list[float]:
    return [value for value, _ in recorded[name]]


def test_a_request_records_candidates_and_retry_rounds_per_chunk_and_chosen_scores(recorded):
    chunks = [outcome(0, 2, 0.97), outcome(1, 6, 0.5, passed=False), outcome(2, 4, 0.9)]
    SpeechMetrics().record(
        "native", "chatterbox", chunks, 4.0, processing_sec=2.0, latency_sec=3.0, candidates_per_round=2
    )
    assert values(recorded, "tts_chunk_candidates") == [2, 6, 4]
    assert values(recorded, "tts_chunk_retries") == [0, 2, 1], "rounds of 2 candidates beyond the first"
    assert values(recorded, "tts_validation_score") == [0.97, 0.5, 0.9]
    assert values(recorded, "tts_chunks_failed_validation") == [1]
    assert values(recorded, "tts_request_latency_seconds") == [3.0]
    assert values(recorded, "tts_real_time_factor") == [0.5]
    assert {tags["endpoint"] for _, tags in recorded["tts_chunk_candidates"]} == {"native"}


def test_an_unvalidated_request_records_no_scores_and_silence_no_real_time_factor(recorded):
    SpeechMetrics().record(
        "openai",
        "piper",
        [outcome(0, 1, None)],
        0.0,
        processing_sec=0.1,
        latency_sec=0.2,
        candidates_per_round=1,
    )
    assert values(recorded, "tts_validation_score") == []
    assert values(recorded, "tts_real_time_factor") == []
    assert values(recorded, "tts_chunk_retries") == [0]


def test_stage_calls_are_tagged_by_stage_and_encoding_apart(recorded):
    speech = SpeechMetrics()
    for method in ("split", "synthesize", "synthesize_stream", "transcribe", "render", "convert"):
        speech.record_stage(method, 0.5)
    speech.record_encode(0.25)
    stages = [tags["stage"] for _, tags in recorded["tts_stage_latency_seconds"]]
    assert stages == ["chunk", "synthesize", "synthesize", "validate", "post-process", "convert", "encode"]


def test_admission_gauges_follow_the_gate_as_requests_wait_run_and_finish(recorded):
    speech = SpeechMetrics()
    gate = AdmissionGate(1, 2, 1, on_change=lambda: speech.record_admission(gate.snapshot()))

    def gauges() -> tuple[float, float]:
        return recorded["tts_admission_active"][-1][0], recorded["tts_admission_waiting"][-1][0]

    async def scenario() -> list[tuple[float, float]]:
        seen = []
        release = asyncio.Event()

        async def request() -> None:
            async with gate.admit():
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(2)]
        await asyncio.sleep(0.01)
        seen.append(gauges())
        release.set()
        await asyncio.gather(*tasks)
        seen.append(gauges())
        return seen

    assert asyncio.run(scenario()) == [(1, 1), (0, 0)]
    assert values(recorded, "tts_admission_max_active")[-1] == 1
    assert values(recorded, "tts_admission_max_waiting")[-1] == 2


def test_errors_are_counted_by_route_method_status_and_code(recorded):
    metrics.record_error("/api/v1/tts", "POST", 422, "VALIDATION_ERROR")
    metrics.record_error("/api/v1/tts", "POST", 422, "VALIDATION_ERROR")
    assert (
        recorded["tts_errors"]
        == [(1.0, {"route": "/api/v1/tts", "method": "POST", "status": "422", "code": "VALIDATION_ERROR"})]
        * 2
    )


def test_post_processing_renders_as_before_and_times_its_encoding_once(recorded):
    clips, options = [CLIP, CLIP], PostProcessOptions()
    rendered = PostProcess().render(clips, options, ("wav", "flac", "wav"))
    assert rendered == render(clips, options, ("wav", "flac", "wav"))
    assert [tags["stage"] for _, tags in recorded["tts_stage_latency_seconds"]] == ["encode"]
    unencoded = PostProcess().render(clips, options, ())
    assert unencoded.files == {}
    assert np.array_equal(unencoded.clip.samples, render(clips, options, ()).clip.samples)
    assert len(recorded["tts_stage_latency_seconds"]) == 1, "nothing encoded, nothing timed"


def test_histograms_of_one_name_are_made_alike_wherever_they_are_recorded():
    """The ingress and the post-processing replicas both record tts_stage_latency_seconds."""
    assert metrics.StageLatency()._histogram.boundaries == PostProcess()._stages._histogram.boundaries
