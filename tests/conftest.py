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
    dirs = {"voices": root / "voices", "outputs": root / "outputs"}
    for directory in dirs.values():
        directory.mkdir()
    return dirs


@pytest.fixture(scope="session")
def serve_instance() -> Iterator[int]:
    """A local Ray + Serve with HTTP on a free port; yields the port."""
    import ray
    from ray import serve

    from deployments.launcher import init_ray

    init_ray(num_cpus=TEST_CLUSTER_CPUS)
    yield free_port()
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def piper_app(serve_instance: int, data_dirs: dict[str, Path]) -> str:
    """The offline default app, deployed from serve_config.yaml (engine pinned to Piper)."""
    from deployments.launcher import deploy_config, load_config

    config = load_config(
        REPO_ROOT / "serve_config.yaml",
        port=serve_instance,
        args_override={
            "engine": "piper",
            "voices_dir": str(data_dirs["voices"]),
            "outputs_dir": str(data_dirs["outputs"]),
        },
    )
    deploy_config(config)
    return f"http://127.0.0.1:{serve_instance}"


@pytest.fixture(scope="session")
def client(piper_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=piper_app, timeout=600) as http:
        yield http


@pytest.fixture(scope="session")
def transcriber():
    """The real bundled faster-whisper tiny.en, in the test process, to check what the API returns."""
    from pipeline.engines.whisper import WhisperTranscriber

    return WhisperTranscriber(model="bundled", cpu_threads=2)
