"""Locust users for the TTS service: the request mix a real client population sends.

Short OpenAI mp3s, long validated native requests, OpenAI SSE streams, voice listings and, where
the engine has a voice-conversion model, VC. Every response is checked (status, and that audio came
back); a 503 with ``Retry-After`` is reported as the failure ``503 back-pressure``, apart from real
failures (see locust_summary.py). Targets 127.0.0.1 only: load_tests/run_locust.py sets the host,
and a user refuses to start against any other.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.exception import RescheduleTaskImmediately, StopTest

from load_tests.locust_summary import BACK_PRESSURE, SETUP, summarize

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve spreads the chunks of one request over every TTS replica.",
    "Each chunk is checked with Whisper and regenerated if the words do not match.",
    "Long articles and audiobooks are split into sentences before synthesis.",
    "Morning light spread slowly across the quiet valley.",
    "A farmer walked out to check on his sheep before breakfast.",
    "The river was high and fast after the rain of the night before.",
    "She packed a small bag and caught the early train to the coast.",
]
Check = Callable[[ResponseContextManager], str | None]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--summary-json", default="", help="write the run's figures here as JSON")
    parser.add_argument(
        "--max-failure-rate",
        type=float,
        default=0.01,
        help="exit 1 when real failures (not 503 back-pressure) exceed this fraction of requests",
    )


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    """The run's figures, and its exit code: back-pressure 503s alone do not fail a run, an empty one does."""
    summary = summarize(environment.stats)
    options = environment.parsed_options
    print(
        f"Real failures: {summary['failures']} ({summary['failure_rate']:.1%}); "
        f"503 back-pressure: {summary['back_pressure_503']} ({summary['back_pressure_rate']:.1%})"
    )
    if options.summary_json:
        Path(options.summary_json).write_text(json.dumps(summary, indent=2))
    failed = summary["requests"] == 0 or summary["failure_rate"] > options.max_failure_rate
    environment.process_exit_code = int(failed)


def settle(response: ResponseContextManager, check: Check) -> None:
    """Mark a caught response: back-pressure, a real failure (named by its error code), or success."""
    if response.status_code == 0:
        return  # no HTTP answer at all: Locust reports the connection error itself
    if response.status_code == 503 and response.headers.get("Retry-After"):
        response.failure(BACK_PRESSURE)
    elif response.status_code != 200:
        response.failure(f"HTTP {response.status_code} {_error_code(response)}")
    elif problem := _problem(check, response):
        response.failure(problem)
    else:
        response.success()


def _problem(check: Check, response: ResponseContextManager) -> str | None:
    try:
        return check(response)
    except ValueError as error:  # a body or header that does not parse (JSON, base64, a number)
        return f"unreadable response: {error}"


def _error_code(response: ResponseContextManager) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:80]


def audio_of(media_type: str) -> Check:
    def check(response: ResponseContextManager) -> str | None:
        if not response.headers.get("Content-Type", "").startswith(media_type):
            return f"expected {media_type}, got {response.headers.get('Content-Type')}"
        return None if response.content else "empty audio body"

    return check


def validated_wav(response: ResponseContextManager) -> str | None:
    if problem := audio_of("audio/wav")(response):
        return problem
    if response.headers.get("X-Validation") != "whisper":
        return f"not validated (X-Validation: {response.headers.get('X-Validation')})"
    return None if float(response.headers.get("X-Audio-Duration-Sec", 0)) > 0 else "no audio duration"


def complete_sse(response: ResponseContextManager) -> str | None:
    """A whole OpenAI speech event stream: audio deltas, then ``speech.audio.done`` last."""
    events_seen = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    audio = sum(len(base64.b64decode(event.get("audio", ""))) for event in events_seen)
    if not events_seen or events_seen[-1].get("type") != "speech.audio.done":
        return "stream ended without speech.audio.done"
    return None if audio else "no audio in the stream"


def voice_listing(response: ResponseContextManager) -> str | None:
    return None if isinstance(response.json().get("voices"), list) else "no voices list"


class SpeechUser(HttpUser):
    host = "http://127.0.0.1:8000"
    wait_time = between(0.5, 2.0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if urlsplit(self.host).hostname != "127.0.0.1":
            raise StopTest(f"load tests target 127.0.0.1 only, not {self.host}")
        self.vc_source: bytes | None = None

    def on_start(self) -> None:
        """VC joins the mix only where the engine has a VC model; its input is speech from the service."""
        health = self.client.get("/api/v1/health", name=f"/api/v1/health {SETUP}")
        try:
            vc = health.json()["engines"]["vc"]
        except (ValueError, KeyError):
            return  # no health report: the mix runs without VC, and its other requests say why
        if vc.get("available") is False or vc.get("name") in ("none", "unavailable"):
            return
        speech = self.client.post(
            "/v1/audio/speech",
            json={"input": SENTENCES[4], "response_format": "wav"},
            name=f"/v1/audio/speech [VC source] {SETUP}",
        )
        if speech.status_code == 200:
            self.vc_source = speech.content
        else:
            logging.warning("no VC source (HTTP %s): VC left out of this user's mix", speech.status_code)

    @task(4)
    def openai_short(self) -> None:
        with self.client.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": random.choice(SENTENCES),
                "response_format": "mp3",
            },
            name="/v1/audio/speech [1 sentence, mp3]",
            catch_response=True,
        ) as response:
            settle(response, audio_of("audio/mpeg"))

    @task(2)
    def native_long(self) -> None:
        with self.client.post(
            "/api/v1/tts",
            json={
                "text": " ".join(random.sample(SENTENCES, k=5)),
                "num_candidates_per_chunk": 1,
                "max_attempts_per_candidate": 2,
                "export_formats": ["wav"],
            },
            name="/api/v1/tts [5 sentences, validated]",
            catch_response=True,
        ) as response:
            settle(response, validated_wav)

    @task(2)
    def openai_sse(self) -> None:
        with self.client.post(
            "/v1/audio/speech",
            json={
                "input": " ".join(random.sample(SENTENCES, k=3)),
                "response_format": "pcm",
                "stream_format": "sse",
            },
            name="/v1/audio/speech [3 sentences, SSE]",
            catch_response=True,
        ) as response:
            settle(response, complete_sse)

    @task(1)
    def voices(self) -> None:
        with self.client.get("/api/v1/voices", name="/api/v1/voices", catch_response=True) as response:
            settle(response, voice_listing)

    @task(1)
    def voice_conversion(self) -> None:
        if self.vc_source is None:
            raise RescheduleTaskImmediately()
        with self.client.post(
            "/api/v1/vc",
            files={"input_audio": ("source.wav", self.vc_source, "audio/wav")},
            data={"export_formats": "wav", "seed": "1"},
            name="/api/v1/vc [1 sentence, multipart]",
            catch_response=True,
        ) as response:
            settle(response, audio_of("audio/wav"))
