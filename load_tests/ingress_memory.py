"""How much memory the ingress replica needs for one long text (issue: a 30-minute text).

Deploys serve_config.yaml on a local Ray of its own (offline Piper, validation bypassed, the
text limit raised for the run), sends one native request whose text speaks for about
``--minutes`` minutes, and samples the ingress replica's resident memory while it runs.
Prints a table and writes JSON under load_tests/reports/. Only ever targets 127.0.0.1.

Usage: `python -m load_tests.ingress_memory [--minutes 30]`
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
# Piper's en_US-joe-medium speaks about 19.6 characters a second at speed 1.0 (measured here:
# 27,042 characters, 23.0 minutes).
CHARS_PER_SEC = 19.6
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Morning light spread slowly across the quiet valley and the hills beyond it.",
    "A farmer walked out to check on his sheep before the rain began to fall.",
    "Long articles and audiobooks are split into sentences before synthesis.",
)


def long_text(minutes: float) -> str:
    target = int(minutes * 60 * CHARS_PER_SEC)
    parts: list[str] = []
    while sum(len(part) + 1 for part in parts) < target:
        parts.append(SENTENCES[len(parts) % len(SENTENCES)])
    return " ".join(parts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ingress_pid() -> int:
    from ray.serve.context import _get_global_client

    # Serve's controller knows each replica's process; no public API names it.
    details = _get_global_client().get_serve_details()
    (replica,) = details["applications"]["chatterbox"]["deployments"]["Ingress"]["replicas"]
    return int(replica["pid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    options = parser.parse_args()
    os.environ.setdefault("RAY_ADDRESS", "local")

    from deployments.launcher import deploy_config, init_ray, load_config

    text = long_text(options.minutes)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        config = load_config(
            REPO_ROOT / "serve_config.yaml",
            port=port,
            args_override={
                "engine": "piper",
                "limits": {"max_text_chars": len(text) + 1},
                "voices_dir": f"{data}/voices",
                "vc_inputs_dir": f"{data}/vc_inputs",
                "outputs_dir": f"{data}/outputs",
            },
        )
        init_ray(num_cpus=4)
        deploy_config(config)
        process = psutil.Process(ingress_pid())
        # RSS counts the pages of Ray's shared-memory object store the process touched; USS is
        # what the ingress holds on its own (and what it gives back), so both are reported.
        baseline = process.memory_full_info()
        samples: list[tuple[int, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                info = process.memory_full_info()
                samples.append((info.rss, info.uss))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/tts",
            json={"text": text, "bypass_whisper_checking": True, "export_formats": ["wav"]},
            timeout=3600,
        )
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        response.raise_for_status()
    result: dict[str, Any] = {
        "text_chars": len(text),
        "audio_min": round(float(response.headers["x-audio-duration-sec"]) / 60, 1),
        "chunks": int(response.headers["x-chunks"]),
        "wall_sec": round(wall, 1),
        "response_mb": round(len(response.content) / 2**20, 1),
        "rss_before_mb": round(baseline.rss / 2**20),
        "rss_peak_mb": round(max(rss for rss, _ in samples) / 2**20),
        "uss_before_mb": round(baseline.uss / 2**20),
        "uss_peak_mb": round(max(uss for _, uss in samples) / 2**20),
        "uss_after_mb": round(process.memory_full_info().uss / 2**20),
    }
    print("| " + " | ".join(result) + " |\n|" + "---|" * len(result))
    print("| " + " | ".join(str(value) for value in result.values()) + " |")
    reports = HERE / "reports"
    reports.mkdir(exist_ok=True)
    out = reports / f"ingress-memory-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
