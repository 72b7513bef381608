"""A thread-safe LRU of speaker conditionings, keyed by the reference audio's content hash."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Value = TypeVar("Value")


class ConditioningCache(Generic[Value]):
    """LRU with one computation per key at a time.

    functools.lru_cache would do for a single thread, but the chunks of one request reach a replica
    together: without the in-flight table, N chunks of a new voice would compute the same
    conditioning N times at once. (cachetools, which has an LRU, is not a dependency here, and
    neither it nor lru_cache shares in-flight work.)
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1; got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Value] = OrderedDict()
        self._in_flight: dict[str, Future[Value]] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: str, compute: Callable[[], Value]) -> tuple[Value, bool]:
        """The value for ``key`` and whether this call was spared computing it.

        A failed computation is not cached: its error reaches every caller that waited for it.
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], True
            pending = self._in_flight.get(key)
            if pending is None:
                pending = self._in_flight[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result(), True
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                del self._in_flight[key]
            pending.set_exception(error)
            raise
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            del self._in_flight[key]
        pending.set_result(value)
        return value, False

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
