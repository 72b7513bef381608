"""The README's load tables: the Locust mix at 1, 2, 4 and 8 users on 1 and 2 TTS replicas, then a
burst of three times the admission capacity.

Deploys serve_config.yaml itself (Piper, a fixed TTS replica count, empty data folders) on a local
Ray instance of its own, at http://127.0.0.1:<a free port>, and runs run_locust.py's Locust command
for each step (its CSV and HTML reports land in load_tests/reports/ too). Prints markdown tables
and writes JSON to load_tests/reports/. `make load-table`; `--quick` (5 s steps) for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from deployments.launcher import deploy_config, init_ray, load_config
from load_tests import burst
from load_tests.run_locust import MAX_USERS, REPO_ROOT, REPORTS_DIR, locust_command, summary_path

# Capacity 4: two requests worked on, two waiting; the burst sends three times that at once.
ADMISSION = {"max_active_requests": 2, "max_waiting_requests": 2}
CAPACITY = sum(ADMISSION.values())
QUICK_STEP_SEC = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_args(data_dir: Path, tts_replicas: int, **extra: Any) -> dict[str, Any]:
    """Overrides of the YAML's args: a fixed TTS replica count, which on a machine without GPUs
    needs a cpu_fallback that allows it (the YAML's caps CPU TTS at one replica)."""
    return {
        "engine": "piper",
        "voices_dir": str(data_dir / "voices"),
        "vc_inputs_dir": str(data_dir / "vc_inputs"),
        "outputs_dir": str(data_dir / "outputs"),
        "tts": {
            "autoscaling": None,
            "num_replicas": tts_replicas,
            "cpu_fallback": {"num_cpus": 1, "max_replicas": tts_replicas},
        },
        **extra,
    }


def deploy(port: int, args: dict[str, Any]) -> None:
    config = load_config(REPO_ROOT / "serve_config.yaml", host="127.0.0.1", port=port, args_override=args)
    deploy_config(config)


def warm_up(base_url: str, tts_replicas: int) -> None:
    """One request of each synthesis kind, so no step pays the first calls' one-off costs; and a
    check that the rows are labelled right (the replicas the cluster really runs)."""
    with httpx.Client(base_url=base_url, timeout=300) as client:
        running = client.get("/api/v1/health").json()["deployments"]["TTS"]["replicas"].get("RUNNING")
        if running != tts_replicas:
            raise RuntimeError(f"asked for {tts_replicas} TTS replicas, {running} running")
        client.post("/v1/audio/speech", json={"input": "Warming up."}).raise_for_status()
        client.post(
            "/api/v1/tts", json={"text": "Warming up the validator.", "export_formats": ["wav"]}
        ).raise_for_status()


def locust_step(port: int, replicas: int, users: int, step_sec: int, stamp: str) -> dict[str, Any]:
    name = f"load-table-{stamp}-tts{replicas}-u{users}"
    print(f"\n== {replicas} TTS replica(s), {users} user(s), {step_sec} s ==", flush=True)
    # All users start at once; the failure threshold is the table's to report, not to stop on.
    command = locust_command(port, users, users, step_sec, name, max_failure_rate=1.0, stop_timeout_sec=60)
    subprocess.run(command, cwd=REPO_ROOT, check=False)
    return {"tts_replicas": replicas, "users": users, **json.loads(summary_path(name).read_text())}


def _seconds(milliseconds: float) -> str:
    return f"{milliseconds / 1000:.2f}"


def load_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| TTS replicas | users | requests | requests/s | p50 s | p95 s | failures | 503 back-pressure |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['tts_replicas']} | {row['users']} | {row['requests']} | {row['requests_per_sec']:.2f} "
            f"| {_seconds(row['p50_ms'])} | {_seconds(row['p95_ms'])} | {row['failure_rate']:.1%} "
            f"| {row['back_pressure_rate']:.1%} |"
        )
    return "\n".join(lines)


def endpoint_markdown(rows: list[dict[str, Any]]) -> str:
    """p50 / p95 seconds of each request kind of the mix (the per-user setup requests left out)."""
    names = sorted({entry["name"] for row in rows for entry in row["endpoints"] if not entry["setup"]})
    lines = [
        "| TTS replicas | users | " + " | ".join(f"{name} p50 / p95 s" for name in names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for row in rows:
        by_name = {entry["name"]: entry for entry in row["endpoints"]}
        cells = [
            f"{_seconds(by_name[name]['p50_ms'])} / {_seconds(by_name[name]['p95_ms'])}"
            if name in by_name
            else "-"
            for name in names
        ]
        lines.append(f"| {row['tts_replicas']} | {row['users']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def burst_markdown(result: dict[str, Any]) -> str:
    counts = result["status_counts"]
    other = sum(count for status, count in counts.items() if status not in ("200", "503"))
    refused = counts.get("503", 0)

    def latency(figures: dict[str, float] | None) -> str:
        return f"{figures['p50_sec']:.2f} / {figures['max_sec']:.2f}" if figures else "-"

    def every(flag: bool, detail: list[str]) -> str:
        return "n/a" if not refused else f"{'yes' if flag else 'NO'} ({', '.join(detail)})"

    after = result["after_burst"]
    return "\n".join(
        [
            f"| burst (capacity {CAPACITY}) | 200 | 503 | other | 200 latency p50 / max s "
            "| 503 latency p50 / max s | Retry-After on every 503 | error JSON on every 503 "
            "| next request |",
            "|---|---:|---:|---:|---:|---:|---|---|---|",
            f"| {result['concurrent_requests']} at once | {counts.get('200', 0)} | {refused} | {other} "
            f"| {latency(result['ok_latency'])} | {latency(result['rejected_latency'])} "
            f"| {every(result['every_503_has_retry_after'], result['retry_after_values'])} "
            f"| {every(result['every_503_has_error_json'], result['error_codes'])} "
            f"| {after['status']} in {after['latency_sec']:.2f} s |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-sec", type=int, default=30, help="Locust run time of each step")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEP_SEC} s steps: a smoke run")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="TTS replica counts")
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=4,
        help="logical CPUs of the local Ray instance (2 TTS replicas and the other stages ask for 3)",
    )
    parser.add_argument("--port", type=int, default=0, help="of http://127.0.0.1; 0 picks a free one")
    options = parser.parse_args()
    if not all(1 <= users <= MAX_USERS for users in options.users):
        parser.error(f"--users must be between 1 and {MAX_USERS}")
    if not 1 <= options.step_sec <= 600:
        parser.error("--step-sec must be between 1 and 600")
    step_sec = QUICK_STEP_SEC if options.quick else options.step_sec
    port = options.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    REPORTS_DIR.mkdir(exist_ok=True)
    # Without an address ray.init() joins a cluster someone else started with `ray start`.
    os.environ["RAY_ADDRESS"] = "local"
    with tempfile.TemporaryDirectory(prefix="load-table-") as data:
        init_ray(num_cpus=options.num_cpus)
        try:
            rows = []
            for replicas in options.replicas:
                deploy(port, app_args(Path(data), replicas))
                warm_up(base_url, replicas)
                rows += [locust_step(port, replicas, users, step_sec, stamp) for users in options.users]
            deploy(port, app_args(Path(data), 1, admission=ADMISSION))
            burst_result = asyncio.run(burst.fire(base_url, 3 * CAPACITY))
        finally:
            serve.shutdown()
            ray.shutdown()

    print(f"\nLocust mix, {step_sec} s per step:\n\n{load_markdown(rows)}\n")
    print(f"By request kind:\n\n{endpoint_markdown(rows)}\n")
    print(f"Back-pressure:\n\n{burst_markdown(burst_result)}\n")
    path = REPORTS_DIR / f"load-table-{stamp}.json"
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "ray_num_cpus": options.num_cpus,
        },
        "timestamp": datetime.now(UTC).isoformat(),
        "step_sec": step_sec,
        "admission": ADMISSION,
        "rows": rows,
        "burst": burst_result,
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"JSON report: {path}")


if __name__ == "__main__":
    main()
