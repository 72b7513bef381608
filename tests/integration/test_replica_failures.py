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


def test_request_survives_its_tts_replica_being_killed(client):
    (victim,) = tts_replica_actors()
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(1.0)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_soon)
    killer.start()
    response = client.post(
        "/api/v1/tts",
        params={"response_mode": "url"},
        json={
            "text": TEXT,
            "smart_batch_short_sentences": False,
            "num_candidates_per_chunk": 3,
            "max_attempts_per_candidate": 3,
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
    wait_until_healthy(client)
    assert tts_replica_actors() != [victim], "Serve should have replaced the killed replica"
