"""Graceful stop of a Serve instance: drain the Ingress replicas and proxies, then shut down.

Deleting the apps would stop all deployments at once: a request still in its ingress would lose
the chunker, TTS and validator under it, and Serve kills its HTTP proxies at once, cutting the
responses they are still sending. The launcher (``make run``) calls this on SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import ray
from ray import serve
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

from deployments.app import INGRESS_DEPLOYMENT

# Of the grace period, what Serve's own shutdown and this process's exit keep (at most half of it):
# measured here, Serve stopped the idle replicas, proxies and controller in 2 s, and the exit of the
# Ray started here took 2.5 s more. Requests in flight get the rest.
SHUTDOWN_RESERVE_SEC = 5.0
DRAIN_POLL_SEC = 0.25


class StopSignals:
    """SIGTERM and SIGINT: the first asks for a graceful stop, a second one to stop at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._received)
        signal.signal(signal.SIGINT, self._received)

    def _received(self, signum: int, _frame: object) -> None:
        if self.requested.is_set():
            print(f"\n{signal.Signals(signum).name} again: stopping now", flush=True)
            self.hurry.set()
        self.requested.set()


def stop_gracefully(
    config: ServeDeploySchema, grace_period_sec: float, hurry: threading.Event, wait_for_proxies: bool
) -> None:
    """Drain, wait for the requests in flight, then shut Serve down.

    First every Ingress replica stops taking work (user_config
    ``draining``) and the proxies start draining (Serve's own ``/-/healthz`` answers 503) while the
    stages keep running; Serve shuts down once no ingress replica, and with ``wait_for_proxies`` no
    proxy, has a request left, or when the grace period is spent.
    """
    started = time.monotonic()
    deadline = started + grace_period_sec - min(SHUTDOWN_RESERVE_SEC, grace_period_sec / 2)
    print(f"\nStopping: draining requests in flight (at most {grace_period_sec:g} s)", flush=True)
    client = None
    try:
        client = _get_global_client()
        client.deploy_apps(draining_config(config), _blocking=False)
        proxies = _drain_proxies(ServeInstanceDetails(**client.get_serve_details()))
        names = [application.name for application in config.applications]
        drained = _wait_drained(client, names, deadline, hurry, proxies if wait_for_proxies else None)
        waited = time.monotonic() - started
        if drained:
            print(f"Drained in {waited:.1f} s; shutting Serve down", flush=True)
        else:
            print(f"Stopping with requests still in flight after {waited:.1f} s", flush=True)
    except Exception as error:  # a stop must happen even when the drain cannot be done
        print(f"Could not drain ({type(error).__name__}: {error}); shutting Serve down", flush=True)
    if client is None:
        serve.shutdown()
    else:
        # Bounded so the whole stop fits the grace period; past it Serve's controller goes on
        # stopping by itself (and a Ray started here goes down with this process anyway).
        remaining_sec = grace_period_sec - (time.monotonic() - started)
        client.shutdown(timeout_s=1.0 if hurry.is_set() else max(1.0, remaining_sec))
    print(f"Serve stopped, {time.monotonic() - started:.1f} s after the signal.", flush=True)


def draining_config(config: ServeDeploySchema) -> ServeDeploySchema:
    """The same config with ``draining: true`` added to every app's Ingress user_config."""
    return with_ingress_user_config(config, {"draining": True})


def with_ingress_user_config(config: ServeDeploySchema, extra: dict[str, Any]) -> ServeDeploySchema:
    """The same config with ``extra`` merged into every app's Ingress user_config.

    Only a user_config changes, so Serve calls ``Ingress.reconfigure`` on the running replicas in
    place (nothing restarts, no other deployment is touched).
    """
    raw = config.model_dump(exclude_unset=True)
    for application in raw["applications"]:
        deployments = application.setdefault("deployments", [])
        ingress = next((entry for entry in deployments if entry["name"] == INGRESS_DEPLOYMENT), None)
        if ingress is None:
            ingress = {"name": INGRESS_DEPLOYMENT}
            deployments.append(ingress)
        ingress["user_config"] = {**(ingress.get("user_config") or {}), **extra}
    return ServeDeploySchema.model_validate(raw)


def _drain_proxies(details: ServeInstanceDetails) -> list[Any]:
    """Put every Serve HTTP proxy in draining mode: its ``/-/healthz`` answers 503 (load balancers
    that probe Serve stop sending) while it keeps serving, and it can tell when it has no request
    left (the actor methods Serve's controller uses when it drains a node)."""
    proxies = [
        ray.get_actor(proxy.actor_name, namespace=SERVE_NAMESPACE)
        for proxy in details.proxies.values()
        if proxy.actor_name
    ]
    ray.get([proxy.update_draining.remote(True) for proxy in proxies], timeout=10)
    return proxies


def _wait_drained(
    client: Any, names: list[str], deadline: float, hurry: threading.Event, proxies: list[Any] | None
) -> bool:
    """Wait until every Ingress replica drains and then has no request left, and (``proxies``)
    every proxy is done sending; False at the deadline.

    A proxy goes on sending a response after the replica has produced all of it (Serve's replica
    stream has no back-pressure): measured, a slow client lost the last seconds of a 7.6 MB stream
    when only the replicas were watched. Idle also means two looks in a row, for a health probe
    coming and going between looks, and for where the proxies cannot be asked.
    """
    idle_looks = 0
    reported_at = 0.0
    while time.monotonic() < deadline and not hurry.is_set():
        details = ServeInstanceDetails(**client.get_serve_details())
        ingresses = [
            details.applications[name].deployments[INGRESS_DEPLOYMENT]
            for name in names
            if name in details.applications and INGRESS_DEPLOYMENT in details.applications[name].deployments
        ]
        # Serve sets the new target config and the UPDATING status together, and reports HEALTHY
        # only when every replica runs the target version: then each one has been reconfigured.
        switched = all(
            (ingress.deployment_config.user_config or {}).get("draining")
            and str(getattr(ingress.status, "value", ingress.status)) == "HEALTHY"
            for ingress in ingresses
        )
        in_flight = _requests_in_flight(ingresses) if switched else None
        idle_looks = idle_looks + 1 if in_flight == 0 else 0
        if idle_looks >= 2 and (proxies is None or _proxies_drained(proxies)):
            return True
        if in_flight and time.monotonic() - reported_at > 5:
            print(f"  {in_flight} request(s) in flight", flush=True)
            reported_at = time.monotonic()
        time.sleep(DRAIN_POLL_SEC)
    return False


def _requests_in_flight(ingresses: list[Any]) -> int:
    """Requests the Ingress replicas are handling, streams included, as each replica counts them.

    Serve has no public per-replica count: each replica actor answers ``get_num_ongoing_requests``
    (what Serve's routers ask it, on a thread of its own, so a busy replica still answers).
    """
    refs = [
        ray.get_actor(replica.actor_name, namespace=SERVE_NAMESPACE).get_num_ongoing_requests.remote()
        for ingress in ingresses
        for replica in ingress.replicas
        if replica.actor_name
    ]
    return sum(_answer(ref, 0) for ref in refs)


def _proxies_drained(proxies: list[Any]) -> bool:
    """Whether no proxy has an HTTP request left (counted from arrival to the last byte sent)."""
    return all(_answer(proxy.is_drained.remote(), True) for proxy in proxies)


def _answer(ref: Any, if_dead: Any) -> Any:
    try:
        return ray.get(ref, timeout=5)
    except ray.exceptions.RayActorError:
        return if_dead  # an actor that died has nothing left to finish
