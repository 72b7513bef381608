"""A real multi-node Ray cluster on one machine, serving the app of serve_config.yaml.

A head node that declares ``stable_node`` (where the ingress and CPU stages belong) and worker
nodes that declare logical GPUs, from ``ray.cluster_utils.Cluster``: separate raylets and
object stores, so removing a worker is a real node loss, with real fractional-GPU placement.

The cluster lives in its own process (a Ray driver can join one cluster only, and the test
session already runs one), driven over stdin/stdout with one JSON object a line:
``LocalCluster`` starts it and sends ``placement``, ``remove <node_id>``, ``replicas`` and
``quit``. Used by tests/cluster/ and by load_tests/autoscaling_run.py. HTTP targets 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MARK = "@@cluster "  # our lines on stdout, told apart from anything Ray or a library prints
STABLE_RESOURCE = "stable_node"


def offline_app_args(data_root: Path, **stages: dict[str, Any]) -> dict[str, Any]:
    """The app's args for a cluster with logical GPUs: the offline engines (what is tested is
    placement and recovery, not the model), GPUs asked for, data under ``data_root``, and the
    given stage specs (``tts=``, ``vc=``, ``validator=``)."""
    return {
        "engine": "piper",
        "accelerator": "gpu",
        "voices_dir": str(data_root / "voices"),
        "vc_inputs_dir": str(data_root / "vc_inputs"),
        "outputs_dir": str(data_root / "outputs"),
        **stages,
    }


def fixed_stage(num_cpus: float, num_gpus: float, replicas: int) -> dict[str, Any]:
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "autoscaling": None, "num_replicas": replicas}


class LocalCluster:
    """Starts the cluster process and talks to it."""

    def __init__(
        self,
        port: int,
        args_override: dict[str, Any],
        workers: int = 2,
        worker_cpus: float = 2,
        worker_gpus: float = 2,
        head_cpus: float = 2,
        startup_timeout_sec: float = 300,
    ) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "load_tests.local_cluster",
            f"--port={port}",
            f"--workers={workers}",
            f"--worker-cpus={worker_cpus}",
            f"--worker-gpus={worker_gpus}",
            f"--head-cpus={head_cpus}",
            f"--args={json.dumps(args_override)}",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        self._process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self._read(startup_timeout_sec)

    def placement(self) -> dict[str, Any]:
        """Nodes (id, alive, is_head, total and available resources) and each deployment's replicas."""
        return self._ask("placement")

    def remove_node(self, node_id: str) -> dict[str, Any]:
        return self._ask(f"remove {node_id}")

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._ask("quit", timeout_sec=120)
            except (RuntimeError, TimeoutError, BrokenPipeError):
                self._process.kill()
            self._process.wait(timeout=60)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, command: str, timeout_sec: float = 120) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._read(timeout_sec)

    def _read(self, timeout_sec: float) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=timeout_sec)
        except queue.Empty:
            raise TimeoutError(f"no answer from the cluster process in {timeout_sec:.0f} s") from None
        if line is None:
            raise RuntimeError(f"the cluster process exited with {self._process.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def _pump(self) -> None:
        """Our lines into the answer queue; everything else the process prints, through to stderr."""
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(MARK):
                self._answers.put(line[len(MARK) :])
            else:
                sys.stderr.write(line)
        self._answers.put(None)


def _say(payload: dict[str, Any]) -> None:
    print(MARK + json.dumps(payload), flush=True)


def _placement(app_name: str) -> dict[str, Any]:
    import ray
    from ray._private import state
    from ray.serve.context import _get_global_client

    available = state.available_resources_per_node()
    head_id = ray.get_runtime_context().get_node_id()  # the driver runs on the head
    nodes = [
        {
            "node_id": node["NodeID"],
            "alive": node["Alive"],
            "is_head": node["NodeID"] == head_id,
            "total": {k: v for k, v in node["Resources"].items() if not k.startswith("node:")},
            "available": {
                k: v for k, v in available.get(node["NodeID"], {}).items() if not k.startswith("node:")
            },
        }
        for node in ray.nodes()
    ]
    # Serve's controller knows which node each replica sits on; the dashboard's REST API would
    # say the same but needs the dashboard, which these clusters run without.
    details = _get_global_client().get_serve_details()
    application = details["applications"].get(app_name, {})
    deployments = {
        name: [
            # node_id is None while a replica is still starting
            {"replica_id": r["replica_id"], "state": r["state"], "node_id": r.get("node_id")}
            for r in deployment.get("replicas", [])
        ]
        for name, deployment in application.get("deployments", {}).items()
    }
    return {"nodes": nodes, "deployments": deployments, "time": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=float, default=2)
    parser.add_argument("--worker-gpus", type=float, default=2)
    parser.add_argument("--head-cpus", type=float, default=2)
    parser.add_argument("--args", default="{}", help="JSON overrides of the app's args")
    options = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from deployments.launcher import deploy_config, load_config

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": options.head_cpus,
            "resources": {STABLE_RESOURCE: 1},
            "include_dashboard": False,
        },
    )
    workers = {}
    for _ in range(options.workers):
        node = cluster.add_node(num_cpus=options.worker_cpus, num_gpus=options.worker_gpus)
        workers[node.node_id] = node
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="serve", log_to_driver=False)
    config = load_config(
        REPO_ROOT / "serve_config.yaml", port=options.port, args_override=json.loads(options.args)
    )
    # Every node of a one-machine cluster shares 127.0.0.1: with a proxy per node, the one that
    # owns the port might sit on the worker a test removes. Real clusters keep EveryNode.
    config = config.model_copy(update={"proxy_location": "HeadOnly"})
    try:
        deploy_config(config)
    except Exception as error:  # report why, instead of a bare exit code
        _say({"error": f"deploy failed: {error}"})
        raise
    app_name = config.applications[0].name
    _say({"event": "ready", "address": cluster.address, **_placement(app_name)})
    try:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "quit":
                break
            try:
                if command == "placement":
                    _say(_placement(app_name))
                elif command == "remove":
                    removed_at = time.time()
                    cluster.remove_node(workers.pop(argument), allow_graceful=False)
                    _say({"event": "removed", "node_id": argument, "time": removed_at})
                else:
                    _say({"error": f"unknown command {command!r}"})
            except Exception as error:  # answer, and keep the cluster up for the next command
                _say({"error": f"{command} failed: {error!r}"})
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        _say({"event": "closed"})


if __name__ == "__main__":
    main()
