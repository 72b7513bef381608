"""Calls from the ingress to the stage deployments: retried only where the work was lost.

Serve alone loses in-flight work on node loss (DESIGN.md: requests got a 500 when a worker was
removed). Every stage call is idempotent (seeded), so running it again elsewhere is safe, but
not always right:
- the replica died with its node: the work is gone, try again (``node_loss_retries``);
- the replica died while its node lived: the input may be what kills it, so try again only
  ``replica_crash_retries`` times, then fail the request naming the crash instead of taking
  down every fresh replica in turn;
- the replica is unreachable but not known dead (``ActorUnavailableError``): wait for the
  cluster to decide. Dead: as above. Alive again: the call may still be running there, and
  running it twice would spend the GPU twice, so the request fails with 503 + Retry-After;
- anything else (a user error, an engine error, a bug) is not retried here at all.
Serve's ``BackPressureError`` (a stage queue is full) becomes the same 503 the admission gate
gives. Each call that returns reports its method and seconds (retries included: the caller
waited for them), so one place times every stage the ingress calls.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipeline.errors import Overloaded, ReplicaCrashed
from pipeline.settings import RetryConfig

logger = logging.getLogger("ray.serve")

POLL_INTERVAL_SEC = 0.5


class Fate(enum.Enum):
    """What became of the replica a call was sent to."""

    NODE_DIED = "died with its node"
    REPLICA_DIED = "died while its node lived"
    ALIVE = "is alive again, so the call may still be running there"
    UNKNOWN = "could not be found in the cluster's state"


RETRY_CAUSES = {Fate.NODE_DIED: "node_lost", Fate.REPLICA_DIED: "replica_crashed"}
RetryRecorder = Callable[[str, str], None]  # (stage, cause) of each retry
LatencyRecorder = Callable[[str, float], None]  # (method, seconds) of each call that returned


@dataclass(frozen=True)
class ActorState:
    state: str  # ALIVE, RESTARTING, DEAD, ... as the GCS names them
    node_id: str
    node_died: bool  # the death cause names the node's death


class ClusterView(Protocol):
    def actor(self, actor_id: str) -> ActorState | None: ...

    def node_alive(self, node_id: str) -> bool: ...


class GcsClusterView:
    """Actor and node state straight from the GCS.

    ``ray.util.state`` would be the public way, but it needs the dashboard, which our clusters
    may run without; ``ray._private.state.actors`` reads the same table from the GCS directly.
    """

    def actor(self, actor_id: str) -> ActorState | None:
        from ray._private import state

        info = state.actors(actor_id=actor_id)
        if not info:
            return None
        cause = info.get("DeathCause")
        died = (
            cause.actor_died_error_context
            if cause is not None and cause.HasField("actor_died_error_context")
            else None
        )
        node_died = died is not None and (
            died.reason == died.NODE_DIED
            or (died.HasField("node_death_info") and died.node_death_info.reason != 0)
        )
        return ActorState(info["State"], info["Address"]["NodeID"], node_died)

    def node_alive(self, node_id: str) -> bool:
        return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())


async def _node_lost(actor: ActorState, cluster: ClusterView) -> bool:
    """The actor's death cause names its node, or the cluster no longer lists the node as alive."""
    return actor.node_died or not await asyncio.to_thread(cluster.node_alive, actor.node_id)


async def replica_fate(error: RayActorError, cluster: ClusterView, wait_sec: float) -> Fate:
    """Wait until the cluster says whether the replica behind ``error`` is dead or alive.

    On a node loss the caller often learns first (a broken connection: ActorUnavailableError)
    and the GCS declares the node and its actors dead seconds later, so "alive" is only
    believed once ``wait_sec`` has passed without a death. An ActorDiedError is a death
    whatever the GCS says yet; only its cause (node or replica) is looked up.
    """
    known_dead = isinstance(error, ActorDiedError)
    if error.actor_id is None:
        return Fate.REPLICA_DIED if known_dead else Fate.UNKNOWN
    deadline = time.monotonic() + wait_sec
    while True:
        actor = await asyncio.to_thread(cluster.actor, error.actor_id)
        if actor is None:
            return Fate.REPLICA_DIED if known_dead else Fate.UNKNOWN
        if actor.state == "DEAD" or (known_dead and time.monotonic() >= deadline):
            return Fate.NODE_DIED if await _node_lost(actor, cluster) else Fate.REPLICA_DIED
        if time.monotonic() >= deadline:
            return Fate.ALIVE
        await asyncio.sleep(POLL_INTERVAL_SEC)


class StageCalls:
    """Makes the ingress's stage calls, each with the retry rules above."""

    def __init__(
        self,
        policy: RetryConfig,
        retry_after_sec: int,
        cluster: ClusterView | None = None,
        on_retry: RetryRecorder | None = None,
        on_latency: LatencyRecorder | None = None,
    ) -> None:
        self._policy = policy
        self._retry_after_sec = retry_after_sec
        self._cluster = cluster or GcsClusterView()
        self._on_retry = on_retry
        self._on_latency = on_latency
        # Retries by cause since start: /api/v1/health shows them, so a test or an operator can
        # see that a node loss was ridden out rather than never hit.
        self.retries: Counter[str] = Counter()

    def __call__(self, handle: DeploymentHandle, method: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any) -> Any:
            return await self._call(handle, method, args)

        return call

    async def _confirm(self, error: RayActorError) -> Fate:
        """REPLICA_DIED, unless the replica's node is declared dead within the grace period."""
        deadline = time.monotonic() + self._policy.node_death_grace_sec
        while True:
            actor = await asyncio.to_thread(self._cluster.actor, error.actor_id) if error.actor_id else None
            if actor is not None and await _node_lost(actor, self._cluster):
                return Fate.NODE_DIED
            if actor is None or time.monotonic() >= deadline:
                return Fate.REPLICA_DIED
            await asyncio.sleep(POLL_INTERVAL_SEC)

    def stream(self, handle: DeploymentHandle, method: str) -> Callable[..., AsyncIterator[Any]]:
        """A streaming stage call: retried like :meth:`__call__` until its first item arrives;
        after that a lost replica ends the stream with the error (what was sent cannot be unsent)."""

        async def items(*args: Any) -> AsyncIterator[Any]:
            stage, tries, began = f"{handle.deployment_name}.{method}", _Tries(), time.monotonic()
            while True:
                started = False
                try:
                    async for item in getattr(handle.options(stream=True), method).remote(*args):
                        started = True
                        yield item
                    self._returned(method, began)
                    return
                except BackPressureError as error:
                    raise self._overloaded(handle) from error
                except (ActorDiedError, ActorUnavailableError) as error:
                    if started:
                        raise ReplicaCrashed(f"{stage} lost its replica mid-stream: {error}") from error
                    await self._recover(handle, stage, error, tries)

        return items

    def _overloaded(self, handle: DeploymentHandle) -> Overloaded:
        return Overloaded(
            f"{handle.deployment_name} is at capacity; retry in {self._retry_after_sec} s",
            retry_after_sec=self._retry_after_sec,
        )

    async def _call(self, handle: DeploymentHandle, method: str, args: tuple[Any, ...]) -> Any:
        stage, tries, began = f"{handle.deployment_name}.{method}", _Tries(), time.monotonic()
        while True:
            try:
                result = await getattr(handle, method).remote(*args)
            except BackPressureError as error:
                raise self._overloaded(handle) from error
            except (ActorDiedError, ActorUnavailableError) as error:
                await self._recover(handle, stage, error, tries)
            else:
                self._returned(method, began)
                return result

    def _returned(self, method: str, began: float) -> None:
        if self._on_latency is not None:
            self._on_latency(method, time.monotonic() - began)

    async def _recover(
        self, handle: DeploymentHandle, stage: str, lost: RayActorError, tries: _Tries
    ) -> None:
        """Return (after a backoff) if the lost call may be sent again; else raise why not."""
        fate = await replica_fate(lost, self._cluster, self._policy.unavailable_wait_sec)
        if fate is Fate.REPLICA_DIED and tries.crashes >= self._policy.replica_crash_retries:
            # Out of crash retries: before blaming the input, give the cluster time to notice
            # a node loss. Its replicas' processes die at once, the node's death is declared
            # seconds later (measured here: every call lost with a removed worker first
            # looked like a crash).
            fate = await self._confirm(lost)
        if fate is Fate.NODE_DIED and tries.node_losses < self._policy.node_loss_retries:
            tries.node_losses += 1
            attempt = tries.node_losses
        elif fate is Fate.REPLICA_DIED and tries.crashes < self._policy.replica_crash_retries:
            tries.crashes += 1
            attempt = tries.crashes
        elif fate is Fate.REPLICA_DIED:
            raise ReplicaCrashed(
                f"{stage} killed its replica {tries.crashes + 1} times (the node stayed up); "
                "the input may be what crashes it, so it was not tried again"
            )
        elif fate is Fate.NODE_DIED:
            raise Overloaded(
                f"{stage} lost its replica to {tries.node_losses + 1} node failures; retry in "
                f"{self._retry_after_sec} s",
                retry_after_sec=self._retry_after_sec,
            )
        else:
            raise Overloaded(
                f"a {handle.deployment_name} replica became unreachable and {fate.value}; "
                f"the call was not repeated; retry in {self._retry_after_sec} s",
                retry_after_sec=self._retry_after_sec,
            )
        logger.warning("%s: its replica %s; retrying (%d)", stage, fate.value, attempt)
        self.retries[RETRY_CAUSES[fate]] += 1
        if self._on_retry is not None:
            self._on_retry(stage, RETRY_CAUSES[fate])
        await asyncio.sleep(self._policy.backoff_sec * attempt)


@dataclass
class _Tries:
    """Retries one call has used, by cause."""

    node_losses: int = 0
    crashes: int = 0
