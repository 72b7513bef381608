"""``make run``: a local Ray instance plus the Serve application from serve_config.yaml.

Does what ``serve run config.yaml`` does (Serve has no public API to deploy a config dict
in-process), plus a host/port override and a banner naming the active engines once ready.
Tests use ``deploy_config`` too, so they exercise the same YAML as users.

SIGTERM (Kubernetes, ``docker stop``) or SIGINT (Ctrl-C) stops gracefully: every Ingress replica
is switched to draining (new synthesis gets 503 SERVER_DRAINING, health 503), the requests in
flight finish within the grace period, then Serve shuts down and the process exits 0. A second
signal stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve._private import api as serve_private_api
from ray.serve.schema import ServeDeploySchema

from deployments.graceful_stop import StopSignals, stop_gracefully
from pipeline.settings import ShutdownConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_config(
    path: str | Path,
    host: str | None = None,
    port: int | None = None,
    args_override: dict[str, Any] | None = None,
) -> ServeDeploySchema:
    raw = yaml.safe_load(Path(path).read_text())
    if host is not None:
        raw.setdefault("http_options", {})["host"] = host
    if port is not None:
        raw.setdefault("http_options", {})["port"] = port
    if args_override:
        for application in raw["applications"]:
            application["args"] = _deep_merge(application.get("args") or {}, args_override)
    return ServeDeploySchema.model_validate(raw)


def deploy_config(
    config: ServeDeploySchema, timeout_sec: float = 600, stop: threading.Event | None = None
) -> None:
    """Start Serve with the config's HTTP options, deploy its apps, wait until they run (or ``stop``)."""
    # The config's logging_config reaches the apps through deploy_apps; the proxies and the
    # controller take theirs only here (without it the proxy logs TEXT under `encoding: JSON`).
    client = serve_private_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        global_logging_config=config.logging_config,
    )
    client.deploy_apps(config, _blocking=False)
    names = [application.name for application in config.applications]
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return
        applications = serve.status().applications
        states = {
            name: applications[name].status if name in applications else "NOT_STARTED" for name in names
        }
        if all(state == "RUNNING" for state in states.values()):
            return
        failed = [
            _failure_report(name, applications[name])
            for name, state in states.items()
            if state == "DEPLOY_FAILED"
        ]
        if failed:
            raise RuntimeError("deployment failed:\n" + "\n".join(failed))
        time.sleep(1)
    raise TimeoutError(f"applications not running after {timeout_sec:.0f} s: {states}")


def init_ray(num_cpus: int | None = None, metrics_port: int | None = None) -> None:
    """A local Ray instance whose workers can import this repo, without usage stats or dashboard.

    ``metrics_port`` is where Ray's metrics agent serves Prometheus metrics (``/metrics``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if starts_own_ray():
        # A draining Serve proxy reports itself drained only after this long (Serve's default 30 s
        # is for load balancers to deregister a node); a stop waits for that report. Ray's
        # processes inherit the environment of the ray.init that starts them.
        os.environ.setdefault("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "0.5")
    # "local" starts a Ray of our own: a bare ray.init() joins whatever cluster last ran on this
    # machine (a test session's, say). RAY_ADDRESS=auto or an address joins one on purpose.
    ray.init(
        address=os.environ.get("RAY_ADDRESS", "local"),
        namespace="serve",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        _metrics_export_port=metrics_port,
    )


def starts_own_ray() -> bool:
    return os.environ.get("RAY_ADDRESS", "local") == "local"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO_ROOT / "serve_config.yaml"))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("METRICS_PORT", "9090")),
        help="Prometheus /metrics",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=float(os.environ["GRACE_PERIOD_SEC"]) if os.environ.get("GRACE_PERIOD_SEC") else None,
        help="Seconds a stop (SIGTERM/SIGINT) may take, requests in flight finishing first "
        "(env GRACE_PERIOD_SEC; default: the app's args.shutdown.grace_period_sec, 30)",
    )
    options = parser.parse_args()

    overrides = _args_from_environment()
    if options.grace_period is not None:
        overrides["shutdown"] = {"grace_period_sec": options.grace_period}
    config = load_config(options.config, options.host, options.port, overrides)
    grace_period_sec = max(
        ShutdownConfig.model_validate((application.args or {}).get("shutdown") or {}).grace_period_sec
        for application in config.applications
    )
    stop = StopSignals()
    own_ray = starts_own_ray()  # then its proxies report when they are drained (see init_ray)
    init_ray(options.num_cpus, options.metrics_port)
    # After ray.init: Ray's core worker installs its own SIGTERM handler there (it logs the signal
    # and exits 15), which would replace ours.
    stop.install()
    deploy_config(config, stop=stop.requested)
    if stop.requested.is_set():  # stopped while starting: nothing was served yet
        serve.shutdown()
        return
    base_url = f"http://{options.host}:{options.port}"
    with urllib.request.urlopen(f"{base_url}/api/v1/health", timeout=60) as response:
        health = json.load(response)
    engines = health["engines"]
    print(
        f"\nChatterbox TTS is serving at {base_url}  (docs: {base_url}/docs)\n"
        f"  TTS engine: {_stage_line(engines['tts'])}\n"
        f"  VC engine:  {_vc_line(engines['vc'])}\n"
        f"  Validator:  {_stage_line(engines['validator'])}\n"
        f"  Metrics:    http://{options.host}:{options.metrics_port}/metrics (ray_serve_*, ray_tts_*)\n"
        f"Press Ctrl-C to stop (requests in flight get up to {grace_period_sec:g} s; twice: at once).\n",
        flush=True,
    )
    stop.requested.wait()
    stop_gracefully(config, grace_period_sec, stop.hurry, wait_for_proxies=own_ray)


def _args_from_environment() -> dict[str, Any]:
    """Overrides of the app's args for a local run without editing the YAML."""
    overrides: dict[str, Any] = {}
    if engine := os.environ.get("ENGINE"):
        overrides["engine"] = engine
    if checkpoint_dir := os.environ.get("CHATTERBOX_CHECKPOINT_DIR"):
        overrides["chatterbox"] = {"checkpoint_dir": checkpoint_dir}
    if voices_dir := os.environ.get("VOICES_DIR"):
        overrides["voices_dir"] = voices_dir
    if vc_inputs_dir := os.environ.get("VC_INPUTS_DIR"):
        overrides["vc_inputs_dir"] = vc_inputs_dir
    if outputs_dir := os.environ.get("OUTPUTS_DIR"):
        overrides["outputs_dir"] = outputs_dir
    return overrides


def _vc_line(vc: dict[str, Any]) -> str:
    if vc.get("available") is False:
        return f"none ({vc.get('reason', 'no voice-conversion model')}); /api/v1/vc answers 422"
    return _stage_line(vc)


def _stage_line(stage: dict[str, Any]) -> str:
    """``name (model) on device``, then where the replicas run: how many, on which assigned GPUs."""
    line = f"{stage.get('name')} ({stage.get('model')}) on {stage.get('device')}"
    replicas = stage.get("replicas") or []
    gpus = sorted({gpu for replica in replicas for gpu in replica.get("assigned_gpus") or ()})
    line += f"; {len(replicas)} replica(s), " + (
        f"assigned GPU ids {', '.join(gpus)}" if gpus else "no GPU assigned"
    )
    if stage.get("replicas_agree") is False:
        line += " (replicas differ: see /api/v1/health)"
    return line


def _failure_report(name: str, application: Any) -> str:
    """The app's message plus each unhealthy deployment's, where replica errors (a failed load) are."""
    lines = [f"{name}: {application.message}"]
    for deployment_name, deployment in application.deployments.items():
        if deployment.message and str(getattr(deployment.status, "value", deployment.status)) != "HEALTHY":
            lines.append(f"  {deployment_name}: {deployment.message}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


if __name__ == "__main__":
    main()
