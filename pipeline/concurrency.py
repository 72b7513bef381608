"""Running the parts of one request side by side, so that one failure stops them all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

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
