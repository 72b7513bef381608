"""Autoscaling on a real multi-node cluster: TTS replicas grow under Locust load and shrink after.

Starts load_tests/local_cluster.py (a head and two workers with logical GPUs), deploys
serve_config.yaml with TTS autoscaling at demo timescales (seconds instead of minutes, since
nothing here loads GPU weights), runs the Locust mix of load_tests/locustfile.py for a fixed
time, keeps watching until the load has been gone a while, and prints the TTS replica count
over time (a table; JSON under load_tests/reports/). Only ever targets 127.0.0.1.

Usage: `python -m load_tests.autoscaling_run [--users 8] [--load-sec 60] [--cooldown-sec 60]`
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load_tests.local_cluster import LocalCluster, fixed_stage, offline_app_args
from load_tests.run_locust import locust_command

HERE = Path(__file__).resolve().parent
SAMPLE_EVERY_SEC = 2.0


def demo_args(data_root: Path, max_replicas: int) -> dict[str, Any]:
    """The app's args with a small, fast-reacting TTS autoscaler: target 1 call in flight, so the
    mix's few users are enough load to add replicas on two cores."""
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": max_replicas,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 3,
        "downscale_delay_s": 15,
        "look_back_period_s": 5,
        "metrics_interval_s": 1,
    }
    return offline_app_args(
        data_root,
        tts={"num_cpus": 0.5, "num_gpus": 0.5, "autoscaling": autoscaling},
        vc=fixed_stage(0.25, 0.25, 1),
        validator=fixed_stage(0.25, 0.25, 1),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tts_replicas(cluster: LocalCluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for replica in cluster.placement()["deployments"].get("TTS", []):
        counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--load-sec", type=int, default=60)
    parser.add_argument("--cooldown-sec", type=int, default=60)
    parser.add_argument("--max-replicas", type=int, default=4)
    options = parser.parse_args()

    samples: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as data_root,
        LocalCluster(free_port(), demo_args(Path(data_root), options.max_replicas), worker_gpus=2) as cluster,
    ):
        started = time.monotonic()
        phase = {"name": "load"}
        locust = threading.Thread(target=run_locust, args=(cluster.port, options), daemon=True)
        locust.start()
        while locust.is_alive() or time.monotonic() - started < options.load_sec + options.cooldown_sec:
            if not locust.is_alive():
                phase["name"] = "cooldown"
            counts = tts_replicas(cluster)
            samples.append({"t_sec": round(time.monotonic() - started, 1), "phase": phase["name"], **counts})
            print(f"{samples[-1]['t_sec']:6.1f} s  {phase['name']:8}  TTS replicas {counts}", flush=True)
            time.sleep(SAMPLE_EVERY_SEC)
    peak = max(sample.get("RUNNING", 0) for sample in samples)
    final = samples[-1].get("RUNNING", 0)
    print("\n| t (s) | phase | TTS replicas running | starting |\n|---|---|---|---|")
    previous = None
    for sample in samples:
        row = (sample["phase"], sample.get("RUNNING", 0), sample.get("STARTING", 0))
        if row != previous:
            print(f"| {sample['t_sec']} | {row[0]} | {row[1]} | {row[2]} |")
            previous = row
    print(f"\npeak {peak} running replicas under load, {final} at the end")
    reports = HERE / "reports"
    reports.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = reports / f"autoscaling-{stamp}.json"
    out.write_text(json.dumps({"options": vars(options), "samples": samples}, indent=1))
    print(f"wrote {out}")
    return 0 if peak > 1 and final < peak else 1


def run_locust(port: int, options: argparse.Namespace) -> None:
    command = locust_command(
        port,
        options.users,
        options.spawn_rate,
        options.load_sec,
        name=f"autoscaling-locust-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}",
        max_failure_rate=1.0,
        stop_timeout_sec=60,
    )
    subprocess.run(command, check=False)


if __name__ == "__main__":
    raise SystemExit(main())
