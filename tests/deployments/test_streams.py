"""A stream that fails after its first bytes ends in a way the client can tell."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from deployments.ingress import _sse_events
from pipeline.clip import AudioClip
from pipeline.errors import GenerationFailed

CLIP = AudioClip(np.zeros(2400, dtype=np.float32), 24_000)


def events_of(rest) -> list[dict]:
    async def collect() -> list[str]:
        return [event async for event in _sse_events(("chunk 0", CLIP), rest(), "pcm", lambda *_: None)]

    return [json.loads(event.removeprefix("data: ")) for event in asyncio.run(collect())]


def test_a_failure_mid_stream_ends_with_an_error_event_and_no_done_event():
    async def rest():
        yield "chunk 1", CLIP
        raise GenerationFailed("chunk 2 produced no audio after 2 tries")

    events = events_of(rest)
    assert [event["type"] for event in events] == ["speech.audio.delta", "speech.audio.delta", "error"]
    assert events[-1]["error"]["code"] == "GENERATION_ERROR"
    assert "chunk 2" in events[-1]["error"]["message"]


def test_a_whole_stream_ends_with_its_done_event():
    async def rest():
        yield "chunk 1", CLIP

    assert [event["type"] for event in events_of(rest)][-1] == "speech.audio.done"
