"""The app builder: typed args -> the bound pipeline graph. The only place that knows resources."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from deployments.chunker import Chunker
from deployments.ingress import Ingress
from deployments.postprocess import PostProcess
from deployments.tts import TTS
from deployments.validator import Validator
from deployments.vc import VC
from pipeline.settings import AppSettings, DeploymentSpec

logger = logging.getLogger("ray.serve")

STAGE_SPECS = ("ingress", "chunker", "tts", "vc", "validator", "postprocess")
# The deployment that takes HTTP: the launcher drains it (its user_config) before a stop.
INGRESS_DEPLOYMENT = "Ingress"
SHUTDOWN_POLL_SEC = 0.5


def build_app(args: dict[str, Any]) -> Application:
    settings = AppSettings.model_validate(args or {})
    offered = cluster_resource_names()
    has_gpus = settings.accelerator == "gpu" or (settings.accelerator == "auto" and "GPU" in offered)
    settings = resolve_settings(settings, has_gpus, offered)
    payload = settings.model_dump()
    grace_sec = settings.shutdown.grace_period_sec
    chunker = _deployment(Chunker, "Chunker", settings.chunker, grace_sec).bind()
    tts = _deployment(TTS, "TTS", settings.tts, grace_sec).bind(payload)
    vc = _deployment(VC, "VC", settings.vc, grace_sec).bind(payload)
    validator = _deployment(Validator, "Validator", settings.validator, grace_sec).bind(payload)
    postprocess = _deployment(PostProcess, "PostProcess", settings.postprocess, grace_sec).bind()
    return _deployment(Ingress, INGRESS_DEPLOYMENT, settings.ingress, grace_sec).bind(
        chunker, tts, vc, validator, postprocess, payload
    )


def resolve_settings(
    settings: AppSettings, has_gpus: bool, offered: frozenset[str] = frozenset()
) -> AppSettings:
    """Specs fitted to the cluster, and data paths made absolute where the app is built.

    Replicas may start in another working directory (a runtime_env working_dir is unpacked
    elsewhere), so relative paths are resolved once, here. Custom resources that no node offers
    (``stable_node`` on a laptop) are dropped rather than left to keep replicas pending forever.
    """
    if not has_gpus:
        logger.warning(
            "No GPUs in the Ray cluster: GPU deployments run on CPU with their cpu_fallback resources"
        )
    for name in STAGE_SPECS:
        missing = sorted(set(getattr(settings, name).resources) - offered)
        if missing:
            logger.warning("No node offers %s: %s replicas go wherever they fit", missing, name)
    updates: dict[str, Any] = {
        name: getattr(settings, name).for_cluster(has_gpus, offered) for name in STAGE_SPECS
    }
    for folder in ("voices_dir", "vc_inputs_dir", "outputs_dir"):
        updates[folder] = str(Path(getattr(settings, folder)).expanduser().resolve())
    if settings.chatterbox.checkpoint_dir:
        checkpoint_dir = str(Path(settings.chatterbox.checkpoint_dir).expanduser().resolve())
        updates["chatterbox"] = settings.chatterbox.model_copy(update={"checkpoint_dir": checkpoint_dir})
    return settings.model_copy(update=updates)


def cluster_resource_names() -> frozenset[str]:
    """The resources some node of the connected cluster offers (GPU, stable_node, ...).

    Serve builds the app inside the cluster, where Ray is connected. Anywhere else (``serve build``,
    a script or a test importing the builder) no cluster is started for this: nothing is offered,
    so custom resources are dropped and ``accelerator: auto`` means CPU (``gpu`` still asks for GPUs).
    """
    if not ray.is_initialized():
        logger.warning(
            "Ray is not initialised: the cluster's resources could not be read, so no custom resources "
            "are requested and accelerator=auto means CPU"
        )
        return frozenset()
    return frozenset(name for name, amount in ray.cluster_resources().items() if amount > 0)


def _deployment(cls: type, name: str, spec: DeploymentSpec, grace_period_sec: float) -> Any:
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        # A replica Serve stops (downscale, redeploy, serve.shutdown) finishes its calls in flight
        # for as long as the whole service does on SIGTERM; Serve's default is 20 s, and a TTS
        # chunk call can take longer than that on a busy replica.
        "graceful_shutdown_timeout_s": grace_period_sec,
        # How often a stopping replica looks whether its calls are done (Serve's default 2 s): a
        # stop waits for it twice, once for the ingress, then once for the stages behind it.
        "graceful_shutdown_wait_loop_s": SHUTDOWN_POLL_SEC,
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
    }
    if spec.resources:
        options["ray_actor_options"]["resources"] = dict(spec.resources)
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling
    else:
        options["num_replicas"] = spec.num_replicas
    return serve.deployment(cls, **options)
