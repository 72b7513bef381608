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


def piper_app_config(port: int, data_dirs: dict[str, Path]):
    """The offline default app from serve_config.yaml, engine pinned to Piper."""
    from deployments.launcher import load_config

    return load_config(
        REPO_ROOT / "serve_config.yaml",
        port=port,
        args_override={
            "engine": "piper",
            "voices_dir": str(data_dirs["voices"]),
            "outputs_dir": str(data_dirs["outputs"]),
        },
    )


@pytest.fixture(scope="session")
def piper_app(serve_instance: int, data_dirs: dict[str, Path]) -> str:
    from deployments.launcher import deploy_config

    deploy_config(piper_app_config(serve_instance, data_dirs))
    return f"http://127.0.0.1:{serve_instance}"


@pytest.fixture(scope="session")
def chatterbox_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Chatterbox checkpoint in upstream's layout, loaded through the real code path."""
    from tests.chatterbox_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("chatterbox-checkpoint"))


@pytest.fixture(scope="session")
def chatterbox_app(
    serve_instance: int, data_dirs: dict[str, Path], chatterbox_checkpoint: Path, piper_app: str
) -> str:
    """A second app of the same serve_config.yaml at /cbx, serving the random Chatterbox checkpoint.

    Deployed beside the Piper app (Serve deploys declaratively: the unchanged Piper app stays).
    Chunks are capped at 1 s of speech: full-size S3Gen costs ~7 s of CPU per second of audio.
    """
    from deployments.launcher import deploy_config, load_config

    piper = piper_app_config(serve_instance, data_dirs)
    chatterbox = load_config(
        REPO_ROOT / "serve_config.yaml",
        port=serve_instance,
        args_override={
            "engine": "chatterbox",
            "chatterbox": {
                "checkpoint_dir": str(chatterbox_checkpoint),
                "max_new_tokens": 25,
                "download": False,
            },
            "voices_dir": str(data_dirs["voices"]),
            "outputs_dir": str(data_dirs["outputs"]),
            "tts": {"max_ongoing_requests": 8},
        },
    )
    application = chatterbox.applications[0].model_copy(
        update={"name": "chatterbox-random", "route_prefix": "/cbx"}
    )
    deploy_config(piper.model_copy(update={"applications": [*piper.applications, application]}))
    return f"http://127.0.0.1:{serve_instance}/cbx"


@pytest.fixture(scope="session")
def client(piper_app: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=piper_app, timeout=600) as http:
        yield http


@pytest.fixture(scope="session")
def transcriber():
    """The real bundled faster-whisper tiny.en, in the test process, to check what the API returns."""
    from pipeline.engines.whisper import WhisperTranscriber

    return WhisperTranscriber(model="bundled", cpu_threads=2)
