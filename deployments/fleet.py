"""What the ingress knows about each stage's replicas: their own reports, keyed by replica id, kept briefly.

A stage is a fleet, not one engine: replicas sit on different nodes and GPUs, a redeploy replaces
them, and mid-rollout old and new engines serve side by side. So every replica reports itself
(:class:`ReplicaReport`: engine, device, assigned GPUs, node) and the ingress keeps those reports in
a :class:`FleetView` for :data:`REPORT_TTL_SEC`, dropping replicas that Serve no longer runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from pipeline.devices import ray_gpu_assignment
from pipeline.engines.base import EngineInfo

logger = logging.getLogger("ray.serve")

# How long a replica's report stands for it. Short, so a redeploy (a new engine, a new GPU layout)
# shows within half a minute even on the request path, which asks for a fresh report only once per
# TTL; long enough that requests do not pay an extra stage call each.
REPORT_TTL_SEC = 30.0
# Serve's router picks the replica of each call, at random among the least busy. With two calls per
# running replica, a round misses a given replica about 1 time in 7 (e^-2); three rounds, 1 in 400.
SURVEY_ROUNDS = 3
CALLS_PER_REPLICA = 2

# Replica id -> node id, for the replicas of one deployment that Serve runs now.
RunningReplicas = Mapping[str, str | None]


@dataclass(frozen=True)
class ReplicaIdentity:
    """Which replica this is and what Ray gave it; all empty outside Serve (a script, a unit test)."""

    replica_id: str | None
    node_id: str | None
    assigned_gpus: tuple[str, ...]

    @classmethod
    def current(cls) -> ReplicaIdentity:
        try:
            replica_id = serve.get_replica_context().replica_id.unique_id
        except RayServeException:
            return cls(None, None, ())
        assignment = ray_gpu_assignment()
        return cls(
            replica_id, ray.get_runtime_context().get_node_id(), assignment.gpu_ids if assignment else ()
        )


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's engine and where it runs; ``engine.device`` is the device it really uses."""

    replica: ReplicaIdentity
    engine: EngineInfo


def engine_fields(engine: EngineInfo) -> dict[str, Any]:
    """An engine as /api/v1/health shows it: its fields, then its details."""
    return {
        "name": engine.name,
        "model": engine.model,
        "device": engine.device,
        "sample_rate": engine.sample_rate,
        "supports_cloning": engine.supports_cloning,
        **engine.details,
    }


class FleetView:
    """One stage's replicas as they last described themselves, fresh for ``ttl_sec``.

    ``fetch`` asks one replica (whichever Serve's router picks) for its report. Requests read
    :meth:`engine`; /api/v1/health reads :meth:`health`, which asks until every running replica
    has answered. Concurrent callers share one fetch rather than each sending their own.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[ReplicaReport]],
        ttl_sec: float = REPORT_TTL_SEC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_sec = ttl_sec
        self._clock = clock
        self._reports: dict[str | None, tuple[float, ReplicaReport]] = {}
        self._pending: asyncio.Future[ReplicaReport] | None = None

    def record(self, report: ReplicaReport) -> None:
        self._reports[report.replica.replica_id] = (self._clock(), report)

    def retain(self, running: RunningReplicas) -> None:
        """Forget replicas that Serve no longer runs (stopped, replaced by a redeploy, lost with a node)."""
        self._reports = {key: entry for key, entry in self._reports.items() if key in running}

    def fresh(self) -> list[ReplicaReport]:
        """Reports younger than the TTL, oldest first; older ones are dropped."""
        now = self._clock()
        self._reports = {
            key: (at, report) for key, (at, report) in self._reports.items() if now - at < self._ttl_sec
        }
        return [report for _, report in sorted(self._reports.values(), key=lambda entry: entry[0])]

    def summary(self) -> EngineInfo | None:
        """The engine most fresh replicas run (the newest report breaks ties); None if none is fresh."""
        engines = [report.engine for report in self.fresh()]
        if not engines:
            return None
        return max(reversed(engines), key=engines.count)

    def agree(self) -> bool:
        """Whether every fresh replica runs the same engine on the same kind of device (not mid-rollout)."""
        engines = [report.engine for report in self.fresh()]
        return all(engine == engines[0] for engine in engines)

    async def engine(self) -> EngineInfo:
        """The stage's engine for a request: the fresh summary, or one report fetched now."""
        summary = self.summary()
        if summary is not None:
            return summary
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._fetch_and_record())
        # Shielded: a caller that goes away (client disconnect) must not cancel the others' fetch.
        report = await asyncio.shield(self._pending)
        return self.summary() or report.engine

    async def survey(self, running: RunningReplicas | None) -> None:
        """Ask until every running replica has a fresh report (``running`` None: until any has).

        Raises the error of the last round if no call in it succeeded (no replica answers).
        """
        if running is not None:
            self.retain(running)
        for _ in range(SURVEY_ROUNDS):
            reported = {report.replica.replica_id for report in self.fresh()}
            if (reported and running is None) or (running is not None and set(running) <= reported):
                break
            count = 1 if running is None else CALLS_PER_REPLICA * len(running)
            calls = [self._fetch_and_record() for _ in range(count)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if len(errors) == len(outcomes):
                raise errors[-1]
        if running is not None:
            self.retain(running)  # a replica stopping meanwhile may have answered

    async def health(self, running: RunningReplicas | None, timeout_sec: float) -> dict[str, Any]:
        """This stage for /api/v1/health: the engine summary, each replica, and whether they agree.

        Surveyed within ``timeout_sec``: a stage whose replicas cannot load must not hang the check.
        With no fresh report at all the stage is ``unavailable`` and says why.
        """
        problem = "Serve runs no replica of this stage" if running is not None and not running else None
        try:
            await asyncio.wait_for(self.survey(running), timeout_sec)
        except (TimeoutError, RayError, RayServeException) as error:
            problem = str(error) or type(error).__name__
        summary = self.summary()
        if summary is None:
            return {"name": "unavailable", "model": "unavailable", "error": problem or "no replica answered"}
        return {**engine_fields(summary), "replicas": self._replicas(running), "replicas_agree": self.agree()}

    def _replicas(self, running: RunningReplicas | None) -> list[dict[str, Any]]:
        reports = {report.replica.replica_id: report for report in self.fresh()}
        if running is None:
            return [_replica_fields(report) for report in reports.values()]
        return [
            _replica_fields(reports[replica_id])
            if replica_id in reports
            else _unreported(replica_id, node_id)
            for replica_id, node_id in sorted(running.items())
        ]

    async def _fetch_and_record(self) -> ReplicaReport:
        report = await self._fetch()
        self.record(report)
        return report


def _replica_fields(report: ReplicaReport) -> dict[str, Any]:
    return {
        "replica_id": report.replica.replica_id,
        "node_id": report.replica.node_id,
        "reported": True,
        "engine": report.engine.name,
        "model": report.engine.model,
        "device": report.engine.device,
        "assigned_gpus": list(report.replica.assigned_gpus),
    }


def _unreported(replica_id: str, node_id: str | None) -> dict[str, Any]:
    """A replica Serve runs that did not answer in time (busy, or still loading): what Serve knows."""
    return {
        "replica_id": replica_id,
        "node_id": node_id,
        "reported": False,
        "engine": None,
        "model": None,
        "device": None,
        "assigned_gpus": None,
    }


async def running_replicas(app_name: str, timeout_sec: float) -> dict[str, dict[str, str | None]] | None:
    """Per deployment of ``app_name``, the replicas Serve runs now (replica id -> node id).

    None when the controller cannot say in time: callers then fall back to whatever replicas answer.
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(_running_replicas, app_name), timeout_sec)
    except Exception:  # health must answer even when the controller is briefly unreachable
        logger.exception("could not list the running replicas")
        return None


def _running_replicas(app_name: str) -> dict[str, dict[str, str | None]]:
    # serve.status() counts replicas per state but drops their ids. It is built from the
    # controller's ServeInstanceDetails (a public, stable schema that lists every replica with its
    # replica_id, node_id and state), fetched through the private _get_global_client() exactly as
    # serve.status() does in Ray 2.60 (ray/serve/api.py). It blocks on ray.get: run it in a thread.
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    client = _get_global_client()
    application = ServeInstanceDetails(**client.get_serve_details()).applications.get(app_name)
    if application is None:
        return {}
    return {
        name: {
            replica.replica_id: replica.node_id
            for replica in deployment.replicas
            if replica.state == "RUNNING"
        }
        for name, deployment in application.deployments.items()
    }
