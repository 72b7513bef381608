"""Past capacity the service refuses at once with 503 + Retry-After, and serves normally right after.

The Piper app's ingress admission is lowered at runtime (Ingress user_config, no restart) to 2
running + 2 waiting requests, then a burst of 3x that arrives at once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from deployments.graceful_stop import with_ingress_user_config
from pipeline.audio import decode_audio
from tests.conftest import app_config

pytestmark = pytest.mark.slow

CAPACITY = {"max_active_requests": 2, "max_waiting_requests": 2, "retry_after_sec": 3}
TEXT = (
    "Morning light spread slowly across the quiet valley. "
    "A farmer walked out to check on his sheep before breakfast. "
    "The grass was still wet from the rain of the night before."
)


def with_admission(config, admission: dict | None):
    return with_ingress_user_config(config, {"admission": admission or {}})


def wait_for_admission(client: httpx.Client, max_active: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get("/api/v1/health").json().get("admission", {}).get("max_active") == max_active:
            return
        time.sleep(0.5)
    raise AssertionError("the new admission limits did not reach the ingress")


@pytest.fixture
def small_capacity(serve_apps, data_dirs, piper_app, client):
    config = app_config(serve_apps.port, data_dirs, engine="piper")
    serve_apps.deploy(with_admission(config, CAPACITY))
    wait_for_admission(client, CAPACITY["max_active_requests"])
    yield
    serve_apps.deploy(with_admission(config, None))
    wait_for_admission(client, 16)


def timed_post(base_url: str) -> tuple[int, float, httpx.Headers, bytes]:
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=300) as http:
        response = http.post(
            "/api/v1/tts",
            json={"text": TEXT, "num_candidates_per_chunk": 1, "export_formats": ["wav"]},
        )
    return response.status_code, time.perf_counter() - started, response.headers, response.content


def test_a_burst_of_three_times_capacity_gets_only_200s_and_fast_503s(small_capacity, piper_app, client):
    burst = 3 * (CAPACITY["max_active_requests"] + CAPACITY["max_waiting_requests"])
    with ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(lambda _: timed_post(piper_app), range(burst)))
    statuses = sorted(status for status, *_ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 4, "the 2 running and 2 waiting requests are served"
    assert statuses.count(503) >= burst - 6, statuses
    for status, latency, headers, body in results:
        if status == 503:
            assert latency < 1.0, f"a refusal must be fast, took {latency:.2f} s"
            assert headers["retry-after"] == "3"
            error = httpx.Response(503, content=body).json()
            assert error["success"] is False and error["error"]["code"] == "SERVER_OVERLOADED"
        else:
            assert decode_audio(body).duration_sec > 5
    health = client.get("/api/v1/health").json()
    assert health["admission"]["refused"] >= statuses.count(503)
    assert health["admission"]["active"] == health["admission"]["waiting"] == 0, "every slot came back"
    status, latency, _, body = timed_post(piper_app)
    assert status == 200 and decode_audio(body).duration_sec > 5, "the service answers normally right after"
