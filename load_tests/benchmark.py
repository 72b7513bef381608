"""Benchmark the offline pipeline: in-process engine vs the Serve HTTP API, validation cost, replicas.

Prints a table and writes JSON to load_tests/reports/. Every ratio is measured in one run on one
machine. Run with `make bench` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pipeline.audio import decode_audio
from pipeline.engines.base import SynthesisParams
from pipeline.engines.piper import PiperEngine, PiperSettings
from pipeline.engines.whisper import WhisperTranscriber
from pipeline.text import TextOptions, chunk_text

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORTS_DIR = Path(__file__).resolve().parent / "reports"

ONE_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TWELVE_SENTENCES = (
    "Morning light spread slowly across the quiet valley. A farmer walked out to check on his sheep. "
    "The grass was still wet from the rain of the night before. Birds were singing in the tall oak trees. "
    "His dog ran ahead, barking at everything it saw. Down by the river, the water was high and fast. "
    "He counted the animals twice to be sure none were missing. One young lamb had wandered off. "
    "He carried it back gently and set it beside its mother. The sun was warm when he returned home. "
    "His wife had made fresh bread and a pot of strong coffee. They sat and talked about the harvest."
)
STANDARD_COLUMNS = {"name", "runs", "p50_sec", "p95_sec", "audio_sec", "rtf"}
FAST = {"num_candidates_per_chunk": 1, "max_attempts_per_candidate": 1, "export_formats": ["wav"]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(fn, repeats: int) -> tuple[list[float], Any]:
    walls, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - started)
    return walls, result


def row(name: str, walls: list[float], audio_sec: float, **extra: Any) -> dict[str, Any]:
    p50 = statistics.median(walls)
    return {
        "name": name,
        "runs": len(walls),
        "p50_sec": round(p50, 3),
        "p95_sec": round(percentile(walls, 0.95), 3),
        "audio_sec": round(audio_sec, 2),
        "rtf": round(audio_sec / p50, 2),
        **extra,
    }


def in_process_rows(repeats: int) -> list[dict[str, Any]]:
    engine = PiperEngine(PiperSettings(cpu_threads=1))
    transcriber = WhisperTranscriber(model="bundled", cpu_threads=1)
    params = SynthesisParams(seed=1)
    rows = []
    walls, clip = timed(lambda: engine.synthesize(ONE_SENTENCE, None, params), repeats)
    rows.append(row("in-process piper, 1 sentence", walls, clip.duration_sec))
    chunks = chunk_text(TWELVE_SENTENCES, TextOptions())
    walls, clips = timed(lambda: [engine.synthesize(chunk, None, params) for chunk in chunks], 1)
    audio_sec = sum(c.duration_sec for c in clips)
    rows.append(row(f"in-process piper, 12 sentences ({len(chunks)} chunks, sequential)", walls, audio_sec))
    synth_sec = walls[0]
    walls, _ = timed(lambda: [transcriber.transcribe(c) for c in clips], 1)
    rows.append(
        row(
            "in-process whisper tiny.en on those chunks",
            walls,
            audio_sec,
            validation_over_synthesis=round(walls[0] / synth_sec, 2),
        )
    )
    return rows


def http_rows(base_url: str, repeats: int, label: str) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=base_url, timeout=900) as client:

        def tts(text: str, **fields: Any) -> float:
            response = client.post("/api/v1/tts", json={"text": text, **FAST, **fields})
            response.raise_for_status()
            return decode_audio(response.content).duration_sec

        tts("Warm up.", bypass_whisper_checking=True)
        walls, audio_sec = timed(lambda: tts(ONE_SENTENCE, bypass_whisper_checking=True), repeats)
        rows.append(row(f"HTTP {label}, 1 sentence, no validation", walls, audio_sec))
        walls, audio_sec = timed(
            lambda: tts(TWELVE_SENTENCES, bypass_whisper_checking=True), max(1, repeats // 2)
        )
        rows.append(row(f"HTTP {label}, 12 sentences, no validation", walls, audio_sec))
        walls, audio_sec = timed(lambda: tts(TWELVE_SENTENCES), max(1, repeats // 2))
        rows.append(row(f"HTTP {label}, 12 sentences, Whisper validation", walls, audio_sec))
        first_audio, whole = [], []
        for _ in range(max(1, repeats // 2)):
            started = time.perf_counter()
            with client.stream(
                "POST", "/v1/audio/speech", json={"input": TWELVE_SENTENCES, "response_format": "pcm"}
            ) as response:
                response.raise_for_status()
                received = b""
                for part in response.iter_bytes():
                    if not received:
                        first_audio.append(time.perf_counter() - started)
                    received += part
            whole.append(time.perf_counter() - started)
        audio_sec = len(received) / 2 / 24_000
        rows.append(row(f"HTTP {label}, 12 sentences, OpenAI stream: first audio", first_audio, audio_sec))
        rows.append(row(f"HTTP {label}, 12 sentences, OpenAI stream: whole", whole, audio_sec))
    return rows


def chatterbox_rows(checkpoint: Path | None) -> list[dict[str, Any]]:
    """Chatterbox on this machine: a shape-and-cost figure with random weights, not a quality one."""
    import tempfile

    import torch

    from pipeline.engines.base import VoiceRef
    from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings

    if checkpoint is None:
        # The tests' random-weight checkpoint (2-layer T3, full-size S3Gen): no hub here.
        from tests.chatterbox_checkpoint import piper_sentence, write_random_checkpoint

        checkpoint = write_random_checkpoint(Path(tempfile.mkdtemp(prefix="chatterbox-bench-")))
    else:
        from tests.chatterbox_checkpoint import piper_sentence
    engine = ChatterboxEngine.load(
        ChatterboxSettings(
            checkpoint_dir=str(checkpoint), cpu_threads=torch.get_num_threads(), max_new_tokens_cap=50
        )
    )
    voice = VoiceRef.from_clip("bench", piper_sentence("A reference voice for the benchmark run."))
    text = "Benchmarking the Chatterbox engine."
    rows = []
    for label in ("conditioning cache miss", "conditioning cache hit"):
        started = time.perf_counter()
        clip = engine.synthesize(text, voice, SynthesisParams(seed=1))
        wall = time.perf_counter() - started
        meta = clip.metadata
        rows.append(
            row(
                f"in-process chatterbox ({engine.info.device}), {label}",
                [wall],
                clip.duration_sec,
                conditioning_sec=round(meta["conditioning_sec"], 3),
                t3_tokens_per_sec=round(meta["sampled_speech_tokens"] / meta["sampling_sec"], 1),
                s3gen_rtf=round(clip.duration_sec / meta["rendering_sec"], 3),
            )
        )
    return rows


def deploy(port: int, tts_replicas: int) -> str:
    from deployments.launcher import deploy_config, load_config

    args = {
        "engine": "piper",
        "tts": {
            "num_replicas": tts_replicas,
            "autoscaling": None,
            "cpu_fallback": {"num_cpus": 0.5, "max_replicas": tts_replicas},
        },
    }
    deploy_config(load_config(REPO_ROOT / "serve_config.yaml", port=port, args_override=args))
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--skip-chatterbox", action="store_true")
    parser.add_argument(
        "--chatterbox-checkpoint",
        type=Path,
        default=None,
        help="real weights; default: a random-weight checkpoint",
    )
    options = parser.parse_args()

    from ray import serve

    from deployments.launcher import init_ray

    rows = in_process_rows(options.repeats)
    if not options.skip_chatterbox:
        rows += chatterbox_rows(options.chatterbox_checkpoint)
    init_ray(num_cpus=4)
    for replicas in (1, 2):
        base_url = deploy(options.port, replicas)
        rows += http_rows(base_url, options.repeats, f"{replicas} TTS replica{'s' * (replicas > 1)}")
    serve.shutdown()

    by_name = {r["name"]: r for r in rows}
    one_in = by_name["in-process piper, 1 sentence"]["p50_sec"]
    one_http = by_name["HTTP 1 TTS replica, 1 sentence, no validation"]["p50_sec"]
    summary = {
        "serve_overhead_ratio_1_sentence": round(one_http / one_in, 2),
        "validation_over_synthesis_http_12": round(
            by_name["HTTP 1 TTS replica, 12 sentences, Whisper validation"]["p50_sec"]
            / by_name["HTTP 1 TTS replica, 12 sentences, no validation"]["p50_sec"],
            2,
        ),
        "stream_first_audio_over_whole_12": round(
            by_name["HTTP 1 TTS replica, 12 sentences, OpenAI stream: first audio"]["p50_sec"]
            / by_name["HTTP 1 TTS replica, 12 sentences, OpenAI stream: whole"]["p50_sec"],
            2,
        ),
        "two_over_one_replica_12": round(
            by_name["HTTP 2 TTS replicas, 12 sentences, no validation"]["p50_sec"]
            / by_name["HTTP 1 TTS replica, 12 sentences, no validation"]["p50_sec"],
            2,
        ),
    }
    print_table(rows, summary)
    REPORTS_DIR.mkdir(exist_ok=True)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpu_count()},
        "timestamp": datetime.now(UTC).isoformat(),
        "rows": rows,
        "summary": summary,
    }
    path = REPORTS_DIR / f"benchmark-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON report: {path}")


def print_table(rows: list[dict[str, Any]], summary: dict[str, float]) -> None:
    header = f"{'benchmark':<66} {'runs':>4} {'p50 s':>7} {'p95 s':>7} {'audio s':>8} {'RTF':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        timings = f"{r['p50_sec']:>7.2f} {r['p95_sec']:>7.2f} {r['audio_sec']:>8.2f} {r['rtf']:>6.2f}"
        extra = "  ".join(f"{key}={value}" for key, value in r.items() if key not in STANDARD_COLUMNS)
        print(f"{r['name']:<66} {r['runs']:>4} {timings}  {extra}".rstrip())
    print()
    for key, value in summary.items():
        print(f"{key:<40} {value:>6.2f}")


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
