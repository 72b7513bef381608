"""A TTS replica killed under a request: Serve replaces it and the request still gets its audio."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from pipeline.audio import decode_audio

pytestmark = pytest.mark.slow

TEXT = " ".join(f"This is sentence number {n} of a text that keeps the replica busy." for n in range(1, 13))


def tts_replica_actors() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "#TTS#" in actor["name"] and actor["name"].startswith("SERVE_REPLICA::chatterbox#")
    ]


def wait_until_healthy(client, timeout_sec: float = 120) -> None:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if client.get("/api/v1/health").status_code == 200:
            return
        time.sleep(1)
    raise AssertionError("the app did not recover")


def stage_retries(client) -> int:
    """Stage calls the ingress sent again after their replica died, all causes (from /health)."""
    return sum(client.get("/api/v1/health").json()["stage_retries"].values())


def test_request_survives_its_tts_replica_being_killed(client):
    """The rescue must be the stage-call retry layer's: the graph retries only an engine's own
    GenerationFailed, so without deployments/calls.py's retries the calls that were running on the
    killed replica fail the request (checked by hand with ``_recover`` re-raising at once: 500
    "internal error: ActorDiedError")."""
    (victim,) = tts_replica_actors()
    retries_before = stage_retries(client)
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(1.0)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_soon)
    killer.start()
    # 36 syntheses and no transcription: the TTS replica has calls running for several seconds,
    # and each chunk's audio is generated once (no candidate could stand in for a lost call).
    response = client.post(
        "/api/v1/tts",
        params={"response_mode": "url"},
        json={
            "text": TEXT,
            "smart_batch_short_sentences": False,
            "num_candidates_per_chunk": 3,
            "max_attempts_per_candidate": 1,
            "bypass_whisper_checking": True,
            "export_formats": ["wav"],
        },
    )
    answered_at = time.monotonic()
    killer.join()
    assert killed_at and killed_at[0] < answered_at, "the replica must die while the request is in flight"
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["chunks"]) == 12
    audio = decode_audio(client.get(body["output_files"][0]["url"]).content)
    assert audio.duration_sec > 20
    assert stage_retries(client) > retries_before, "calls running on the killed replica were sent again"
    wait_until_healthy(client)
    assert tts_replica_actors() != [victim], "Serve should have replaced the killed replica"


@pytest.fixture(scope="module")
def faulty_stage(serve_apps, data_dirs, tmp_path_factory):
    """FaultyStage (tests/fault_stage.py), two real replicas, as an app of its own."""
    from ray import serve

    from tests.conftest import app_config

    calls_dir = tmp_path_factory.mktemp("fault-calls")
    base = app_config(serve_apps.port, data_dirs)
    (application,) = base.applications
    faults = application.model_copy(
        update={
            "import_path": "tests.fault_stage:build",
            "args": {"calls_dir": str(calls_dir)},
            "deployments": [],
        }
    )
    serve_apps.deploy(
        base.model_copy(update={"applications": [faults]}), name="faults", route_prefix="/faults"
    )
    yield serve.get_deployment_handle("FaultyStage", app_name="faults"), calls_dir
    serve_apps.remove("faults")


def stage_call(handle, kind: str):
    import asyncio

    from deployments.calls import StageCalls
    from pipeline.settings import RetryConfig

    calls = StageCalls(
        RetryConfig(replica_crash_retries=1, node_death_grace_sec=2, backoff_sec=0.5), retry_after_sec=2
    )
    return asyncio.run(calls(handle, "run")(kind))


def test_an_input_that_kills_its_replica_is_tried_once_more_then_fails_naming_the_crash(faulty_stage):
    from pipeline.errors import ReplicaCrashed

    handle, calls_dir = faulty_stage
    with pytest.raises(ReplicaCrashed, match="killed its replica 2 times"):
        stage_call(handle, "crash")
    crashes = list(calls_dir.glob("crash-*"))
    # Two tries at most. (The second may have been routed to the dead replica before Serve knew,
    # in which case the input ran once.) Without the cap it would run on every fresh replica.
    assert 1 <= len(crashes) <= 2, crashes
    deadline = time.monotonic() + 60
    while True:
        try:
            assert isinstance(stage_call(handle, "ok"), int)
            break  # Serve replaced the crashed replicas, and other inputs are served again
        except ReplicaCrashed:
            assert time.monotonic() < deadline, "the stage did not come back"
            time.sleep(1)


def test_a_bug_in_a_stage_is_reported_as_itself_and_not_retried(faulty_stage):
    handle, calls_dir = faulty_stage
    with pytest.raises(TypeError, match="unsupported operand"):
        stage_call(handle, "bug")
    assert len(list(calls_dir.glob("bug-*"))) == 1


def test_a_raw_audio_stream_that_fails_after_its_first_bytes_is_not_a_clean_end(serve_apps, data_dirs):
    """The 200 is gone with the first bytes; the body must then end so that the client sees an
    error (an incomplete chunked body), never what looks like a complete answer."""
    import httpx

    from tests.conftest import app_config

    base = app_config(serve_apps.port, data_dirs)
    (application,) = base.applications
    broken = application.model_copy(
        update={"import_path": "tests.fault_stage:build_broken_stream", "args": {}, "deployments": []}
    )
    serve_apps.deploy(
        base.model_copy(update={"applications": [broken]}), name="broken", route_prefix="/broken"
    )
    try:
        received = bytearray()
        url = f"http://127.0.0.1:{serve_apps.port}/broken/"
        with (
            pytest.raises(httpx.RemoteProtocolError, match="incomplete"),
            httpx.stream("GET", url, timeout=60) as response,
        ):
            assert response.status_code == 200
            for data in response.iter_bytes():
                received.extend(data)
        assert len(received) == 4800, "the first chunk arrived before the failure"
    finally:
        serve_apps.remove("broken")
