"""Batched Chatterbox generation: T3 tokens/s and real-time factor by batch size, batched vs unbatched.

Random-weight checkpoints (no model hub here; speed depends on shapes, not weights): the tests'
2-layer T3 and, with ``--t3-layers 30``, a full-size one. "Unbatched" is the same engine with
``max_batch_size`` 1: concurrent requests then take turns in the loop, as one chunk per forward
pass did before batching. Every ratio comes from one run on one machine.

Rows:
- T3 alone (the engine loop, no S3Gen): B requests submitted together, tokens/s;
- end to end in process: B concurrent ``synthesize`` calls (T3 batched, S3Gen in their threads);
- time to first audio of an incremental render vs the whole chunk (``--skip-streaming`` to omit);
- over HTTP (``--http``): 8 concurrent requests vs the same 8 one after another on one TTS
  replica, with the audio compared byte for byte.

Prints a table, writes JSON to load_tests/reports/. ``make bench-batching`` runs the default set.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
REPO_ROOT = Path(__file__).resolve().parent.parent
TEXT = "Batching many chunks per forward pass."
BATCH_SIZES = (1, 2, 4, 8, 16)


def load_engine(checkpoint: Path, max_batch_size: int, tokens: int):
    import torch

    from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings

    return ChatterboxEngine.load(
        ChatterboxSettings(
            checkpoint_dir=str(checkpoint),
            cpu_threads=torch.get_num_threads(),
            max_new_tokens_cap=tokens,
            max_batch_size=max_batch_size,
        )
    )


def t3_rows(engine, tokens: int, batch_sizes: tuple[int, ...], label: str) -> list[dict[str, Any]]:
    """B jobs submitted at once to the engine loop; tokens/s over all of them."""
    import torch

    from pipeline.engines.base import SynthesisParams
    from pipeline.engines.t3_scheduler import BatchLimits, DecodeJob

    model = engine.model
    text_tokens = model.text_tokens(TEXT)
    rows = []
    for batch in batch_sizes:
        engine.scheduler.configure(BatchLimits(max_batch_size=batch if label == "batched" else 1))
        jobs = [
            DecodeJob(
                model.builtin_voice.for_request(0.5),
                text_tokens,
                SynthesisParams(seed=seed),
                tokens,
                torch.Generator().manual_seed(seed),
            )
            for seed in range(batch)
        ]
        started = time.perf_counter()
        futures = [engine.scheduler.submit(job) for job in jobs]  # all queued before any is done
        results = [future.result() for future in futures]
        wall = time.perf_counter() - started
        sampled = sum(result.sampled for result in results)
        rows.append(
            {
                "name": f"T3 {label}, {batch} at once",
                "batch": batch,
                "wall_sec": round(wall, 2),
                "t3_tokens_per_sec": round(sampled / wall, 1),
                "peak_batch": max(result.peak_batch for result in results),
            }
        )
    return rows


def end_to_end_rows(engine, batch_sizes: tuple[int, ...], label: str) -> list[dict[str, Any]]:
    """B concurrent synthesize calls (as a replica's requests are); real-time factor of the lot."""
    from pipeline.engines.base import SynthesisParams
    from pipeline.engines.t3_scheduler import BatchLimits

    rows = []
    for batch in batch_sizes:
        engine.scheduler.configure(BatchLimits(max_batch_size=batch if label == "batched" else 1))
        started = time.perf_counter()
        with ThreadPoolExecutor(batch) as pool:
            clips = list(
                pool.map(lambda seed: engine.synthesize(TEXT, None, SynthesisParams(seed=seed)), range(batch))
            )
        wall = time.perf_counter() - started
        audio = sum(clip.duration_sec for clip in clips)
        rows.append(
            {
                "name": f"end to end {label}, {batch} concurrent",
                "batch": batch,
                "wall_sec": round(wall, 2),
                "audio_sec": round(audio, 2),
                "rtf": round(audio / wall, 3),
                "s3gen_sec_per_request": round(sum(c.metadata["rendering_sec"] for c in clips) / batch, 2),
                "peak_batch": max(clip.metadata["t3_peak_batch"] for clip in clips),
            }
        )
    return rows


def streaming_rows(engine, tokens: int) -> list[dict[str, Any]]:
    """First audio of an incremental render vs the whole chunk (T3 running in the loop)."""
    from pipeline.engines.base import SynthesisParams

    started = time.perf_counter()
    whole = engine.synthesize(TEXT, None, SynthesisParams(seed=1))
    whole_sec = time.perf_counter() - started
    started = time.perf_counter()
    first = None
    total = 0
    for block in engine.synthesize_incrementally(TEXT, None, SynthesisParams(seed=1)):
        if first is None:
            first = time.perf_counter() - started
        total += len(block.samples)
    streamed_sec = time.perf_counter() - started
    return [
        {
            "name": f"incremental audio, {tokens} tokens",
            "first_audio_sec": round(first or 0.0, 2),
            "whole_chunk_sec": round(whole_sec, 2),
            "streamed_total_sec": round(streamed_sec, 2),
            "first_audio_over_whole": round((first or 0.0) / whole_sec, 2),
            "audio_sec": round(total / whole.sample_rate, 2),
        }
    ]


def http_rows(checkpoint: Path, port: int, tokens: int, concurrency: int = 8) -> list[dict[str, Any]]:
    """``concurrency`` requests at once vs one after another, one TTS replica; audio compared."""
    import httpx
    from ray import serve

    from deployments.launcher import deploy_config, init_ray, load_config

    init_ray(num_cpus=4)
    data = Path(tempfile.mkdtemp(prefix="batching-bench-data-"))
    args = {
        "engine": "chatterbox",
        "chatterbox": {"checkpoint_dir": str(checkpoint), "download": False, "max_new_tokens": tokens},
        "voices_dir": str(data / "voices"),
        "vc_inputs_dir": str(data / "vc_inputs"),
        "outputs_dir": str(data / "outputs"),
        "tts": {"num_replicas": 1, "autoscaling": None, "cpu_fallback": {"num_cpus": 1, "max_replicas": 1}},
    }
    deploy_config(load_config(REPO_ROOT / "serve_config.yaml", port=port, args_override=args))
    body = {
        "bypass_whisper_checking": True,
        "num_candidates_per_chunk": 1,
        "max_attempts_per_candidate": 1,
        "export_formats": ["wav"],
    }
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1800) as client:

        def speak(seed: int) -> bytes:
            response = client.post("/api/v1/tts", json={"text": f"{TEXT} {seed}", "seed": seed, **body})
            response.raise_for_status()
            return response.content

        speak(0)  # warm up torch
        started = time.perf_counter()
        sequential = [speak(seed) for seed in range(1, concurrency + 1)]
        sequential_sec = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            concurrent = list(pool.map(speak, range(1, concurrency + 1)))
        concurrent_sec = time.perf_counter() - started
    serve.shutdown()
    return [
        {
            "name": f"HTTP, {concurrency} requests, 1 TTS replica",
            "sequential_sec": round(sequential_sec, 2),
            "concurrent_sec": round(concurrent_sec, 2),
            "speedup": round(sequential_sec / concurrent_sec, 2),
            "byte_identical": sequential == concurrent,
        }
    ]


def ratios(rows: list[dict[str, Any]], key: str, kind: str) -> dict[str, float]:
    by_batch = {
        (row["name"].split(",")[0], row["batch"]): row[key] for row in rows if row["name"].startswith(kind)
    }
    return {
        f"{kind} batched/unbatched {key} at {batch}": round(by_batch[(f"{kind} batched", batch)] / value, 2)
        for (name, batch), value in by_batch.items()
        if name == f"{kind} unbatched" and (f"{kind} batched", batch) in by_batch
    }


def print_rows(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    for row in rows:
        fields = "  ".join(f"{key}={value}" for key, value in row.items() if key != "name")
        print(f"{row['name']:<42} {fields}")
    print()
    for key, value in summary.items():
        print(f"{key:<56} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a random-weight one")
    parser.add_argument(
        "--t3-layers", type=int, default=2, help="random checkpoint's T3 depth (30: full size)"
    )
    parser.add_argument("--tokens", type=int, default=50, help="speech tokens per chunk (25 = 1 s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--e2e-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--t3-only", action="store_true", help="only the T3 rows (e.g. with --t3-layers 30)")
    parser.add_argument("--http", action="store_true", help="also 8 requests over HTTP (Serve on --port)")
    parser.add_argument("--port", type=int, default=8766)
    options = parser.parse_args()
    from pipeline.engines.base import SynthesisParams

    checkpoint = options.checkpoint
    if checkpoint is None:
        from tests.chatterbox_checkpoint import write_random_checkpoint

        directory = Path(tempfile.mkdtemp(prefix="batching-bench-"))
        checkpoint = write_random_checkpoint(directory, t3_layers=options.t3_layers)
    engine = load_engine(checkpoint, max(options.batch_sizes), options.tokens)
    engine.synthesize("Warm up.", None, SynthesisParams(seed=0))
    batch_sizes = tuple(options.batch_sizes)
    rows = t3_rows(engine, options.tokens, batch_sizes, "unbatched")
    rows += t3_rows(engine, options.tokens, batch_sizes, "batched")
    if not options.t3_only:
        e2e = tuple(options.e2e_batch_sizes)
        rows += end_to_end_rows(engine, e2e, "unbatched") + end_to_end_rows(engine, e2e, "batched")
        if not options.skip_streaming:
            rows += streaming_rows(engine, options.tokens)
        if options.http:
            rows += http_rows(checkpoint, options.port, options.tokens)
    summary = {**ratios(rows, "t3_tokens_per_sec", "T3"), **ratios(rows, "rtf", "end to end")}
    print_rows(rows, summary)
    import torch

    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "device": engine.info.device,
            "t3_layers": engine.info.details["t3_layers"],
        },
        "timestamp": datetime.now(UTC).isoformat(),
        "tokens_per_chunk": options.tokens,
        "rows": rows,
        "summary": summary,
    }
    REPORTS_DIR.mkdir(exist_ok=True)
    path = REPORTS_DIR / f"batching-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON report: {path}")


if __name__ == "__main__":
    main()
