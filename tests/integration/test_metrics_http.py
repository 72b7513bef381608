"""The service's metrics as an operator scrapes them: Ray's Prometheus endpoint, after real requests
to the Piper app (Piper + Whisper tiny.en, from serve_config.yaml)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

APP = "chatterbox"  # the app's name in serve_config.yaml
SENTENCE = "The quick brown fox jumps over the lazy dog."
ONE_TRY = {"num_candidates_per_chunk": 1, "max_attempts_per_candidate": 1}
SCRAPE_DEADLINE_SEC = 30  # Ray's metrics agent exports every few seconds (here: within 10 s)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(port: int) -> list[Sample]:
    """The app's ``ray_tts_*`` samples, histograms as their _bucket, _count and _sum series."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [
        Sample(sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ray_tts_")
        for sample in family.samples
        if sample.labels.get("application") == APP
    ]


def scrape_until(port: int, missing: Callable[[list[Sample]], object]) -> list[Sample]:
    """Scrape until ``missing`` (what is not there yet) is empty; fail naming it at the deadline."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_SEC
    while True:
        samples = scrape(port)
        if not (absent := missing(samples)):
            return samples
        assert time.monotonic() < deadline, f"not exported after {SCRAPE_DEADLINE_SEC} s: {absent}"
        time.sleep(2)


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )


@pytest.fixture(scope="module")
def answered(client) -> None:
    """Validated native requests (files encoded by PostProcess), an OpenAI one (encoded as streamed
    by the ingress), and a request the schema refuses."""
    native = client.post(
        "/api/v1/tts",
        json={"text": SENTENCE, "export_formats": ["wav"], "bypass_whisper_checking": False, **ONE_TRY},
    )
    assert native.status_code == 200, native.text
    # No candidate can pass a threshold above 1: the chunk takes both rounds (one retry).
    retried = client.post(
        "/api/v1/tts",
        json={
            "text": SENTENCE,
            "export_formats": ["wav"],
            "validation_threshold": 1.01,
            "num_candidates_per_chunk": 1,
            "max_attempts_per_candidate": 2,
        },
    )
    assert retried.status_code == 200, retried.text
    speech = client.post(
        "/v1/audio/speech", json={"input": "Counting this one too.", "response_format": "wav"}
    )
    assert speech.status_code == 200, speech.text
    refused = client.post("/api/v1/tts", json={"text": SENTENCE, "speed_factor": "fast"})
    assert refused.status_code == 422, refused.text


def test_every_stage_of_a_request_is_timed(answered, serve_apps):
    """Encoding is timed where it happens: whole files by PostProcess, streams by the Ingress."""
    wanted = [{"stage": stage} for stage in ("chunk", "synthesize", "validate", "post-process")] + [
        {"stage": "encode", "deployment": deployment} for deployment in ("PostProcess", "Ingress")
    ]

    def untimed(samples: list[Sample]) -> list[dict[str, str]]:
        return [
            labels
            for labels in wanted
            if total(samples, "ray_tts_stage_latency_seconds_count", **labels) == 0
        ]

    samples = scrape_until(serve_apps.metrics_port, untimed)
    assert total(samples, "ray_tts_stage_latency_seconds_sum", stage="synthesize") > 0


def test_chunks_candidates_scores_and_real_time_factor_are_recorded(answered, serve_apps):
    wanted = {
        "ray_tts_requests_total",
        "ray_tts_chunks_total",
        "ray_tts_candidates_total",
        "ray_tts_audio_seconds_total",
        "ray_tts_chunk_candidates_count",
        "ray_tts_chunk_retries_count",
        "ray_tts_validation_score_count",
        "ray_tts_real_time_factor_count",
    }

    def missing(samples: list[Sample]) -> set[str]:
        absent = {name for name in wanted if total(samples, name) == 0}
        latency = "ray_tts_request_latency_seconds_count"
        return absent | {
            f"{latency}{{endpoint={endpoint}}}"
            for endpoint in ("native", "openai")
            if total(samples, latency, endpoint=endpoint) == 0
        }

    samples = scrape_until(serve_apps.metrics_port, missing)
    assert total(samples, "ray_tts_audio_seconds_total") > 2.0

    # Counted over the whole test session (other tests use this app too): the one-try request is
    # a chunk with no retry, the impossible-threshold one a chunk with exactly one.
    def retries_bucket(le: str) -> float:
        return total(samples, "ray_tts_chunk_retries_bucket", endpoint="native", le=le)

    assert retries_bucket("0.5") >= 1
    assert retries_bucket("1.5") - retries_bucket("0.5") >= 1
    scores = total(samples, "ray_tts_validation_score_count")
    assert total(samples, "ray_tts_validation_score_bucket", le="0.5") < scores, "Piper speaks the text"


def test_a_refused_request_is_counted_by_route_status_and_code(answered, serve_apps):
    labels = {"route": "/api/v1/tts", "method": "POST", "status": "422", "code": "VALIDATION_ERROR"}

    def missing(samples: list[Sample]) -> object:
        return total(samples, "ray_tts_errors_total", **labels) == 0 and labels

    scrape_until(serve_apps.metrics_port, missing)


def test_the_admission_queue_depth_and_limits_are_exported(answered, client, serve_apps):
    gauges = ("active", "waiting", "max_active", "max_waiting")

    def missing(samples: list[Sample]) -> list[str]:
        names = {sample.name for sample in samples}
        return [gauge for gauge in gauges if f"ray_tts_admission_{gauge}" not in names]

    samples = scrape_until(serve_apps.metrics_port, missing)
    admission = client.get("/api/v1/health").json()["admission"]
    replicas = {
        sample.labels["replica"] for sample in samples if sample.name == "ray_tts_admission_max_active"
    }
    assert total(samples, "ray_tts_admission_max_active") == admission["max_active"] * len(replicas)
