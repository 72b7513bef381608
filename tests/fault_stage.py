"""Stages that fail on demand, deployed beside the real app to test failure handling with real
replicas: FaultyStage's ``crash`` kills the replica process, ``bug`` raises the way a code bug
does; BrokenStream fails an HTTP stream after its first bytes.

Each call first leaves a file in ``calls_dir``, so a test counts how often the input really ran.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve import Application

from pipeline.errors import GenerationFailed


class FaultyStage:
    def __init__(self, calls_dir: str) -> None:
        self._calls = Path(calls_dir)

    def run(self, kind: str) -> int:
        (self._calls / f"{kind}-{uuid.uuid4().hex}").touch()
        if kind == "crash":
            os._exit(1)
        if kind == "bug":
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return os.getpid()


def build(args: dict) -> Application:
    return serve.deployment(
        FaultyStage, name="FaultyStage", num_replicas=2, ray_actor_options={"num_cpus": 0.05}
    ).bind(args["calls_dir"])


broken_stream_api = FastAPI()


@serve.deployment(name="BrokenStream", ray_actor_options={"num_cpus": 0.05})
@serve.ingress(broken_stream_api)
class BrokenStream:
    """Streams like the speech route (chunked audio, 200 sent with the first bytes), then fails as
    a chunk that cannot be generated does: what must a client see?"""

    @broken_stream_api.get("/")
    async def stream(self) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"\0" * 4800
            await asyncio.sleep(0.2)
            raise GenerationFailed("chunk 1 produced no audio after 2 tries")

        return StreamingResponse(body(), media_type="audio/pcm")


def build_broken_stream(args: dict) -> Application:
    return BrokenStream.bind()
