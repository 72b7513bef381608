"""Locust users for the TTS service: OpenAI-dialect and native requests, short and long texts.

Targets 127.0.0.1 only (the host is set by load_tests/run_locust.py).
"""

from __future__ import annotations

import random

from locust import HttpUser, between, task

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve spreads the chunks of one request over every TTS replica.",
    "Each chunk is checked with Whisper and regenerated if the words do not match.",
    "Long articles and audiobooks are split into sentences before synthesis.",
]


class SpeechUser(HttpUser):
    wait_time = between(0.5, 2.0)

    @task(3)
    def openai_short(self) -> None:
        self.client.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": random.choice(SENTENCES),
                "response_format": "mp3",
            },
            name="/v1/audio/speech [1 sentence, mp3]",
        )

    @task(1)
    def native_paragraph(self) -> None:
        self.client.post(
            "/api/v1/tts",
            json={
                "text": " ".join(random.sample(SENTENCES, k=3)),
                "num_candidates_per_chunk": 1,
                "max_attempts_per_candidate": 2,
                "export_formats": ["wav"],
            },
            name="/api/v1/tts [3 sentences, validated]",
        )
