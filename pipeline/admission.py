"""Admission control: how many synthesis requests one ingress replica works on, and holds waiting.

Serve's own ``max_queued_requests`` answers 503 from the proxy without ``Retry-After`` and
without our error shape, and it counts every route (health, voice lists) alike. So the ingress
admits synthesis requests itself: up to ``max_active`` run, up to ``max_waiting`` more wait in
arrival order, and anything past that is refused at once, before any work, with a 503 that
says when to come back. Serve's limits stay as the last line behind this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pipeline.errors import Overloaded


class AdmissionGate:
    """``on_change`` is called each time the running or waiting count changes (queue-depth
    gauges follow the gate instead of being polled)."""

    def __init__(
        self,
        max_active: int,
        max_waiting: int,
        retry_after_sec: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_active)
        self._max_waiting = max_waiting
        self._retry_after_sec = retry_after_sec
        self._on_change = on_change
        self.max_active = max_active
        self.active = 0
        self.waiting = 0
        self.refused = 0

    async def acquire(self) -> None:
        """Take a slot, waiting in line if there is room in the line; refuse with 503 if not.

        A streamed response holds its slot until the stream ends, so routes that stream call
        this and ``release`` themselves instead of using ``admit``.
        """
        if self._slots.locked() and self.waiting >= self._max_waiting:
            self.refused += 1
            raise Overloaded(
                f"the server is at capacity ({self.active} requests running, {self.waiting} waiting); "
                f"retry in {self._retry_after_sec} s",
                retry_after_sec=self._retry_after_sec,
            )
        self.waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
            self.active += 1
        finally:
            self.waiting -= 1
            self._changed()

    def release(self) -> None:
        self.active -= 1
        self._slots.release()
        self._changed()

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def snapshot(self) -> dict[str, int]:
        return {
            "active": self.active,
            "waiting": self.waiting,
            "max_active": self.max_active,
            "max_waiting": self._max_waiting,
            "refused": self.refused,
        }

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class DrainingGate:
    """Admission on an ingress replica that is stopping (user_config ``draining: true``, set by the
    launcher on SIGTERM): every new synthesis request is refused with 503 SERVER_DRAINING and a
    Retry-After, while the requests admitted before finish in the gate that let them in."""

    def __init__(self, admitted: AdmissionGate, retry_after_sec: int) -> None:
        self.admitted = admitted
        self._retry_after_sec = retry_after_sec
        self.refused = 0

    async def acquire(self) -> None:
        self.refused += 1
        raise Overloaded(
            f"the server is stopping and takes no new requests; retry in {self._retry_after_sec} s",
            retry_after_sec=self._retry_after_sec,
            code="SERVER_DRAINING",
        )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        await self.acquire()
        yield  # never reached: a draining replica admits nothing

    def snapshot(self) -> dict[str, Any]:
        return {**self.admitted.snapshot(), "draining": True, "refused_draining": self.refused}
