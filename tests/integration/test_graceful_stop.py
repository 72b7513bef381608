"""SIGTERM to the real launcher: what is in flight finishes, what comes after is refused, exit 0.

The launcher runs as users run it (``python -m deployments.launcher``), with its own local Ray, the
Piper engine and Whisper validation. Two responses are in flight when the signal comes: a validated
/api/v1/tts request still generating, and an OpenAI stream whose client has stopped reading, so
that Serve's proxy still holds the end of it after the ingress replica has produced all of it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.audio import decode_audio
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

GRACE_PERIOD_SEC = 30
NATIVE_TEXT = (
    "Morning light spread slowly across the quiet valley. "
    "A farmer walked out to check on his sheep before breakfast. "
    "The grass was still wet from the rain of the night before. "
    "Birds were singing in the tall oak trees by the road. "
    "His dog ran ahead, barking at everything it saw."
)
# About 8 MB of 22 kHz PCM: more than the kernel's socket buffers take (4 MB send, 4 KB receive
# here), so a paused reader leaves the rest of it in Serve's proxy.
STREAM_TEXT = " ".join(
    ["Down by the river the water was high and fast, and he counted the animals twice."] * 40
)
PIPER_SAMPLE_RATE = 22050
LOG_NOISE = ("CALL report", "GET /api/v1/health 200", "CALL synthesize", "CALL render")


class SmallBufferConnection(http.client.HTTPConnection):
    """An HTTP client whose socket buffers 4 KB, so pausing it really holds the server's stream up."""

    def connect(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(120)
        self.sock.connect((self.host, self.port))


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    port, metrics_port = free_port(), free_port()
    env = {
        **{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"},
        "ENGINE": "piper",
        "VOICES_DIR": str(tmp_path / "voices"),
        "VC_INPUTS_DIR": str(tmp_path / "vc_inputs"),
        "OUTPUTS_DIR": str(tmp_path / "outputs"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for name in ("voices", "vc_inputs", "outputs"):
        (tmp_path / name).mkdir()
    log_path = tmp_path / "launcher.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "deployments.launcher"),
                *("--port", str(port), "--metrics-port", str(metrics_port), "--num-cpus", "4"),
                *("--grace-period", str(GRACE_PERIOD_SEC)),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, f"http://127.0.0.1:{port}", log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(launcher) -> None:
    process, base_url, log_path = launcher

    def log_tail() -> str:
        lines = log_path.read_text(errors="replace").splitlines()
        lines = [line for line in lines if not any(noise in line for noise in LOG_NOISE)]
        return "launcher log (polls left out):\n" + "\n".join(lines[-40:])

    with httpx.Client(base_url=base_url, timeout=60) as client:
        wait_until(lambda: healthy(client, process), 150, "the app did not become healthy", log_tail)
        with ThreadPoolExecutor(1) as pool:
            native = pool.submit(
                client.post,
                "/api/v1/tts",
                json={"text": NATIVE_TEXT, "export_formats": ["wav"]},
                headers={"X-Request-ID": "graceful-native"},
                timeout=120,
            )
            stream = SmallBufferConnection("127.0.0.1", httpx.URL(base_url).port)
            stream.request(
                "POST",
                "/v1/audio/speech",
                body=json.dumps({"model": "tts-1", "input": STREAM_TEXT, "response_format": "pcm"}),
                headers={"Content-Type": "application/json", "X-Request-ID": "graceful-stream"},
            )
            streamed = stream.getresponse()  # the first chunk is ready; then this client pauses
            assert streamed.status == 200
            first_bytes = streamed.read(4096)
            wait_until(
                lambda: admission(client)["active"] == 2, 30, "both requests were not admitted", log_tail
            )
            assert not native.done(), "the validated request should still be generating"

            process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()

            wait_until(lambda: draining(client), 15, "health never answered 503 draining", log_tail)
            refused = client.post(
                "/api/v1/tts", json={"text": "One more, please.", "export_formats": ["wav"]}
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "SERVER_DRAINING"
            assert int(refused.headers["retry-after"]) >= 1

            answered = native.result(timeout=90)
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-request-id"] == "graceful-native"
        audio = decode_audio(answered.content)
        assert audio.duration_sec == pytest.approx(float(answered.headers["x-audio-duration-sec"]), abs=0.05)
        assert audio.duration_sec > 8, "five sentences of speech"
        assert int(answered.headers["x-chunks"]) >= 2

        # The ingress is done with both; the proxy still holds the stream's end for its paused
        # client, so the service must still be up.
        time.sleep(3)
        assert process.poll() is None, "Serve stopped while a response was still being sent\n" + log_tail()
        rest = streamed.read()  # http.client raises IncompleteRead if the stream was cut
        stream.close()
        pcm = np.frombuffer(first_bytes + rest, dtype="<i2")
        assert len(first_bytes + rest) > 6_000_000
        assert len(pcm) / PIPER_SAMPLE_RATE > 120, "forty sentences of speech"

        try:
            returncode = process.wait(GRACE_PERIOD_SEC - (time.monotonic() - signalled_at))
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the launcher did not exit within the {GRACE_PERIOD_SEC} s grace period\n{log_tail()}"
            )
        assert returncode == 0, log_tail()
        assert "Drained in" in log_path.read_text(), log_tail()
        with pytest.raises(httpx.ConnectError):
            client.post("/api/v1/tts", json={"text": "Anyone there?"})


def healthy(client: httpx.Client, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the launcher exited while starting ({process.returncode})")
    try:
        return client.get("/api/v1/health").status_code == 200
    except httpx.TransportError:
        return False


def admission(client: httpx.Client) -> dict:
    return client.get("/api/v1/health").json()["admission"]


def draining(client: httpx.Client) -> bool:
    response = client.get("/api/v1/health")
    return response.status_code == 503 and response.json()["status"] == "draining"


def wait_until(
    condition: Callable[[], bool], timeout_sec: float, message: str, log_tail: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except AssertionError as error:
            pytest.fail(f"{error}\n{log_tail()}")
        time.sleep(0.25)
    pytest.fail(f"{message} within {timeout_sec} s\n{log_tail()}")
