"""The ingress's view of a stage's replicas: fresh reports, running replicas only, disagreements shown."""

from __future__ import annotations

import asyncio
import random

import pytest

from deployments.fleet import REPORT_TTL_SEC, FleetView, ReplicaIdentity, ReplicaReport
from pipeline.engines.base import EngineInfo

PIPER = EngineInfo(name="piper", model="joe", device="cpu", sample_rate=22_050, supports_cloning=False)
CHATTERBOX = EngineInfo(
    name="chatterbox",
    model="ResembleAI/chatterbox",
    device="cuda:0",
    sample_rate=24_000,
    supports_cloning=True,
)


def report(replica_id: str, engine: EngineInfo = PIPER, gpus: tuple[str, ...] = ()) -> ReplicaReport:
    return ReplicaReport(ReplicaIdentity(replica_id, f"node-of-{replica_id}", gpus), engine)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    """A stage behind Serve's router: each call lands on a replica picked at random."""

    def __init__(self, *reports: ReplicaReport, seed: int = 3) -> None:
        self.reports = list(reports)
        self.calls = 0
        self._random = random.Random(seed)

    async def fetch(self) -> ReplicaReport:
        self.calls += 1
        await asyncio.sleep(0)
        return self._random.choice(self.reports)


def running(*reports: ReplicaReport) -> dict[str, str | None]:
    return {item.replica.replica_id: item.replica.node_id for item in reports}


def test_requests_reuse_a_fresh_report_and_fetch_again_once_it_expires() -> None:
    clock = Clock()
    replicas = Replicas(report("a"))
    fleet = FleetView(replicas.fetch, clock=clock)
    assert asyncio.run(fleet.engine()) == PIPER
    clock.now += REPORT_TTL_SEC - 1
    asyncio.run(fleet.engine())
    assert replicas.calls == 1
    # A redeploy swapped the engine: seen once the old report has expired.
    replicas.reports = [report("b", CHATTERBOX)]
    clock.now += 2
    assert fleet.summary() is None
    assert asyncio.run(fleet.engine()) == CHATTERBOX
    assert replicas.calls == 2


def test_requests_arriving_together_share_one_fetch() -> None:
    replicas = Replicas(report("a"))
    fleet = FleetView(replicas.fetch)

    async def many() -> list[EngineInfo]:
        return await asyncio.gather(*(fleet.engine() for _ in range(8)))

    assert asyncio.run(many()) == [PIPER] * 8
    assert replicas.calls == 1


def test_health_lists_every_running_replica_with_its_device_and_gpus() -> None:
    fleet_reports = [
        report(name, CHATTERBOX, gpus=(gpu,)) for name, gpu in (("a", "0"), ("b", "1"), ("c", "0"))
    ]
    replicas = Replicas(*fleet_reports)
    health = asyncio.run(FleetView(replicas.fetch).health(running(*fleet_reports), timeout_sec=5))
    assert health["name"] == "chatterbox"
    assert health["device"] == "cuda:0"
    assert health["replicas_agree"] is True
    assert [(r["replica_id"], r["node_id"], r["device"], r["assigned_gpus"]) for r in health["replicas"]] == [
        ("a", "node-of-a", "cuda:0", ["0"]),
        ("b", "node-of-b", "cuda:0", ["1"]),
        ("c", "node-of-c", "cuda:0", ["0"]),
    ]
    assert all(r["reported"] for r in health["replicas"])


def test_replicas_serve_no_longer_runs_are_dropped() -> None:
    old, new = report("old"), report("new", CHATTERBOX)
    fleet = FleetView(Replicas(new).fetch)
    fleet.record(old)
    health = asyncio.run(fleet.health(running(new), timeout_sec=5))
    assert [r["replica_id"] for r in health["replicas"]] == ["new"]
    assert health["name"] == "chatterbox"
    assert fleet.summary() == CHATTERBOX


def test_a_fleet_mid_rollout_says_its_replicas_disagree() -> None:
    mixed = [report("a", PIPER), report("b", CHATTERBOX), report("c", CHATTERBOX)]
    fleet = FleetView(Replicas(*mixed).fetch)
    health = asyncio.run(fleet.health(running(*mixed), timeout_sec=5))
    assert health["replicas_agree"] is False
    assert health["name"] == "chatterbox"  # what most replicas run
    assert {r["replica_id"]: r["engine"] for r in health["replicas"]} == {
        "a": "piper",
        "b": "chatterbox",
        "c": "chatterbox",
    }


def test_a_replica_that_does_not_answer_is_listed_as_serve_knows_it() -> None:
    answering, silent = report("a"), report("z")
    health = asyncio.run(
        FleetView(Replicas(answering).fetch).health(running(answering, silent), timeout_sec=5)
    )
    assert health["name"] == "piper"
    assert "error" not in health
    assert health["replicas"][1] == {
        "replica_id": "z",
        "node_id": "node-of-z",
        "reported": False,
        "engine": None,
        "model": None,
        "device": None,
        "assigned_gpus": None,
    }


def test_a_stage_with_no_running_replica_is_unavailable_at_once() -> None:
    replicas = Replicas(report("a"))
    health = asyncio.run(FleetView(replicas.fetch).health({}, timeout_sec=5))
    assert health["name"] == "unavailable"
    assert "no replica" in health["error"]
    assert replicas.calls == 0


def test_a_stage_that_never_answers_is_unavailable_within_the_timeout() -> None:
    async def hang() -> ReplicaReport:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    health = asyncio.run(FleetView(hang).health({"a": None}, timeout_sec=0.05))
    assert health == {"name": "unavailable", "model": "unavailable", "error": "TimeoutError"}


def test_when_serve_cannot_list_replicas_any_answer_describes_the_stage() -> None:
    health = asyncio.run(FleetView(Replicas(report("a")).fetch).health(None, timeout_sec=5))
    assert health["name"] == "piper"
    assert [r["replica_id"] for r in health["replicas"]] == ["a"]


def test_outside_serve_a_replica_has_no_identity() -> None:
    assert ReplicaIdentity.current() == ReplicaIdentity(None, None, ())


@pytest.mark.parametrize("seed", range(5))
def test_a_survey_reaches_every_replica_behind_a_random_router(seed: int) -> None:
    fleet_reports = [report(f"r{index}") for index in range(4)]
    health = asyncio.run(
        FleetView(Replicas(*fleet_reports, seed=seed).fetch).health(running(*fleet_reports), timeout_sec=5)
    )
    assert all(r["reported"] for r in health["replicas"]), health["replicas"]
