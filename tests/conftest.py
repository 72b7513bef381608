"""Shared fixtures: one Ray instance and one real Serve app (from serve_config.yaml) per test session."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Logical CPUs for the test cluster: the Piper app and the Chatterbox app side by side ask for
# about 4 between them; Ray only counts these, the 2 real cores are shared.
TEST_CLUSTER_CPUS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service-data")
    dirs = {"voices": root / "voices", "vc_inputs": root / "vc_inputs", "outputs": root / "outputs"}
    for directory in dirs.values():
        directory.mkdir()
    return dirs


class ServeApps:
    """The apps deployed on the test Serve instance. Serve deploys declaratively (a config names
    every app there is), so each change re-sends the whole set; unchanged apps are left running."""

    def __init__(self, port: int, metrics_port: int) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self._base = None
        self._applications: dict = {}

    def deploy(self, config, name: str | None = None, route_prefix: str | None = None) -> None:
        """Deploy the (single) app of ``config``, renamed and re-routed if asked, beside the others."""
        from deployments.launcher import deploy_config

        (application,) = config.applications
        updates = {key: value for key, value in (("name", name), ("route_prefix", route_prefix)) if value}
        application = application.model_copy(update=updates)
        self._base = self._base or config
        self._applications[application.name] = application
        deploy_config(self._base.model_copy(update={"applications": list(self._applications.values())}))

    def remove(self, name: str) -> None:
        from deployments.launcher import deploy_config

        del self._applications[name]
        deploy_config(self._base.model_copy(update={"applications": list(self._applications.values())}))


@pytest.fixture(scope="session")
def serve_apps() -> Iterator[ServeApps]:
    """A local Ray + Serve with HTTP on a free port."""
    import ray
    from ray import serve

    from deployments.launcher import init_ray

    metrics_port = free_port()
    init_ray(num_cpus=TEST_CLUSTER_CPUS, metrics_port=metrics_port)
    yield ServeApps(free_port(), metrics_port)
    serve.shutdown()
    ray.shutdown()


def app_config(port: int, data_dirs: dict[str, Path], **args_override):
    """An app from serve_config.yaml with test data folders and the given args."""
    from deployments.launcher import load_config

    return load_config(
        REPO_ROOT / "serve_config.yaml",
        port=port,
        args_override={
            "voices_dir": str(data_dirs["voices"]),
            "vc_inputs_dir": str(data_dirs["vc_inputs"]),
            "outputs_dir": str(data_dirs["outputs"]),
            **args_override,
        },
    )


@pytest.fixture(scope="session")
def piper_app(serve_apps: ServeApps, data_dirs: dict[str, Path]) -> str:
    """The offline default app, engine pinned to Piper."""
    serve_apps.deploy(app_config(serve_apps.port, data_dirs, engine="piper"))
    return f"http://127.0.0.1:{serve_apps.port}"


@pytest.fixture(scope="session")
def chatterbox_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Chatterbox checkpoint in upstream's layout, loaded through the real code path."""
    from tests.chatterbox_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("chatterbox-checkpoint"))


@pytest.fixture(scope="session")
def chatterbox_app(
    serve_apps: ServeApps, data_dirs: dict[str, Path], chatterbox_checkpoint: Path, piper_app: str
) -> str:
    """A second app of the same serve_config.yaml at /cbx, serving the random Chatterbox checkpoint.

    Chunks are capped at 1 s of speech: full-size S3Gen costs seconds of CPU per second of audio.
    Two VC replicas taking one window each at a time, so the windows of one conversion must spread
    over both: with room for several, Serve's power-of-two router sent all three windows of a burst
    to one replica in 2 of 5 runs (its queue-length view lags requests sent within microseconds).
    """
    # First incremental block after 10 of the 25 tokens, so it renders while T3 still samples.
    chatterbox = {
        "checkpoint_dir": str(chatterbox_checkpoint),
        "max_new_tokens": 25,
        "download": False,
        "stream_first_block_tokens": 10,
    }
    vc = {"autoscaling": None, "num_replicas": 2, "max_ongoing_requests": 1}
    serve_apps.deploy(
        app_config(serve_apps.port, data_dirs, engine="chatterbox", chatterbox=chatterbox, vc=vc),
        name="chatterbox-random",
        route_prefix="/cbx",
    )
    return f"http://127.0.0.1:{serve_apps.port}/cbx"


@pytest.fixture(scope="session")
def client(piper_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=piper_app, timeout=600) as http:
        yield http


@pytest.fixture(scope="session")
def transcriber():
    """The real bundled faster-whisper tiny.en, in the test process, to check what the API returns."""
    from pipeline.engines.whisper import WhisperTranscriber

    return WhisperTranscriber(model="bundled", cpu_threads=2)
