"""The figures of one Locust run that the README tables need, from Locust's own request stats.

Locust counts every non-2xx as a failure; here a 503 with ``Retry-After`` (the service refusing
work past capacity, as designed) is kept apart from real failures, so a run reports both rates.
The totals are the mix's alone: each user's setup requests (named with ``[setup]``) are left out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from locust.stats import RequestStats, StatsEntry, sort_stats

BACK_PRESSURE = "503 back-pressure"
SETUP = "[setup]"


def summarize(stats: RequestStats) -> dict[str, Any]:
    """Requests/s, p50/p95 latency, real failures and back-pressure 503s: in total and per request."""
    refused: Counter[tuple[str, str]] = Counter()
    for error in stats.errors.values():
        # Standalone runs keep the CatchResponseError itself, distributed ones its repr: str() has both.
        if BACK_PRESSURE in str(error.error):
            refused[(error.method, error.name)] += error.occurrences
    entries = sort_stats(stats.entries)
    mix = StatsEntry(stats, "Aggregated (mix)", "")
    for entry in entries:
        if SETUP not in entry.name:
            mix.extend(entry)
    mix_refused = sum(count for (_, name), count in refused.items() if SETUP not in name)
    endpoints = [
        {**_figures(entry, refused[(entry.method, entry.name)]), "setup": SETUP in entry.name}
        for entry in entries
    ]
    return {**_figures(mix, mix_refused), "endpoints": endpoints}


def _figures(entry: StatsEntry, back_pressure: int) -> dict[str, Any]:
    requests = entry.num_requests
    failures = entry.num_failures - back_pressure
    return {
        "name": entry.name,
        "method": entry.method,
        "requests": requests,
        "requests_per_sec": round(entry.total_rps, 3),
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "failures": failures,
        "failure_rate": round(failures / requests, 4) if requests else 0.0,
        "back_pressure_503": back_pressure,
        "back_pressure_rate": round(back_pressure / requests, 4) if requests else 0.0,
    }
