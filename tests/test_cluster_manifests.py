"""The cluster manifests (cluster/) deploy the app of serve_config.yaml and fit the nodes they declare.

No Ray cluster starts here. The Serve configs in the manifests are generated from serve_config.yaml
by cluster/render_manifests.py (``make manifests``); a test fails when one is stale. Each manifest
is validated with Serve's own config schema (and, for the cluster launcher, with the checks
``ray up`` runs), every application's ``args`` with the app's ``AppSettings``, and what each
deployment asks for (CPUs, GPUs, custom resources such as ``stable_node``) is packed onto the node
groups each manifest declares, so a replica that could never be placed fails here rather than
pending on a cluster.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
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

# The only args a GPU cluster changes (besides host 0.0.0.0 and JSON logs): an independent statement
# of what cluster/render_manifests.py's GPU changes must amount to.
GPU_CLUSTER_ARGS = {
    "accelerator": "gpu",
    "voices_dir": "/data/voices",
    "vc_inputs_dir": "/data/vc_inputs",
    "outputs_dir": "/data/outputs",
}
DATA_DIR_ARGS = ("voices_dir", "vc_inputs_dir", "outputs_dir")
# Declared by nodes that do not go away; see serve_config.yaml and cluster/README.md.
STABLE_NODE = "stable_node"
LAPTOP_CPUS = 2
STAGES = [name for name, field in AppSettings.model_fields.items() if field.annotation is DeploymentSpec]
SERVE_DEPLOY = re.compile(r"serve deploy ([^\s;']+)")
EPSILON = 1e-9


def load_renderer() -> ModuleType:
    """cluster/render_manifests.py, a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("render_manifests", CLUSTER_DIR / "render_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


render_manifests = load_renderer()


def locked_ray_version() -> str:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    (version,) = [package["version"] for package in lock["package"] if package["name"] == "ray"]
    return version


def python_minor(specifier: str) -> str:
    """The one Python 3 minor version a requires-python specifier allows ("3.11")."""
    (minor,) = [f"3.{minor}" for minor in range(6, 40) if f"3.{minor}.0" in SpecifierSet(specifier)]
    return minor


def locked_python() -> str:
    lock = python_minor(tomllib.loads((REPO_ROOT / "uv.lock").read_text())["requires-python"])
    project = python_minor(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert lock == project, "uv.lock and pyproject.toml allow different Pythons: run uv lock"
    return lock


RAY_VERSION = locked_ray_version()
PYTHON_VERSION = locked_python()
PYTHON_TAG = "py" + PYTHON_VERSION.replace(".", "")


@dataclass(frozen=True)
class NodeGroup:
    """One kind of node as a manifest declares it: Ray resources per node, and how many nodes."""

    name: str
    resources: dict[str, float]  # CPU, GPU and custom resources, as Ray sees them on one node
    min_count: int
    max_count: int
    is_head: bool = False

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)


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


def demand(spec: DeploymentSpec) -> dict[str, float]:
    """What one replica asks Ray for: its ray_actor_options as deployments/app.py sets them."""
    wanted = {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}
    return {name: amount for name, amount in wanted.items() if amount > 0}


def fits(wanted: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(name, 0.0) + EPSILON >= amount for name, amount in wanted.items())


def pack(
    replicas: list[tuple[str, dict[str, float]]], groups: list[NodeGroup], counts: dict[str, int]
) -> None:
    """Place every replica on a node of these groups, at most ``counts[group]`` nodes each (first
    fit, largest first): a placement that Ray's scheduler and autoscaler can then find too."""
    nodes: list[dict[str, float]] = []
    opened: Counter[str] = Counter()
    for name, wanted in sorted(replicas, key=lambda replica: (-replica[1].get("GPU", 0), -replica[1]["CPU"])):
        node = next((free for free in nodes if fits(wanted, free)), None)
        if node is None:
            group = next(
                (g for g in groups if opened[g.name] < counts[g.name] and fits(wanted, g.resources)), None
            )
            assert group is not None, (
                f"no room for a {name} replica ({wanted}): the nodes are full or offer none of it "
                f"({ {g.name: counts[g.name] for g in groups} } nodes)"
            )
            opened[group.name] += 1
            node = dict(group.resources)
            nodes.append(node)
        for resource, amount in wanted.items():
            node[resource] -= amount


def assert_deployments_fit(settings: AppSettings, groups: list[NodeGroup]) -> None:
    """Every deployment lands on these node groups, from the start and at its max_replicas.

    The app is built as soon as the head is up (KubeRay, the launcher and Anyscale deploy it then),
    when the head is the only node the builder sees: a custom resource the head does not declare
    would be dropped, and its deployment placed anywhere.
    """
    (head,) = [group for group in groups if group.is_head]
    assert settings.accelerator == "gpu", "clusters ask for GPUs before the GPU workers have joined"
    seen_at_build = frozenset(name for name, amount in head.resources.items() if amount > 0)
    specs = {name: getattr(settings, name).for_cluster(True, seen_at_build) for name in STAGES}
    for name, spec in specs.items():
        assert spec.resources == getattr(settings, name).resources, (
            f"{name}: the head does not declare {sorted(getattr(settings, name).resources)}, so the "
            "builder drops them"
        )
    for group in groups:
        if group.gpus > 0:
            assert STABLE_NODE not in group.resources, f"{group.name}: GPU nodes come and go"
    for name, spec in specs.items():
        homes = [group for group in groups if fits(demand(spec), group.resources)]
        assert homes, f"{name} ({demand(spec)}) fits no node group"
        assert not any(group.is_head for group in homes), f"{name} could run on the head"
        for group in homes:
            assert all(group.resources.get(resource, 0) > 0 for resource in spec.resources)
            if spec.num_gpus > 0:
                sharing = math.floor(group.gpus / spec.num_gpus + EPSILON)
                assert sharing * spec.num_cpus <= group.resources["CPU"] + EPSILON, (
                    f"{name}: the {sharing} replicas that share a {group.name} node's GPUs need "
                    f"{sharing * spec.num_cpus} CPUs, the node has {group.resources['CPU']}: GPU left idle"
                )
    for bound, counts in (
        (0, {group.name: group.min_count for group in groups}),
        (1, {group.name: group.max_count for group in groups}),
    ):
        replicas = [
            (name, demand(spec)) for name, spec in specs.items() for _ in range(replica_bounds(spec)[bound])
        ]
        pack(replicas, groups, counts)


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """KubeRay's ``resources`` start param: a JSON object, shell-quoted into ``ray start --resources``."""
    if "resources" not in params:
        return {}
    (text,) = shlex.split(params["resources"])
    return json.loads(text)


def k8s_cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("6", "500m") in CPUs; no library in the lock parses these."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def rayservice() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text()))
    (service,) = [document for document in documents if document["kind"] == "RayService"]
    return service


def kuberay_group(group: dict[str, Any], *, is_head: bool) -> NodeGroup:
    """Ray's resources on one pod of a group: start params first, else the container's limits."""
    params = group["rayStartParams"]
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    resources = {
        "CPU": float(params["num-cpus"]) if "num-cpus" in params else k8s_cpus(limits["cpu"]),
        "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
        **ray_start_resources(params),
    }
    if is_head:
        return NodeGroup("head", resources, 1, 1, is_head=True)
    return NodeGroup(group["groupName"], resources, group["minReplicas"], group["maxReplicas"])


def rayservice_groups() -> list[NodeGroup]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return [
        kuberay_group(cluster["headGroupSpec"], is_head=True),
        *(kuberay_group(group, is_head=False) for group in cluster["workerGroupSpecs"]),
    ]


def anyscale_groups(service: dict[str, Any]) -> list[NodeGroup]:
    compute = service["compute_config"]
    return [
        NodeGroup("head", compute["head_node"]["resources"], 1, 1, is_head=True),
        *(
            NodeGroup(node["name"], node["resources"], node["min_nodes"], node["max_nodes"])
            for node in compute["worker_nodes"]
        ),
    ]


def launcher_groups(config: dict[str, Any]) -> list[NodeGroup]:
    return [
        NodeGroup(name, node["resources"], 1, 1, is_head=True)
        if name == config["head_node_type"]
        else NodeGroup(name, node["resources"], node["min_workers"], node["max_workers"])
        for name, node in config["available_node_types"].items()
    ]


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
    assert {name: spec.resources for name, spec in specs.items()} == {name: {} for name in STAGES}
    assert starting_cpus <= LAPTOP_CPUS, f"the starting replicas need {starting_cpus} CPUs"


def test_generated_cluster_files_are_fresh() -> None:
    stale = render_manifests.stale_files()

    assert stale == [], f"{[str(path) for path in stale]} differ from serve_config.yaml: run `make manifests`"


def test_renderer_rewrites_what_serve_config_changes_and_keeps_its_comments(tmp_path: Path) -> None:
    for path in [render_manifests.SOURCE, *(target.path for target in render_manifests.TARGETS)]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / path, tmp_path / path)
    source = tmp_path / render_manifests.SOURCE
    source.write_text(source.read_text().replace("max_replicas: 8\n", "max_replicas: 6\n", 1))

    stale = render_manifests.stale_files(tmp_path)
    check_status = render_manifests.main(["--check", "--root", str(tmp_path)])
    written = render_manifests.write(tmp_path)

    assert stale == written == [target.path for target in render_manifests.TARGETS]
    assert check_status == 1
    assert render_manifests.stale_files(tmp_path) == []
    assert render_manifests.main(["--check", "--root", str(tmp_path)]) == 0
    gpu_config = (tmp_path / render_manifests.GPU_CONFIG).read_text()
    (settings,) = validated_settings(yaml.safe_load(gpu_config))
    assert settings.tts.autoscaling is not None and settings.tts.autoscaling["max_replicas"] == 6
    body = render_manifests._without_header(source.read_text().splitlines())
    comments = [line.strip() for line in body if line.strip().startswith("#")]
    assert comments and all(comment in gpu_config for comment in comments)
    assert render_manifests.NOTE.lower() in gpu_config.lower()


def test_renderer_falls_back_to_a_plain_dump_where_text_edits_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_text = (REPO_ROOT / "serve_config.yaml").read_text()
    source = yaml.safe_load(source_text)
    block = re.search(r"^http_options:\n(?:  .*\n)+", source_text, re.MULTILINE)
    assert block is not None
    flow_style = source_text.replace(block[0], f"http_options: {json.dumps(source['http_options'])}\n")

    body = render_manifests.render_body(flow_style, render_manifests.GPU)

    assert yaml.safe_load("\n".join(body)) == render_manifests.expected_data(source, render_manifests.GPU)
    assert "comments are lost" in capsys.readouterr().err


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
    assert actual.logging_config == expected.logging_config.model_copy(update={"encoding": "JSON"})


def test_the_builder_passes_serve_build_without_a_ray_cluster(tmp_path: Path) -> None:
    """`serve build` itself, in a fresh process with no Ray cluster, on the app the builder returns.

    `serve build` accepts only an Application attribute: given ``deployments.app:build_app`` (a
    builder, which `serve run` and `serve deploy` call with the config's args) it raises TypeError.
    So a module in tmp_path binds the builder's Application for the GPU config's args, and asserts
    that building it started no Ray.
    """
    (application,) = load_yaml(GPU_CONFIG)["applications"]
    (tmp_path / "built.py").write_text(
        textwrap.dedent(
            f"""
            import ray
            from {application["import_path"].replace(":", " import ")}
            app = build_app({application["args"]!r})
            assert not ray.is_initialized(), "building the app started Ray"
            """
        )
    )
    output = tmp_path / "built.yaml"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    serve = Path(sys.executable).with_name("serve")

    result = subprocess.run(
        [str(serve), "build", "built:app", "--app-dir", str(tmp_path), "-o", str(output)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    built = ServeDeploySchema.model_validate(load_yaml(output))
    (settings,) = validated_settings(load_yaml(GPU_CONFIG))
    deployments = {deployment.name: deployment for deployment in built.applications[0].deployments}
    assert set(deployments) == {"Ingress", "Chunker", "TTS", "VC", "Validator", "PostProcess"}
    assert deployments["TTS"].ray_actor_options.num_gpus == settings.tts.num_gpus
    assert deployments["Ingress"].max_queued_requests == settings.ingress.max_queued_requests
    # No cluster to read: stable_node is dropped, as on a laptop (see cluster/README.md).
    assert not deployments["Ingress"].ray_actor_options.resources
    assert "could not be read" in result.stderr


def test_rayservice_node_groups_fit_every_deployment() -> None:
    service = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    (settings,) = validated_settings(yaml.safe_load(service["spec"]["serveConfigV2"]))

    assert_deployments_fit(settings, rayservice_groups())
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], f"{group['groupName']}: requests != limits"
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert service["apiVersion"] == "ray.io/v1"
    assert cluster["enableInTreeAutoscaling"] is True


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
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    declared_claims = {
        document["metadata"]["name"]
        for document in yaml.safe_load_all(RAYSERVICE.read_text())
        if document["kind"] == "PersistentVolumeClaim"
    }
    ingress, tts = (
        demand(getattr(settings, name).for_cluster(True, frozenset({STABLE_NODE})))
        for name in ("ingress", "tts")
    )

    hosts = {"ingress": 0, "tts": 0}
    for group in groups:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        mounts = [PurePosixPath(mount["mountPath"]) for mount in container.get("volumeMounts", [])]
        env = {variable["name"]: variable["value"] for variable in container.get("env", [])}
        claims = {
            volume["persistentVolumeClaim"]["claimName"]
            for volume in pod.get("volumes", [])
            if "persistentVolumeClaim" in volume
        }
        offered = kuberay_group(group, is_head=False).resources
        needed = []
        if fits(ingress, offered):  # the Ingress reads and writes the data dirs
            hosts["ingress"] += 1
            needed += [getattr(settings, key) for key in DATA_DIR_ARGS]
        if fits(tts, offered):  # Chatterbox weights land in HF_HOME
            hosts["tts"] += 1
            needed.append(env["HF_HOME"])
        for path in needed:
            assert PurePosixPath(path).is_absolute(), path
            assert any(PurePosixPath(path).is_relative_to(mount) for mount in mounts), (
                f"{group['groupName']}: {path} is on no volume"
            )
        assert claims <= declared_claims, "a worker mounts a PVC this file does not create"

    assert hosts["ingress"] and hosts["tts"]


def test_anyscale_service_runs_the_cluster_config_behind_its_auth_token() -> None:
    service = load_yaml(ANYSCALE_SERVICE)

    settings = validated_settings(
        {key: service[key] for key in ("applications", "http_options", "logging_config")}
    )

    assert service["query_auth_token_enabled"] is True, "the app has no authentication of its own"
    assert ("image_uri" in service) != ("containerfile" in service)
    # Anyscale rejects these: its load balancer owns host and port.
    assert not {"host", "port", "root_path"} & set(service["http_options"])
    assert "proxy_location" not in service
    assert all(PurePosixPath(getattr(app, key)).is_absolute() for app in settings for key in DATA_DIR_ARGS)


def test_anyscale_node_types_fit_every_deployment() -> None:
    service = load_yaml(ANYSCALE_SERVICE)
    (settings,) = validated_settings({"applications": service["applications"]})

    assert_deployments_fit(settings, anyscale_groups(service))
    assert service["compute_config"]["head_node"]["resources"]["CPU"] == 0
    for node in service["compute_config"]["worker_nodes"]:
        if STABLE_NODE in node["resources"]:
            assert node["market_type"] == "ON_DEMAND", f"{node['name']}: stable nodes must not be spot"


def test_cluster_launcher_config_passes_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml(LAUNCHER_CONFIG)

    # What `ray up` runs before touching the cloud: Ray's JSON schema plus its consistency checks.
    validate_config(prepare_config(config))


def test_cluster_launcher_deploys_the_gpu_config_baked_into_the_image_onto_its_node_types() -> None:
    config = load_yaml(LAUNCHER_CONFIG)
    groups = launcher_groups(config)
    (deployed_path,) = [
        path for command in config["head_start_ray_commands"] for path in re.findall(SERVE_DEPLOY, command)
    ]
    head_start = " ".join(config["head_start_ray_commands"])

    baked = image_files(DOCKERFILES["gpu"])
    (settings,) = validated_settings(load_yaml(baked[PurePosixPath(deployed_path)]))

    assert baked[PurePosixPath(deployed_path)] == GPU_CONFIG
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
    assert "--num-cpus=0" in head_start
    assert sum(group.max_count for group in groups if not group.is_head) <= config["max_workers"]
    assert_deployments_fit(settings, groups)
    for group in groups:
        node = config["available_node_types"][group.name]
        if STABLE_NODE in group.resources:
            assert "InstanceMarketOptions" not in node["node_config"], (
                f"{group.name}: stable nodes are on-demand"
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
    assert base_image == f"rayproject/ray:{RAY_VERSION}-{PYTHON_TAG}{suffix}"
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


def test_cluster_files_name_the_locked_ray_and_python_versions() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    images = {
        container["image"]
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])
        for container in group["template"]["spec"]["containers"]
    }
    texts = {
        path: path.read_text()
        for path in sorted(CLUSTER_DIR.rglob("*"))
        if path.is_file() and path.suffix in {".yaml", ".md", ".gpu", ".cpu"}
    }
    base_images = {
        (path.name, match)
        for path, text in texts.items()
        for match in re.findall(r"rayproject/ray:(\S+?)-py(\d+)", text)
    }
    readme = texts[CLUSTER_DIR / "README.md"]

    assert ray.__version__ == RAY_VERSION, "the venv's Ray is not the locked one: run make install"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON_VERSION
    assert cluster["rayVersion"] == RAY_VERSION
    assert load_yaml(ANYSCALE_SERVICE)["ray_version"] == RAY_VERSION
    assert len(images) == 1, "head and workers must run one image: the app is built on the head"
    assert base_images and {version for _, version in base_images} == {(RAY_VERSION, PYTHON_TAG[2:])}, (
        base_images
    )
    assert set(re.findall(r"\bRay (\d+\.\d+\.\d+)", readme)) <= {RAY_VERSION}
    assert set(re.findall(r"\bPython (3\.\d+)", readme)) <= {PYTHON_VERSION}
