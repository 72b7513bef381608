"""A stage that fails on demand, deployed beside the real app to test the stage-call rules with
real replicas: ``crash`` kills the replica process, ``bug`` raises the way a code bug does.

Each call first leaves a file in ``calls_dir``, so a test counts how often the input really ran.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ray import serve
from ray.serve import Application


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
