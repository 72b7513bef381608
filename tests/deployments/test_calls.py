"""Stage calls are retried only where the work was lost, and each case ends the way it should.

The replicas here are fakes that raise what Ray raises; tests/integration/test_replica_failures.py
and tests/cluster/ check the same rules with real replicas, real crashes and a real node loss.
"""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from deployments.calls import ActorState, Fate, StageCalls, replica_fate
from pipeline.errors import InvalidRequest, Overloaded, ReplicaCrashed
from pipeline.settings import RetryConfig

ACTOR = "a" * 32  # hex, as ActorDiedError/ActorUnavailableError carry it


def died() -> ActorDiedError:
    error = ActorDiedError()
    error.actor_id = ACTOR
    return error


def unavailable() -> ActorUnavailableError:
    return ActorUnavailableError("connection lost", bytes.fromhex(ACTOR[:32]))


class FlakyMethod:
    def __init__(self, failures: list[Exception]):
        self.failures = list(failures)
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        failure = self.failures.pop(0) if self.failures else None

        async def answer():
            if failure is not None:
                raise failure
            return ("ok", *args)

        return answer()


class FakeHandle:
    deployment_name = "TTS"

    def __init__(self, method: FlakyMethod):
        self.synthesize = method


class FakeCluster:
    """What the GCS would say: the actor's states in turn (the last one repeats), and its node's."""

    def __init__(self, states: list[str], node_alive: bool = True, node_died: bool = False):
        self.states = list(states)
        self.alive = node_alive
        self.node_died = node_died
        self.lookups = 0

    def actor(self, actor_id: str) -> ActorState | None:
        self.lookups += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return ActorState(state, "node-1", self.node_died)

    def node_alive(self, node_id: str) -> bool:
        return self.alive


POLICY = RetryConfig(
    node_loss_retries=3,
    replica_crash_retries=1,
    unavailable_wait_sec=1.0,
    node_death_grace_sec=0.1,
    backoff_sec=0,
)


def call(method: FlakyMethod, cluster: FakeCluster, policy: RetryConfig = POLICY):
    calls = StageCalls(policy, retry_after_sec=2, cluster=cluster)
    return asyncio.run(calls(FakeHandle(method), "synthesize")("text"))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr("deployments.calls.POLL_INTERVAL_SEC", 0.01)


def test_work_lost_with_its_node_is_retried_on_another_replica():
    method = FlakyMethod([died(), unavailable()])
    assert call(method, FakeCluster(["DEAD"], node_alive=False)) == ("ok", "text")
    assert method.calls == 3


def test_an_unreachable_replica_is_retried_once_the_cluster_declares_it_dead():
    """A node loss often shows first as a broken connection; the GCS says DEAD a few seconds later."""
    cluster = FakeCluster(["ALIVE", "ALIVE", "DEAD"], node_alive=False)
    method = FlakyMethod([unavailable()])
    assert call(method, cluster) == ("ok", "text")
    assert method.calls == 2
    assert cluster.lookups == 3


def test_a_call_whose_replica_may_still_be_running_it_is_not_repeated():
    method = FlakyMethod([unavailable()])
    with pytest.raises(Overloaded) as refused:
        call(method, FakeCluster(["ALIVE"]))
    assert method.calls == 1, "the work may still be running there: running it again doubles it"
    assert refused.value.retry_after_sec == 2
    assert "not repeated" in refused.value.message


def test_node_losses_are_retried_a_bounded_number_of_times():
    method = FlakyMethod([died()] * 10)
    with pytest.raises(Overloaded):
        call(method, FakeCluster(["DEAD"], node_alive=False))
    assert method.calls == POLICY.node_loss_retries + 1


def test_the_death_cause_names_a_node_loss_even_before_the_node_list_does():
    method = FlakyMethod([died(), died()])
    assert call(method, FakeCluster(["DEAD"], node_alive=True, node_died=True)) == ("ok", "text")
    assert method.calls == 3, "two node losses are within node_loss_retries"


def test_an_input_that_kills_replicas_is_not_fed_to_every_fresh_one():
    method = FlakyMethod([died()] * 10)
    with pytest.raises(ReplicaCrashed) as crashed:
        call(method, FakeCluster(["DEAD"], node_alive=True))
    assert method.calls == POLICY.replica_crash_retries + 1
    assert "killed its replica 2 times" in crashed.value.message


def test_deaths_that_looked_like_crashes_are_retried_once_the_node_is_declared_dead():
    """A node loss kills its replicas' processes at once and is declared seconds later: the
    second death of a call is only blamed on the input once the grace period has passed."""

    class NodeDeclaredDeadLater(FakeCluster):
        def node_alive(self, node_id):
            return self.lookups < 4

    method = FlakyMethod([died(), died()])
    assert call(method, NodeDeclaredDeadLater(["DEAD"])) == ("ok", "text")
    assert method.calls == 3


def test_a_single_crash_is_retried():
    method = FlakyMethod([died()])
    assert call(method, FakeCluster(["DEAD"], node_alive=True)) == ("ok", "text")
    assert method.calls == 2


def test_with_no_crash_retries_the_first_crash_fails_the_call():
    method = FlakyMethod([died()])
    with pytest.raises(ReplicaCrashed):
        call(
            method,
            FakeCluster(["DEAD"]),
            RetryConfig(replica_crash_retries=0, node_death_grace_sec=0, backoff_sec=0),
        )
    assert method.calls == 1


@pytest.mark.parametrize(
    "error", [InvalidRequest("bad", param="text"), TypeError("a bug"), RuntimeError("CUDA error")]
)
def test_errors_that_are_not_a_lost_replica_are_not_retried(error):
    method = FlakyMethod([error])
    with pytest.raises(type(error)):
        call(method, FakeCluster(["ALIVE"]))
    assert method.calls == 1


def test_a_full_stage_queue_is_a_503_with_retry_after():
    method = FlakyMethod([BackPressureError(num_queued_requests=8, max_queued_requests=8)])
    with pytest.raises(Overloaded) as refused:
        call(method, FakeCluster(["ALIVE"]))
    assert refused.value.headers() == {"Retry-After": "2"}
    assert method.calls == 1


def test_an_actor_the_cluster_does_not_know_counts_as_dead_only_when_ray_said_it_died():
    class Unknown(FakeCluster):
        def actor(self, actor_id):
            return None

    assert asyncio.run(replica_fate(died(), Unknown(["DEAD"]), 0.1)) is Fate.REPLICA_DIED
    assert asyncio.run(replica_fate(unavailable(), Unknown(["DEAD"]), 0.1)) is Fate.UNKNOWN


class StreamingMethod:
    """A streaming stage method: fails as told, then yields its blocks."""

    def __init__(self, failures: list[Exception], blocks: list[str]):
        self.failures, self.blocks = list(failures), blocks

    def remote(self, *args):
        failure = self.failures.pop(0) if self.failures else None

        async def items():
            if failure is not None:
                raise failure
            for block in self.blocks:
                yield block

        return items()


class StreamingHandle:
    deployment_name = "TTS"

    def __init__(self, method: StreamingMethod):
        self.synthesize_stream = method

    def options(self, stream: bool):
        return self


def timed_calls(cluster: FakeCluster) -> tuple[StageCalls, list[tuple[str, float]]]:
    timings: list[tuple[str, float]] = []
    calls = StageCalls(POLICY, 2, cluster, on_latency=lambda method, sec: timings.append((method, sec)))
    return calls, timings


def test_each_call_that_returns_is_timed_once_by_its_method_retries_included():
    calls, timings = timed_calls(FakeCluster(["DEAD"], node_alive=False))
    assert asyncio.run(calls(FakeHandle(FlakyMethod([died()])), "synthesize")("text")) == ("ok", "text")
    assert [method for method, _ in timings] == ["synthesize"]
    assert timings[0][1] >= 0


def test_a_call_that_fails_is_not_timed():
    calls, timings = timed_calls(FakeCluster(["ALIVE"]))
    with pytest.raises(InvalidRequest):
        asyncio.run(calls(FakeHandle(FlakyMethod([InvalidRequest("bad", param="text")])), "synthesize")("x"))
    assert timings == []


def test_a_stream_is_timed_once_when_its_last_item_is_out():
    calls, timings = timed_calls(FakeCluster(["DEAD"], node_alive=False))

    async def collect() -> list[str]:
        handle = StreamingHandle(StreamingMethod([died()], ["block 0", "block 1"]))
        stream = calls.stream(handle, "synthesize_stream")
        return [block async for block in stream("text")]

    assert asyncio.run(collect()) == ["block 0", "block 1"]
    assert [method for method, _ in timings] == ["synthesize_stream"]
