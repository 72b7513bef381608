"""Running the parts of one request side by side, so that one failure stops them all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import TypeVar

from pipeline.errors import GenerationTimeout

T = TypeVar("T")


async def all_or_nothing(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, or the first error with the others cancelled (their TTS calls stop too).

    ``asyncio.gather`` leaves the siblings of a failed task running; a TaskGroup cancels them
    but raises an ExceptionGroup, which would hide the ServiceError the handlers answer with.
    """
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """The awaitable's result, or GenerationTimeout (504) once ``seconds`` have passed; the work
    is cancelled then (a pipeline job's chunk tasks and their stage calls with it)."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise timed_out(seconds) from None


async def within_time(items: AsyncGenerator[T, None], seconds: float) -> AsyncGenerator[T, None]:
    """The items of a stream until ``seconds`` after the first is asked for, then GenerationTimeout;
    the stream is closed either way (a pipeline stream cancels its chunks when closed)."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await anext(items)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise timed_out(seconds) from None
            yield item
    finally:
        await items.aclose()


def timed_out(seconds: float) -> GenerationTimeout:
    return GenerationTimeout(
        f"the request did not finish within this server's limit of {seconds:g} s "
        "(limits.request_timeout_sec); send a shorter text, or fewer candidates"
    )
