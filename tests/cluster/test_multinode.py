"""The app of serve_config.yaml on a real three-node cluster: placement by GPU fraction, and a node loss.

A head (declaring ``stable_node``) and two workers declaring two logical GPUs each, started by
load_tests/local_cluster.py in its own process. Offline engines (Piper, tiny.en): what is tested
is placement and recovery, not the model.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import httpx
import numpy as np
import pytest

from load_tests.local_cluster import LocalCluster, fixed_stage, offline_app_args
from pipeline.audio import decode_audio
from pipeline.clip import AudioClip
from tests.conftest import free_port

pytestmark = pytest.mark.slow

STABLE_STAGES = ("Ingress", "Chunker", "PostProcess")
GPU_FRACTIONS = {"TTS": 0.5, "VC": 0.25, "Validator": 0.25}
CPU_SHARES = {"TTS": 0.5, "VC": 0.25, "Validator": 0.25}
REPLICAS = {"TTS": 2, "VC": 1, "Validator": 1}
SHORT = "The quick brown fox jumps over the lazy dog."
THREE_SENTENCES = (
    "Morning light spread slowly across the quiet valley. "
    "A farmer walked out to check on his sheep before breakfast. "
    "The grass was still wet from the rain of the night before."
)


def cluster_args(data_root: Path) -> dict:
    stages = {
        key: fixed_stage(CPU_SHARES[name], GPU_FRACTIONS[name], REPLICAS[name])
        for key, name in (("tts", "TTS"), ("vc", "VC"), ("validator", "Validator"))
    }
    return offline_app_args(data_root, **stages)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(free_port(), cluster_args(tmp_path_factory.mktemp("multinode"))) as running:
        yield running


def running_replicas(placement: dict) -> dict[str, list[str]]:
    """Deployment -> node ids of its RUNNING replicas."""
    return {
        name: [replica["node_id"] for replica in replicas if replica["state"] == "RUNNING"]
        for name, replicas in placement["deployments"].items()
    }


def test_replicas_sit_where_their_gpu_fractions_and_resources_say(cluster: LocalCluster):
    placement = cluster.placement()
    nodes = {node["node_id"]: node for node in placement["nodes"]}
    head = next(node_id for node_id, node in nodes.items() if node["is_head"])
    replicas = running_replicas(placement)
    for stage in STABLE_STAGES:
        assert replicas[stage] == [head], f"{stage} must run on the node that declares stable_node"
    for stage, count in REPLICAS.items():
        assert len(replicas[stage]) == count, stage
        assert head not in replicas[stage], f"{stage} asks for a GPU; the head has none"
    assert len(set(replicas["TTS"])) == 2, "Serve spreads the two TTS replicas over both GPU workers"
    for node_id, node in nodes.items():
        if node_id == head:
            continue
        on_node = Counter(stage for stage, ids in replicas.items() for placed in ids if placed == node_id)
        gpus_used = node["total"]["GPU"] - node["available"].get("GPU", 0.0)
        cpus_used = node["total"]["CPU"] - node["available"].get("CPU", 0.0)
        assert gpus_used == pytest.approx(sum(GPU_FRACTIONS[s] * n for s, n in on_node.items())), on_node
        assert cpus_used == pytest.approx(sum(CPU_SHARES[s] * n for s, n in on_node.items())), on_node
    head_node = nodes[head]
    assert head_node["total"]["stable_node"] - head_node["available"]["stable_node"] == pytest.approx(0.003)


def test_each_tts_replica_reports_the_gpu_ray_assigned_it(cluster: LocalCluster):
    """Logical GPUs: Ray assigns one to each TTS replica, and the engine, finding no CUDA device
    behind it, runs on the CPU and says so, per replica, in /api/v1/health."""
    expected = set(running_replicas(cluster.placement())["TTS"])
    for _ in range(5):
        health = httpx.get(f"{cluster.base_url}/api/v1/health", timeout=60).json()
        replicas = health["engines"]["tts"]["replicas"]
        if all(replica["reported"] for replica in replicas):
            break
    assert {replica["node_id"] for replica in replicas} == expected
    for replica in replicas:
        assert len(replica["assigned_gpus"]) == 1, replica
        assert replica["device"] == "cpu", replica


def test_requests_succeed_over_http_across_the_nodes(cluster: LocalCluster):
    with httpx.Client(base_url=cluster.base_url, timeout=120) as http:
        for kind in ("openai", "native", "sse"):
            outcome = one_request(http, kind)
            assert outcome.status == 200, outcome
            assert outcome.duration_sec > 1.5, outcome


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float
    finished: float
    status: int
    duration_sec: float = 0.0
    chunks: int = 0
    error: str = ""


def one_request(http: httpx.Client, kind: str) -> Outcome:
    """One request of ``kind``, with its audio decoded; a stream must end with its done event."""
    started = time.time()
    try:
        if kind == "openai":
            response = http.post(
                "/v1/audio/speech",
                json={"model": "tts-1", "voice": "alloy", "input": SHORT, "response_format": "wav"},
            )
            audio = decode_audio(response.content) if response.status_code == 200 else None
            chunks = 1
        elif kind == "native":
            response = http.post(
                "/api/v1/tts",
                json={
                    "text": THREE_SENTENCES,
                    "smart_batch_short_sentences": False,
                    "num_candidates_per_chunk": 1,
                    "max_attempts_per_candidate": 2,
                    "export_formats": ["wav"],
                },
            )
            audio = decode_audio(response.content) if response.status_code == 200 else None
            chunks = int(response.headers.get("x-chunks", 0))
        else:
            response = http.post(
                "/v1/audio/speech",
                json={
                    "model": "tts-1",
                    "input": THREE_SENTENCES,
                    "response_format": "pcm",
                    "stream_format": "sse",
                },
            )
            audio, chunks = sse_audio(response.text) if response.status_code == 200 else (None, 0)
    except (httpx.HTTPError, ValueError) as error:
        return Outcome(kind, started, time.time(), -1, error=repr(error))
    finished = time.time()
    if audio is None:
        return Outcome(kind, started, finished, response.status_code, error=response.text[:300])
    return Outcome(kind, started, finished, response.status_code, audio.duration_sec, chunks)


def sse_audio(text: str) -> tuple[AudioClip | None, int]:
    events = [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1]["type"] != "speech.audio.done":
        return None, 0  # a stream cut short: the client can tell, and this counts as lost
    deltas = [base64.b64decode(event["audio"]) for event in events if event["type"] == "speech.audio.delta"]
    samples = np.frombuffer(b"".join(deltas), dtype="<i2").astype(np.float32) / 32768.0
    return AudioClip(samples, 24_000), len(deltas)


def test_losing_a_gpu_worker_loses_no_accepted_request(cluster: LocalCluster):
    """Four clients loop over short OpenAI, validated multi-chunk native and SSE requests; after
    12 s the worker holding the Validator and a TTS replica is removed. Every request must come
    back 200 with complete audio, the ingress must have retried calls lost with the node (else
    the removal hit nothing), and the replicas must come back on the other worker."""
    replicas = running_replicas(cluster.placement())
    (victim,) = replicas["Validator"]  # every validated chunk's transcript passes through it
    assert victim in replicas["TTS"], "a TTS replica sits on the Validator's worker too"
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        kinds = ("openai", "native", "sse")
        with httpx.Client(base_url=cluster.base_url, timeout=180) as http:
            turn = offset
            while not stop.is_set():
                outcomes.append(one_request(http, kinds[turn % len(kinds)]))
                turn += 1

    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(12)
    removed_at = cluster.remove_node(victim)["time"]
    recovered_at = wait_for_replicas_back(cluster, victim, timeout_sec=120)
    time.sleep(8)  # requests that start after the recovery
    stop.set()
    for thread in threads:
        thread.join(timeout=240)

    report = {
        "requests": len(outcomes),
        "by_status": dict(Counter(outcome.status for outcome in outcomes)),
        "in_flight_at_removal": sum(o.started < removed_at < o.finished for o in outcomes),
        "replicas_back_after_sec": round(recovered_at - removed_at, 1),
        "slowest_request_sec": round(max(o.finished - o.started for o in outcomes), 1),
    }
    retries = httpx.get(f"{cluster.base_url}/api/v1/health", timeout=60).json()["stage_retries"]
    report["stage_retries"] = retries
    print("node loss:", json.dumps(report))
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests lost: {failed[:3]}"
    assert report["in_flight_at_removal"] >= 2, "the removal must hit requests in flight"
    assert sum(retries.values()) >= 1, "no call was lost with the node: the test proved nothing"
    assert_complete(outcomes)
    after = running_replicas(cluster.placement())
    for stage, count in REPLICAS.items():
        assert len(after[stage]) == count and victim not in after[stage], (stage, after[stage])


def wait_for_replicas_back(cluster: LocalCluster, victim: str, timeout_sec: float) -> float:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        placement = cluster.placement()
        replicas = running_replicas(placement)
        if all(len(replicas[s]) == n and victim not in replicas[s] for s, n in REPLICAS.items()):
            return placement["time"]
        time.sleep(1)
    raise AssertionError(f"replicas not back on the surviving worker after {timeout_sec:.0f} s")


def assert_complete(outcomes: list[Outcome]) -> None:
    """Same text, same length: every answer of a kind lasts within 20% of that kind's median
    (Piper's durations vary a little from run to run; a lost chunk costs a third or more)."""
    for kind in ("openai", "native", "sse"):
        of_kind = [outcome for outcome in outcomes if outcome.kind == kind]
        assert of_kind, kind
        typical = median(outcome.duration_sec for outcome in of_kind)
        for outcome in of_kind:
            assert 0.8 * typical <= outcome.duration_sec <= 1.2 * typical, (outcome, typical)
        if kind != "openai":
            assert len({outcome.chunks for outcome in of_kind}) == 1, [o.chunks for o in of_kind]
