"""Request ids: the client's X-Request-ID (or one Serve generates) on every response, in every error
body, and in the log lines of each deployment that worked on the request."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

APP = "chatterbox"  # the Piper app of tests/conftest.py
CHEAP = {"num_candidates_per_chunk": 1, "max_attempts_per_candidate": 1, "bypass_whisper_checking": True}


def test_a_chosen_request_id_comes_back_and_is_in_the_logs_of_each_stage(client: httpx.Client) -> None:
    request_id = f"ids-test-{secrets.token_hex(4)}"
    response = client.post(
        "/api/v1/tts",
        json={"text": "Two sentences here. And a second one.", **CHEAP},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id

    lines = wait_for_log_lines(request_id, ("Ingress", "Chunker", "TTS"))
    assert any("POST /api/v1/tts 200" in line for line in lines["Ingress"]), lines["Ingress"]
    assert any("CALL split OK" in line for line in lines["Chunker"]), lines["Chunker"]
    assert any("CALL synthesize OK" in line for line in lines["TTS"]), lines["TTS"]


def test_a_stream_returns_the_chosen_request_id(client: httpx.Client) -> None:
    request_id = f"ids-stream-{secrets.token_hex(4)}"
    with client.stream(
        "POST",
        "/v1/audio/speech",
        json={"input": "Streamed back.", "response_format": "pcm"},
        headers={"X-Request-ID": request_id},
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == request_id
        assert len(response.read()) > 0
    assert wait_for_log_lines(request_id, ("TTS",))["TTS"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/tts", {"text": ""}, 422),
        ("POST", "/api/v1/tts", {"text": "Hello.", "no_such_field": 1}, 422),
        ("GET", "/api/v1/no-such-route", None, 404),
        ("GET", "/api/v1/tts", None, 405),
    ],
)
def test_without_an_id_serve_generates_one_and_the_error_body_carries_it(
    client: httpx.Client, method: str, path: str, body: dict | None, status: int
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    generated = response.headers["x-request-id"]
    assert len(generated) >= 16, generated
    assert response.json()["request_id"] == generated


def test_a_chosen_id_is_the_one_in_the_error_body(client: httpx.Client) -> None:
    response = client.post("/api/v1/tts", json={"text": ""}, headers={"X-Request-ID": "ids-error-body"})
    assert response.status_code == 422
    assert response.headers["x-request-id"] == response.json()["request_id"] == "ids-error-body"


def test_each_success_gets_its_own_generated_id(client: httpx.Client) -> None:
    first, second = (client.get("/v1/models") for _ in range(2))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def wait_for_log_lines(request_id: str, deployments: tuple[str, ...], timeout_sec: float = 30) -> dict:
    """The lines naming ``request_id`` in each deployment's replica log files, once every one has some.

    Serve's replicas write their logs through a buffer, so a line can show up a little later.
    """
    deadline = time.monotonic() + timeout_sec
    while True:
        found = {
            deployment: [
                line
                for path in replica_logs(deployment)
                for line in path.read_text(errors="replace").splitlines()
                if request_id in line
            ]
            for deployment in deployments
        }
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [deployment for deployment, lines in found.items() if not lines]
    assert not missing, f"{request_id} is in no log file of {missing}"
    return found


def replica_logs(deployment: str) -> list[Path]:
    """The log files of the deployment's replicas, as Serve names them under this session's logs."""
    from ray._private import worker
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    logs_dir = Path(worker._global_node.get_logs_dir_path())
    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    replicas = details.applications[APP].deployments[deployment].replicas
    paths = [logs_dir / replica.log_file_path.lstrip("/") for replica in replicas if replica.log_file_path]
    assert paths, f"Serve names no log file for {deployment}"
    return paths
