"""Back-pressure check: a burst of concurrent requests past the service's admission capacity.

What a client past capacity must see: a quick 503 with ``Retry-After`` and the service's error
JSON, never a long wait or a timeout, while the admitted requests still answer 200; and right after
the burst, a normal answer. Asyncio rather than Locust: the burst must start all at once, and every
refused response's headers and body are inspected.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

import httpx

SHORT_REQUEST = {
    "model": "tts-1",
    "voice": "alloy",
    "input": "The quick brown fox jumps over the lazy dog. It landed softly in the tall grass.",
    "response_format": "mp3",
}
ERROR_FIELDS = {"message", "type", "code", "param"}


async def _timed(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.post("/v1/audio/speech", json=SHORT_REQUEST)
    return response, time.perf_counter() - started


def _latency(walls: list[float]) -> dict[str, float] | None:
    if not walls:
        return None
    return {"p50_sec": round(statistics.median(walls), 3), "max_sec": round(max(walls), 3)}


def _error_code(response: httpx.Response) -> str | None:
    """The error code where the body has the service's error shape, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("success") is not False:
        return None
    error = body.get("error")
    return str(error["code"]) if isinstance(error, dict) and error.keys() >= ERROR_FIELDS else None


async def fire(base_url: str, concurrency: int, timeout_sec: float = 300) -> dict[str, Any]:
    """``concurrency`` short OpenAI requests at once, then one more after all have answered."""
    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_sec, limits=limits) as client:
        await _timed(client)  # warm: the first request of a fresh deployment pays one-off costs
        answers = await asyncio.gather(*(_timed(client) for _ in range(concurrency)))
        after, after_sec = await _timed(client)
    refused = [(response, wall) for response, wall in answers if response.status_code == 503]
    codes = [_error_code(response) for response, _ in refused]
    return {
        "concurrent_requests": concurrency,
        "status_counts": dict(Counter(str(response.status_code) for response, _ in answers)),
        "ok_latency": _latency([wall for response, wall in answers if response.status_code == 200]),
        "rejected_latency": _latency([wall for _, wall in refused]),
        "every_503_has_retry_after": all(response.headers.get("Retry-After") for response, _ in refused),
        "retry_after_values": sorted({response.headers.get("Retry-After", "") for response, _ in refused}),
        "every_503_has_error_json": all(code is not None for code in codes),
        "error_codes": sorted({code for code in codes if code is not None}),
        "after_burst": {"status": after.status_code, "latency_sec": round(after_sec, 3)},
    }
