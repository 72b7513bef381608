"""A bounded, headless Locust run against the local server; writes CSV, HTML and a JSON summary.

Bounded in users (1-64) and time (at most 30 minutes), so it always stops by itself, and aimed at
http://127.0.0.1:<port> only: there is no option for another host. Reports go to
load_tests/reports/<name>{_stats.csv,_failures.csv,...,.html,-summary.json}. The exit code is 1
when real failures (not 503 back-pressure) pass --max-failure-rate.
Usage: `make run` in one shell, then `make load-test` (or `python -m load_tests.run_locust -u 4 -t 60s`).

Locust itself is not imported here: it monkey-patches the whole process (gevent), and
load_tests/load_table.py imports this module's names next to Ray and asyncio.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
REPORTS_DIR = HERE / "reports"
MAX_USERS = 64
MAX_RUN_SEC = 30 * 60
_TIMESPAN = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def summary_path(name: str) -> Path:
    return REPORTS_DIR / f"{name}-summary.json"


def run_seconds(text: str) -> int:
    """Locust's run-time spelling (``90``, ``45s``, ``5m``, ``1h30m``) in seconds, within the cap."""
    match = _TIMESPAN.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 45s, 5m, 1h30m)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_RUN_SEC:
        raise argparse.ArgumentTypeError(f"the run time must be 1 s to {MAX_RUN_SEC // 60} min")
    return total


def locust_command(
    port: int,
    users: int,
    spawn_rate: float,
    run_sec: int,
    name: str,
    max_failure_rate: float,
    stop_timeout_sec: int,
) -> list[str]:
    """The Locust command line: explicit values for everything that sets the target or the bounds,
    since Locust also reads LOCUST_* variables and locust.conf / pyproject.toml."""
    prefix = REPORTS_DIR / name
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        f"http://127.0.0.1:{port}",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        f"{run_sec}s",
        "--stop-timeout",
        str(stop_timeout_sec),
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--summary-json",
        str(summary_path(name)),
        "--max-failure-rate",
        str(max_failure_rate),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-u", "--users", type=int, default=4, help=f"1 to {MAX_USERS}")
    parser.add_argument("-r", "--spawn-rate", type=float, default=1.0, help="users started per second")
    parser.add_argument(
        "-t", "--run-time", type=run_seconds, default="60s", help="e.g. 45s, 5m (30 min at most)"
    )
    parser.add_argument("--port", type=int, default=8000, help="of http://127.0.0.1")
    parser.add_argument("--name", default=None, help="report file prefix (default: locust-<UTC time>)")
    parser.add_argument("--max-failure-rate", type=float, default=0.01)
    parser.add_argument(
        "--stop-timeout", type=int, default=60, help="seconds in-flight requests get to finish at the end"
    )
    options = parser.parse_args()
    if not 1 <= options.users <= MAX_USERS:
        parser.error(f"--users must be between 1 and {MAX_USERS}")
    if not 0 < options.spawn_rate <= MAX_USERS:
        parser.error(f"--spawn-rate must be above 0 and at most {MAX_USERS}")
    if not 1 <= options.port <= 65535:
        parser.error("--port must be a TCP port")
    name = options.name or f"locust-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        parser.error("--name may hold letters, digits, '.', '_' and '-' only")
    REPORTS_DIR.mkdir(exist_ok=True)
    command = locust_command(
        options.port,
        options.users,
        options.spawn_rate,
        options.run_time,
        name,
        options.max_failure_rate,
        options.stop_timeout,
    )
    # The locustfile imports load_tests.*: run from the repo root, which Locust puts on sys.path.
    code = subprocess.call(command, cwd=REPO_ROOT)
    print(f"Reports: {REPORTS_DIR / name}{{_stats.csv,_failures.csv,.html,-summary.json}}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
