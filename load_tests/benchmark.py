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
# About 5 s of Piper speech; the VC rows cut it to their source length.
VC_SOURCE_TEXT = (
    "Morning light spread slowly across the quiet valley. A farmer walked out to check on his sheep."
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


def chatterbox_checkpoint(checkpoint: Path | None) -> Path:
    """``checkpoint``, or else the tests' random-weight one (2-layer T3, full-size S3Gen): no hub here."""
    if checkpoint is not None:
        return checkpoint
    import tempfile

    from tests.chatterbox_checkpoint import write_random_checkpoint

    return write_random_checkpoint(Path(tempfile.mkdtemp(prefix="chatterbox-bench-")))


def chatterbox_rows(checkpoint: Path | None) -> list[dict[str, Any]]:
    """Chatterbox on this machine: a shape-and-cost figure with random weights, not a quality one."""
    import torch

    from pipeline.engines.base import VoiceRef
    from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings
    from tests.chatterbox_checkpoint import piper_sentence

    checkpoint = chatterbox_checkpoint(checkpoint)
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


def vc_in_process(
    checkpoint: Path | None, source_sec: float = 4.0, chunk_sec: float = 2.0, overlap_sec: float = 0.25
) -> list[dict[str, Any]]:
    """Chatterbox VC (S3Gen) in this process: one engine call on the whole source, then the same
    source through VoiceConversionPipeline's windows, converted concurrently in threads (as one
    replica's thread pool would). Random weights: a cost figure, not a quality one."""
    import asyncio

    import numpy as np
    import torch

    from pipeline.clip import AudioClip
    from pipeline.conversion import VoiceConversionPipeline, plan_windows
    from pipeline.engines.base import ConversionParams, VoiceRef
    from pipeline.engines.chatterbox import ChatterboxSettings
    from pipeline.engines.chatterbox_vc import ChatterboxVCEngine
    from tests.chatterbox_checkpoint import piper_sentence

    threads = torch.get_num_threads()
    engine = ChatterboxVCEngine.load(
        ChatterboxSettings(checkpoint_dir=str(chatterbox_checkpoint(checkpoint)), cpu_threads=threads)
    )
    speech = piper_sentence(VC_SOURCE_TEXT)
    source = AudioClip(np.resize(speech.samples, round(source_sec * speech.sample_rate)), speech.sample_rate)
    target = VoiceRef.from_clip("bench", piper_sentence("A reference voice for the benchmark run."))
    label = f"in-process chatterbox VC ({engine.info.device}), {source.duration_sec:.0f} s"
    # torch's first pass through S3Gen costs seconds more than later ones; keep that out of the rows.
    warm_up = VoiceRef.from_clip("warm-up", target.audio.with_samples(0.9 * target.audio.samples))
    engine.convert(
        source.with_samples(source.samples[: source.sample_rate // 2]), warm_up, ConversionParams(seed=1)
    )
    rows = []
    for cache in ("target cache miss", "target cache hit"):
        started = time.perf_counter()
        clip = engine.convert(source, target, ConversionParams(seed=1))
        wall = time.perf_counter() - started
        meta = clip.metadata
        rows.append(
            row(
                f"{label}, one call, {cache}",
                [wall],
                clip.duration_sec,
                conditioning_sec=round(meta["conditioning_sec"], 3),
                tokenize_sec=round(meta["tokenize_sec"], 3),
                s3gen_rtf=round(clip.duration_sec / meta["rendering_sec"], 3),
                target_sec=round(target.audio.duration_sec, 2),
                threads=threads,
            )
        )

    async def convert_in_thread(
        piece: AudioClip, voice: VoiceRef | None, params: ConversionParams
    ) -> AudioClip:
        return await asyncio.to_thread(engine.convert, piece, voice, params)

    pipeline = VoiceConversionPipeline(convert_in_thread, sample_rate=engine.info.sample_rate)
    windows = plan_windows(
        round(source.duration_sec * engine.info.sample_rate), engine.info.sample_rate, chunk_sec, overlap_sec
    )
    started = time.perf_counter()
    result = asyncio.run(pipeline.run(source, target, 1, True, chunk_sec, overlap_sec))
    wall = time.perf_counter() - started
    rows.append(
        row(
            f"{label}, windows of {chunk_sec:g} s + {overlap_sec:g} s",
            [wall],
            result.audio.duration_sec,
            windows=len(windows),
            converted_sec=round(sum(w.num_samples for w in windows) / engine.info.sample_rate, 2),
            threads=threads,
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


def vc_http_rows(checkpoint: Path, port: int, source_sec: float = 4.0) -> list[dict[str, Any]]:
    """``POST /api/v1/vc`` on the Chatterbox app (random checkpoint), 1 and 2 VC replicas: the same
    source as the in-process rows, windows of 2 s + 0.25 s spread over the replicas."""
    import tempfile

    import numpy as np
    import soundfile

    from deployments.launcher import deploy_config, load_config
    from tests.chatterbox_checkpoint import piper_sentence

    data = Path(tempfile.mkdtemp(prefix="chatterbox-bench-data-"))
    for folder in ("voices", "vc_inputs", "outputs"):
        (data / folder).mkdir()
    speech = piper_sentence(VC_SOURCE_TEXT)
    source = np.resize(speech.samples, round(source_sec * speech.sample_rate))
    soundfile.write(data / "vc_inputs" / "source.wav", source, speech.sample_rate)
    target = piper_sentence("A reference voice for the benchmark run.")
    soundfile.write(data / "voices" / "target.wav", target.samples, target.sample_rate)
    body = {
        "input_audio_source": "source.wav",
        "target_voice_source": "target.wav",
        "chunk_sec": 2,
        "overlap_sec": 0.25,
        "seed": 1,
        "export_formats": ["wav"],
    }
    rows = []
    for replicas in (1, 2):
        args = {
            "engine": "chatterbox",
            "chatterbox": {"checkpoint_dir": str(checkpoint), "download": False},
            "voices_dir": str(data / "voices"),
            "vc_inputs_dir": str(data / "vc_inputs"),
            "outputs_dir": str(data / "outputs"),
            "vc": {"num_replicas": replicas, "autoscaling": None, "cpu_fallback": {"max_replicas": replicas}},
        }
        deploy_config(load_config(REPO_ROOT / "serve_config.yaml", port=port, args_override=args))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
            # The first call warms torch and fills both the target cache and every replica.
            for _ in range(replicas):
                client.post("/api/v1/vc", json=body).raise_for_status()

            def convert() -> float:
                response = client.post("/api/v1/vc", json=body)
                response.raise_for_status()
                return float(response.headers["x-audio-duration-sec"])

            walls, audio_sec = timed(convert, 2)
        rows.append(
            row(
                f"HTTP chatterbox VC, {replicas} VC replica{'s' * (replicas > 1)}, {source_sec:g} s",
                walls,
                audio_sec,
            )
        )
    return rows


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
        checkpoint = chatterbox_checkpoint(options.chatterbox_checkpoint)
        rows += chatterbox_rows(checkpoint)
        rows += vc_in_process(checkpoint)
    init_ray(num_cpus=4)
    if not options.skip_chatterbox:
        rows += vc_http_rows(checkpoint, options.port)
        serve.shutdown()
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
    if not options.skip_chatterbox:
        vc_one = by_name["HTTP chatterbox VC, 1 VC replica, 4 s"]["p50_sec"]
        summary["vc_two_over_one_replica"] = round(
            by_name["HTTP chatterbox VC, 2 VC replicas, 4 s"]["p50_sec"] / vc_one, 2
        )
        windowed = next(
            r for r in rows if r["name"].startswith("in-process chatterbox VC") and "windows" in r
        )
        summary["vc_http_over_in_process_windows"] = round(vc_one / windowed["p50_sec"], 2)
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
