"""A bounded, headless Locust run against a local server; writes CSV and HTML reports.

Bounded in users and time so it always stops by itself, and only ever targets 127.0.0.1.
Usage: `make run` in one shell, then `make load-test` (or `python -m load_tests.run_locust -u 4 -t 60s`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_USERS = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-u", "--users", type=int, default=4)
    parser.add_argument("-r", "--spawn-rate", type=float, default=1.0)
    parser.add_argument("-t", "--run-time", default="60s")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    if not 1 <= options.users <= MAX_USERS:
        parser.error(f"--users must be between 1 and {MAX_USERS}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    reports = HERE / "reports"
    reports.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        f"http://127.0.0.1:{options.port}",
        "-u",
        str(options.users),
        "-r",
        str(options.spawn_rate),
        "-t",
        options.run_time,
        "--stop-timeout",
        "120",
        "--csv",
        str(reports / f"locust-{stamp}"),
        "--html",
        str(reports / f"locust-{stamp}.html"),
        "--only-summary",
    ]
    return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
