"""The cluster manifests (cluster/) deploy the app of serve_config.yaml and fit the nodes they declare.

No Ray cluster starts here: each manifest is validated with Serve's own config schema (and, for the
cluster launcher, with the checks ``ray up`` runs), every application's ``args`` with the app's
``AppSettings``, and what each deployment asks for is checked against the nodes each manifest
declares, so a replica that could never be placed fails here rather than pending on a cluster.
"""

from __future__ import annotations

import ast
import math
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import ray
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deployments.launcher import load_config
from pipeline.settings import AppSettings, DeploymentSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO_ROOT / "cluster"
GPU_CONFIG = CLUSTER_DIR / "serve_config.gpu.yaml"
RAYSERVICE = CLUSTER_DIR / "kuberay" / "rayservice.yaml"
ANYSCALE_SERVICE = CLUSTER_DIR / "anyscale" / "service.yaml"
LAUNCHER_CONFIG = CLUSTER_DIR / "ray-cluster.yaml"
DOCKERFILES = {"gpu": CLUSTER_DIR / "Dockerfile.gpu", "cpu": CLUSTER_DIR / "Dockerfile.cpu"}

# The only args a GPU cluster changes: see the comments in cluster/serve_config.gpu.yaml.
GPU_CLUSTER_ARGS = {
    "accelerator": "gpu",
    "voices_dir": "/data/voices",
    "vc_inputs_dir": "/data/vc_inputs",
    "outputs_dir": "/data/outputs",
}
DATA_DIR_ARGS = ("voices_dir", "vc_inputs_dir", "outputs_dir")
LAPTOP_CPUS = 2
STAGES = [name for name, field in AppSettings.model_fields.items() if field.annotation is DeploymentSpec]
SERVE_DEPLOY = re.compile(r"serve deploy ([^\s;']+)")
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


@dataclass(frozen=True)
class WorkerNodes:
    """One worker group as a manifest declares it: Ray resources per node, and how many nodes at most."""

    cpus: float
    gpus: float
    max_count: int


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def validated_settings(config: dict[str, Any]) -> list[AppSettings]:
    """Serve's schema for the whole config, then AppSettings for every application's args."""
    ServeDeploySchema.model_validate(config)
    return [AppSettings.model_validate(app.get("args") or {}) for app in config["applications"]]


def replica_bounds(spec: DeploymentSpec) -> tuple[int, int]:
    """Replicas at start and at most, with Serve's own autoscaling defaults."""
    if spec.autoscaling is None:
        count = spec.num_replicas or 1
        return count, count
    autoscaling = AutoscalingConfig(**spec.autoscaling)
    start = max(autoscaling.min_replicas, autoscaling.initial_replicas or 0)
    return start, autoscaling.max_replicas


def assert_deployments_fit(settings: AppSettings, workers: WorkerNodes) -> None:
    """Every deployment lands on these workers (heads take no replicas) and none waits for a node."""
    specs = {name: getattr(settings, name).for_cluster(True) for name in STAGES}
    one_each_cpus = math.fsum(spec.num_cpus for spec in specs.values())
    one_each_gpus = math.fsum(spec.num_gpus for spec in specs.values())
    assert one_each_cpus <= workers.cpus, f"one replica of each deployment needs {one_each_cpus} CPUs"
    assert one_each_gpus <= workers.gpus, f"one replica of each GPU deployment needs {one_each_gpus} GPUs"
    for name, spec in specs.items():
        if spec.num_gpus > 0:
            replicas_per_node = math.floor(workers.gpus / spec.num_gpus)
            assert replicas_per_node * spec.num_cpus <= workers.cpus, (
                f"{name}: the {replicas_per_node} replicas that share a worker's GPUs need "
                f"{replicas_per_node * spec.num_cpus} CPUs, the worker has {workers.cpus}: GPU left idle"
            )
    peak_cpus = math.fsum(replica_bounds(spec)[1] * spec.num_cpus for spec in specs.values())
    peak_gpus = math.fsum(replica_bounds(spec)[1] * spec.num_gpus for spec in specs.values())
    assert peak_cpus <= workers.cpus * workers.max_count, f"max_replicas need {peak_cpus} CPUs"
    assert peak_gpus <= workers.gpus * workers.max_count, f"max_replicas need {peak_gpus} GPUs"


def without_data_dirs(application: dict[str, Any]) -> dict[str, Any]:
    args = {key: value for key, value in application["args"].items() if key not in DATA_DIR_ARGS}
    return {**application, "args": args}


def rayservice() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text()))
    (service,) = [document for document in documents if document["kind"] == "RayService"]
    return service


def k8s_cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("6", "500m") in CPUs; no library in the lock parses these."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def dockerfile_instructions(path: Path) -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, shell-split arguments), continuation lines joined, comments dropped.

    Hand-written because no Dockerfile parser is among the locked dependencies, and these
    Dockerfiles use nothing beyond plain instructions and backslash continuations.
    """
    logical_lines: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            logical_lines.append(pending.strip())
            pending = ""
    return [(words[0].upper(), words[1:]) for words in map(shlex.split, logical_lines)]


def image_files(path: Path) -> dict[PurePosixPath, Path]:
    """Where each local COPY source lands in the image: image path -> repo path."""
    workdir = PurePosixPath("/")
    placed: dict[PurePosixPath, Path] = {}
    for instruction, arguments in dockerfile_instructions(path):
        if instruction == "WORKDIR":
            workdir = workdir / arguments[0]
        if instruction == "COPY" and not any(argument.startswith("--from") for argument in arguments):
            *sources, destination = [argument for argument in arguments if not argument.startswith("--")]
            target = PurePosixPath(posixpath.normpath(str(workdir / destination)))
            for source in sources:
                local = REPO_ROOT / source
                # A directory's contents go into the destination; a file goes inside it.
                placed[target if local.is_dir() else target / local.name] = local
    return placed


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions(path):
        if instruction == "ENV":
            env.update(argument.split("=", 1) for argument in arguments)
    return env


def test_serve_config_validates_and_names_a_builder_that_exists() -> None:
    config = load_yaml(REPO_ROOT / "serve_config.yaml")

    validated_settings(config)
    module, attribute = config["applications"][0]["import_path"].split(":")
    # Read, not imported: importing the builder pulls in every deployment and its dependencies.
    source = ast.parse((REPO_ROOT / (module.replace(".", "/") + ".py")).read_text())

    assert attribute in {node.name for node in source.body if isinstance(node, ast.FunctionDef)}


def test_serve_config_on_a_laptop_asks_for_no_gpu_and_starts_within_two_cores() -> None:
    (settings,) = validated_settings(load_yaml(REPO_ROOT / "serve_config.yaml"))

    specs = {name: getattr(settings, name).for_cluster(False) for name in STAGES}
    starting_cpus = math.fsum(replica_bounds(spec)[0] * spec.num_cpus for spec in specs.values())

    assert {name: spec.num_gpus for name, spec in specs.items()} == dict.fromkeys(STAGES, 0.0)
    assert starting_cpus <= LAPTOP_CPUS, f"the starting replicas need {starting_cpus} CPUs"


def test_gpu_config_is_serve_config_with_only_the_cluster_values_changed() -> None:
    expected = load_config(
        REPO_ROOT / "serve_config.yaml", host="0.0.0.0", port=8000, args_override=GPU_CLUSTER_ARGS
    )
    config = load_yaml(GPU_CONFIG)

    validated_settings(config)
    actual = ServeDeploySchema.model_validate(config)

    assert actual.applications == expected.applications
    assert actual.http_options == expected.http_options
    assert actual.proxy_location == expected.proxy_location


def test_rayservice_gpu_workers_fit_every_deployment() -> None:
    service = rayservice()
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    (settings,) = validated_settings(yaml.safe_load(service["spec"]["serveConfigV2"]))

    assert container["resources"]["requests"] == limits, "GPU pods need requests equal to limits"
    assert_deployments_fit(
        settings,
        WorkerNodes(k8s_cpus(limits["cpu"]), float(limits["nvidia.com/gpu"]), group["maxReplicas"]),
    )
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayservice_embeds_the_gpu_config_verbatim() -> None:
    service = rayservice()

    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])

    assert service["apiVersion"] == "ray.io/v1"
    assert embedded == load_yaml(GPU_CONFIG)
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_rayservice_keeps_replicas_off_the_head_and_passes_string_start_params() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    (head_container,) = head["template"]["spec"]["containers"]
    groups = [head, *cluster["workerGroupSpecs"]]

    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert "include-dashboard" not in head["rayStartParams"], "KubeRay deploys Serve via the dashboard"
    # KubeRay's CRD types rayStartParams as map[string]string: a bare 0 is rejected on apply.
    assert all(isinstance(value, str) for group in groups for value in group["rayStartParams"].values())


def test_rayservice_workers_mount_the_data_dirs_and_the_hugging_face_cache() -> None:
    service = rayservice()
    (settings,) = validated_settings(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    mounts = [PurePosixPath(mount["mountPath"]) for mount in container["volumeMounts"]]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    declared_claims = {
        document["metadata"]["name"]
        for document in yaml.safe_load_all(RAYSERVICE.read_text())
        if document["kind"] == "PersistentVolumeClaim"
    }

    for path in (settings.voices_dir, settings.outputs_dir, env["HF_HOME"]):
        assert PurePosixPath(path).is_absolute(), path
        assert any(PurePosixPath(path).is_relative_to(mount) for mount in mounts), f"{path} is on no volume"
    assert claims <= declared_claims, "a worker mounts a PVC this file does not create"


def test_anyscale_service_runs_the_gpu_config_behind_its_auth_token() -> None:
    service = load_yaml(ANYSCALE_SERVICE)
    gpu = load_yaml(GPU_CONFIG)

    settings = validated_settings(
        {key: service[key] for key in ("applications", "http_options", "logging_config")}
    )

    assert service["query_auth_token_enabled"] is True, "the app has no authentication of its own"
    assert ("image_uri" in service) != ("containerfile" in service)
    # Anyscale rejects these: its load balancer owns host and port.
    assert not {"host", "port", "root_path"} & set(service["http_options"])
    assert service["http_options"] == {
        key: value for key, value in gpu["http_options"].items() if key not in ("host", "port")
    }
    assert service["logging_config"] == gpu["logging_config"]
    assert [without_data_dirs(app) for app in service["applications"]] == [
        without_data_dirs(app) for app in gpu["applications"]
    ]
    assert all(PurePosixPath(getattr(app, key)).is_absolute() for app in settings for key in DATA_DIR_ARGS)


def test_anyscale_gpu_workers_fit_every_deployment() -> None:
    service = load_yaml(ANYSCALE_SERVICE)
    compute = service["compute_config"]
    (settings,) = validated_settings({"applications": service["applications"]})
    (workers,) = compute["worker_nodes"]

    assert compute["head_node"]["resources"] == {"CPU": 0}
    assert_deployments_fit(
        settings, WorkerNodes(workers["resources"]["CPU"], workers["resources"]["GPU"], workers["max_nodes"])
    )


def test_cluster_launcher_config_passes_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml(LAUNCHER_CONFIG)

    # What `ray up` runs before touching the cloud: Ray's JSON schema plus its consistency checks.
    validate_config(prepare_config(config))


def test_cluster_launcher_deploys_the_gpu_config_baked_into_the_image_onto_gpu_workers() -> None:
    config = load_yaml(LAUNCHER_CONFIG)
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    (worker_type,) = [node for name, node in node_types.items() if name != config["head_node_type"]]
    (deployed_path,) = [
        path for command in config["head_start_ray_commands"] for path in re.findall(SERVE_DEPLOY, command)
    ]

    baked = image_files(DOCKERFILES["gpu"])
    (settings,) = validated_settings(load_yaml(baked[PurePosixPath(deployed_path)]))

    assert baked[PurePosixPath(deployed_path)] == GPU_CONFIG
    assert head["resources"] == {"CPU": 0}
    assert_deployments_fit(
        settings,
        WorkerNodes(
            worker_type["resources"]["CPU"], worker_type["resources"]["GPU"], worker_type["max_workers"]
        ),
    )


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_bakes_an_importable_app_on_the_locked_ray_and_python(kind: str) -> None:
    dockerfile = DOCKERFILES[kind]
    instructions = dockerfile_instructions(dockerfile)
    (base_image,) = [arguments[0].split("=", 1)[1] for name, arguments in instructions if name == "ARG"]
    placed = image_files(dockerfile)
    env = dockerfile_env(dockerfile)
    module, _ = load_yaml(GPU_CONFIG)["applications"][0]["import_path"].split(":")
    ignore_file = dockerfile.with_name(f"{dockerfile.name}.dockerignore").read_text().splitlines()
    patterns = [line for line in ignore_file if line.strip() and not line.startswith("#")]
    sent = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}

    suffix = "-gpu" if kind == "gpu" else ""
    assert base_image == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}{suffix}"
    assert ("FROM", ["${BASE_IMAGE}"]) in instructions
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    module_file = PurePosixPath(env["PYTHONPATH"]) / (module.replace(".", "/") + ".py")
    assert any(module_file.is_relative_to(image_path) for image_path in placed), f"{module_file} not baked"
    for source in placed.values():
        assert source.exists(), source
        assert source.relative_to(REPO_ROOT).as_posix() in sent, f"{source} excluded from the build context"
    assert patterns[0] == "*", "the ignore file lists what is sent, after excluding everything"


def test_dockerfiles_differ_only_in_their_base_image() -> None:
    gpu, cpu = (
        [instruction for instruction in dockerfile_instructions(DOCKERFILES[kind]) if instruction[0] != "ARG"]
        for kind in ("gpu", "cpu")
    )

    assert gpu == cpu


def test_cluster_manifests_pin_the_locked_ray_version() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    images = {
        container["image"]
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])
        for container in group["template"]["spec"]["containers"]
    }

    assert cluster["rayVersion"] == ray.__version__
    assert load_yaml(ANYSCALE_SERVICE)["ray_version"] == ray.__version__
    assert len(images) == 1, "head and workers must run one image: the app is built on the head"
