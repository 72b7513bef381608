"""Which device an engine runs on: inside a Ray replica, the GPUs Ray assigned to it and only those.

Why engines cannot just take "the GPU if there is one":

- Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for an actor that reserved no GPU (it blanks it
  only under ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``, see ray/_private/accelerators/accelerator.py).
  A CPU replica on a GPU node therefore sees every GPU, and torch's or CTranslate2's own "auto"
  would load a model onto a GPU that other replicas reserved. So a replica without GPUs hides
  them itself before any CUDA library starts, and is given an explicit CPU device as well.
- For a replica with GPUs Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned ids, so torch numbers
  them from 0: the assigned GPU is ``cuda:0`` there, whatever its id on the node.
- Ray also assigns GPUs it was only told about (``ray start --num-gpus=N`` on a CPU machine, used
  to test packing and placement). No CUDA runtime sees those; the engine runs on CPU and says so.
- Two replicas of 0.5 GPU share one device, but Ray's fractions are bookkeeping only: nothing
  stops one replica's allocator from taking the whole GPU. A fractional placement therefore
  carries its share, which torch engines apply as a per-process memory cap.

Outside a Ray actor (unit tests, in-process benchmarks) the engine's ``device`` setting applies:
``auto`` is CUDA, then MPS, then CPU, as the engine's runtime sees them.

Nothing here imports torch, CTranslate2 or Ray: each engine passes a :class:`DeviceView` of what its
own runtime sees, asked only after GPUs that must stay unused are hidden.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class GpuAssignment:
    """What Ray reserved for this actor: GPU ids as Ray names them, and how much GPU (0.5 = half)."""

    gpu_ids: tuple[str, ...]
    gpu_amount: float


@dataclass(frozen=True)
class DeviceView:
    """What one runtime (torch, CTranslate2) sees. Callables, so nothing asks CUDA before GPUs are hidden."""

    runtime: str
    cuda_device_count: Callable[[], int]
    mps_available: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class Placement:
    """The device an engine uses (``cpu``, ``cuda:N`` as its runtime numbers GPUs, ``mps``) and why.

    ``assigned_gpus`` are the ids Ray reserved for the replica (empty outside Ray or without GPUs);
    ``gpu_memory_fraction`` is the replica's share of its GPU when it holds only part of one.
    """

    device: str
    reason: str
    assigned_gpus: tuple[str, ...] = ()
    gpu_memory_fraction: float | None = None


def ray_gpu_assignment() -> GpuAssignment | None:
    """Ray's GPU reservation for this process when it is a Ray actor (a Serve replica); else None.

    A process that Ray started has imported ray already, so ray is not imported here for anyone
    else (unit tests, scripts). A driver that called ``ray.init`` (an in-process benchmark) is not
    an actor and reserved nothing: it gets None too.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    gpu_ids = tuple(str(gpu_id) for gpu_id in context.get_accelerator_ids().get("GPU", ()))
    return GpuAssignment(gpu_ids, float(context.get_assigned_resources().get("GPU", 0.0)))


def place(requested: str, view: DeviceView) -> Placement:
    """The device for an engine whose ``device`` setting is ``requested`` (``auto``, ``cpu``, ``cuda:1``...).

    Inside a Ray actor, Ray's assignment decides and ``requested`` can only narrow it to ``cpu``;
    whenever the result is not a CUDA device, GPUs are hidden from every CUDA library in the process.
    """
    assignment = ray_gpu_assignment()
    if assignment is None:
        return _outside_ray(requested, view)
    placement = _inside_ray(requested, assignment, view, os.environ)
    if not placement.device.startswith("cuda"):
        hide_gpus(os.environ)
    log = logger.warning if assignment.gpu_ids and placement.device == "cpu" else logger.info
    log("%s runs on %s: %s", view.runtime, placement.device, placement.reason)
    return placement


def hide_gpus(environ: MutableMapping[str, str]) -> None:
    """Make CUDA report no devices to torch, CTranslate2 and onnxruntime in this process.

    CUDA reads the variable once, when a library first initialises it; torch does so lazily, so
    this works as long as nothing in the replica touched CUDA before its engine was built.
    """
    environ[CUDA_VISIBLE_DEVICES] = ""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        logger.warning(
            "CUDA was initialised before GPUs could be hidden; engines still get an explicit CPU device"
        )


def _outside_ray(requested: str, view: DeviceView) -> Placement:
    if requested != "auto":
        return Placement(requested, "the device setting (not in a Ray replica)")
    if view.cuda_device_count() > 0:
        return Placement("cuda:0", f"device auto: {view.runtime} sees CUDA (not in a Ray replica)")
    if view.mps_available():
        return Placement("mps", f"device auto: {view.runtime} sees MPS (not in a Ray replica)")
    return Placement("cpu", f"device auto: {view.runtime} sees no GPU (not in a Ray replica)")


def _inside_ray(
    requested: str, assignment: GpuAssignment, view: DeviceView, environ: MutableMapping[str, str]
) -> Placement:
    ids = assignment.gpu_ids
    if not ids:
        return Placement("cpu", "Ray assigned this replica no GPU")
    if requested == "cpu":
        return Placement("cpu", f"device: cpu, although Ray assigned GPU {', '.join(ids)}", ids)
    index = _runtime_index(ids[0], environ.get(CUDA_VISIBLE_DEVICES))
    if index is not None and index < view.cuda_device_count():
        share = assignment.gpu_amount if assignment.gpu_amount < 1 else None
        extra = f" (engines use one device; also assigned {', '.join(ids[1:])})" if len(ids) > 1 else ""
        return Placement(f"cuda:{index}", f"Ray assigned GPU {ids[0]}{extra}", ids, share)
    if view.mps_available():  # Ray 2.60 schedules Apple's one GPU as GPU id 0
        return Placement("mps", f"Ray assigned GPU {ids[0]} (Apple MPS)", ids)
    return Placement(
        "cpu",
        f"Ray assigned GPU {', '.join(ids)} but {view.runtime} sees no such CUDA device "
        "(a logical GPU, or no driver)",
        ids,
    )


def _runtime_index(gpu_id: str, visible: str | None) -> int | None:
    """Where the runtime finds Ray's ``gpu_id``: its position in CUDA_VISIBLE_DEVICES, which Ray set.

    Unset means Ray was told not to set it (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``): the
    runtime then sees all GPUs and numbers them as Ray does.
    """
    if visible is None:
        return int(gpu_id) if gpu_id.isdigit() else None
    entries = [entry.strip() for entry in visible.split(",")]
    return entries.index(gpu_id) if gpu_id in entries else None
