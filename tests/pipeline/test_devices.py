"""Device placement from Ray's GPU assignment, with Ray's answer and the runtime's view faked."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline import devices
from pipeline.devices import CUDA_VISIBLE_DEVICES, DeviceView, GpuAssignment, place


class FakeRuntime:
    """A runtime's view of CUDA that records whether GPUs were still visible when it was asked."""

    def __init__(self, cuda_devices: int, mps: bool = False) -> None:
        self._cuda_devices = cuda_devices
        self._mps = mps
        self.asked_with: list[str | None] = []

    def view(self) -> DeviceView:
        def count() -> int:
            self.asked_with.append(os.environ.get(CUDA_VISIBLE_DEVICES))
            return self._cuda_devices

        return DeviceView("torch", count, lambda: self._mps)


@pytest.fixture
def ray_assigns(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a Ray replica that Ray gave these GPUs (None: not in Ray at all)."""

    def assign(assignment: GpuAssignment | None, visible: str | None = None) -> None:
        monkeypatch.setattr(devices, "ray_gpu_assignment", lambda: assignment)
        # Set first, so the variable is restored (or removed) after the test whatever place() did.
        monkeypatch.setenv(CUDA_VISIBLE_DEVICES, visible or "")
        if visible is None:
            monkeypatch.delenv(CUDA_VISIBLE_DEVICES)

    return assign


def test_a_replica_without_gpus_runs_on_cpu_and_hides_the_machines_gpus(ray_assigns, monkeypatch):
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for a num_gpus=0 actor on a GPU machine.
    ray_assigns(GpuAssignment((), 0.0))
    runtime = FakeRuntime(cuda_devices=4)
    placement = place("auto", runtime.view())
    assert placement.device == "cpu"
    assert placement.assigned_gpus == ()
    assert placement.gpu_memory_fraction is None
    assert os.environ[CUDA_VISIBLE_DEVICES] == ""
    # The runtime was never asked while the GPUs were still visible.
    assert all(visible == "" for visible in runtime.asked_with)


def test_a_replica_without_gpus_ignores_an_explicit_cuda_setting(ray_assigns, monkeypatch):
    ray_assigns(GpuAssignment((), 0.0))
    assert place("cuda:1", FakeRuntime(cuda_devices=2).view()).device == "cpu"


def test_a_half_gpu_replica_uses_its_gpu_as_the_runtime_numbers_it_and_carries_its_share(
    ray_assigns, monkeypatch
):
    # Ray reserved node GPU 3 and set CUDA_VISIBLE_DEVICES=3: torch sees it as its only device.
    ray_assigns(GpuAssignment(("3",), 0.5), visible="3")
    placement = place("auto", FakeRuntime(cuda_devices=1).view())
    assert placement.device == "cuda:0"
    assert placement.assigned_gpus == ("3",)
    assert placement.gpu_memory_fraction == 0.5
    assert os.environ[CUDA_VISIBLE_DEVICES] == "3"


def test_a_whole_gpu_replica_is_not_capped(ray_assigns, monkeypatch):
    ray_assigns(GpuAssignment(("0", "1"), 2.0), visible="0,1")
    placement = place("auto", FakeRuntime(cuda_devices=2).view())
    assert (placement.device, placement.gpu_memory_fraction) == ("cuda:0", None)
    assert placement.assigned_gpus == ("0", "1")


def test_when_ray_does_not_set_visible_devices_the_gpu_id_is_the_runtime_index(ray_assigns, monkeypatch):
    ray_assigns(GpuAssignment(("1",), 0.25))  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    assert place("auto", FakeRuntime(cuda_devices=2).view()).device == "cuda:1"


def test_a_logical_gpu_runs_on_cpu_with_a_warning_naming_it(ray_assigns, monkeypatch, caplog):
    ray_assigns(GpuAssignment(("0",), 0.5), visible="0")
    with caplog.at_level(logging.WARNING, logger="pipeline.devices"):
        placement = place("auto", FakeRuntime(cuda_devices=0).view())
    assert placement.device == "cpu"
    assert placement.assigned_gpus == ("0",)
    assert placement.gpu_memory_fraction is None
    assert "Ray assigned GPU 0 but torch sees no such CUDA device" in caplog.text


def test_apples_gpu_assigned_by_ray_is_used_through_mps(ray_assigns, monkeypatch):
    ray_assigns(GpuAssignment(("0",), 1.0))
    assert place("auto", FakeRuntime(cuda_devices=0, mps=True).view()).device == "mps"


def test_device_cpu_wins_over_an_assigned_gpu(ray_assigns, monkeypatch):
    ray_assigns(GpuAssignment(("0",), 0.5), visible="0")
    placement = place("cpu", FakeRuntime(cuda_devices=1).view())
    assert placement.device == "cpu"
    assert os.environ[CUDA_VISIBLE_DEVICES] == ""


@pytest.mark.parametrize(
    ("requested", "cuda_devices", "mps", "expected"),
    [
        ("auto", 1, False, "cuda:0"),
        ("auto", 0, True, "mps"),
        ("auto", 0, False, "cpu"),
        ("cuda:1", 2, False, "cuda:1"),
        ("cpu", 1, False, "cpu"),
    ],
)
def test_outside_ray_the_device_setting_applies(
    ray_assigns, monkeypatch, requested, cuda_devices, mps, expected
):
    ray_assigns(None, visible="0")
    placement = place(requested, FakeRuntime(cuda_devices, mps).view())
    assert placement.device == expected
    assert os.environ[CUDA_VISIBLE_DEVICES] == "0"  # nothing hidden outside a replica


def test_outside_ray_there_is_no_assignment() -> None:
    # The unit-test process is no Ray actor, whether or not it has imported ray.
    assert devices.ray_gpu_assignment() is None
