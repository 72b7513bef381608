"""Per-request time limits: a late request is stopped with 504 and its work cancelled."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.concurrency import within, within_time
from pipeline.errors import GenerationTimeout


def test_work_past_its_limit_is_cancelled_with_a_504():
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    async def go() -> None:
        with pytest.raises(GenerationTimeout) as timed_out:
            await within(slow(), 0.05)
        assert timed_out.value.status_code == 504
        assert "0.05 s" in timed_out.value.message
        assert cancelled.is_set()
        assert await within(asyncio.sleep(0, result="fast"), 5) == "fast"

    asyncio.run(go())


def test_a_stream_past_its_limit_ends_with_a_504_and_is_closed():
    closed = asyncio.Event()

    async def items():
        try:
            yield 1
            yield 2
            await asyncio.sleep(30)
            yield 3
        finally:
            closed.set()

    async def go() -> list[int]:
        seen = []
        with pytest.raises(GenerationTimeout):
            async for item in within_time(items(), 0.05):
                seen.append(item)
        return seen

    assert asyncio.run(go()) == [1, 2]
    assert closed.is_set()
