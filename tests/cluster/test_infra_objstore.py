"""infra/rayjob-s3.yaml (a cluster without a shared volume) and infra/iam-policy-s3.json: the
same schema, token and NetworkPolicy checks as the shared-volume manifests, no volume claim
anywhere, object-storage URLs in the entrypoint, every pod on the ServiceAccount that carries
the cloud identity, and a policy that grants exactly what a run in a bucket needs."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from tests.cluster.test_infra import (
    INFRA,
    RAY_VERSION,
    _check_exposure,
    _docs,
    _one,
    _templates,
    _validate_k8s,
)

NAME = "rayjob-s3.yaml"


def test_passes_kubernetes_schemas() -> None:
    for doc in _docs(NAME):
        _validate_k8s(doc)


def test_rayjob_without_shared_volume() -> None:
    docs = _docs(NAME)
    job = _one(docs, "RayJob")
    sa = _one(docs, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    assert not [d for d in docs if d["kind"] in ("PersistentVolumeClaim", "Secret")]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    for tpl in _templates(cluster):
        pod = tpl["spec"]
        assert pod["serviceAccountName"] == sa["metadata"]["name"]
        assert not [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
        for c in pod["containers"]:
            assert not [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/data"]
            assert {e["name"] for e in c["env"]} >= {"AWS_REGION"}
            assert not {e["name"] for e in c["env"]} & {"AWS_ACCESS_KEY_ID",
                                                        "AWS_SECRET_ACCESS_KEY"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    (hc,) = head["containers"]
    tmp = {e["name"]: e.get("value") for e in hc["env"]}["TMPDIR"]
    assert tmp in {m["mountPath"] for m in hc["volumeMounts"]}  # staging on a sized volume
    args = shlex.split(spec["entrypoint"])
    assert args[args.index("--output") + 1].startswith("s3://")
    assert args[args.index("--image") + 1].startswith("s3://")
    assert "--resume" in args and spec["backoffLimit"] >= 1
    _check_exposure(docs, cluster, rayjob=job["metadata"]["name"])
    from workflows.run_region import _parser

    a = _parser().parse_args(args[3:])
    assert a.resume and a.output.startswith("s3://") and (INFRA.parent / a.config).is_file()


def test_iam_policy_grants_what_a_run_needs() -> None:
    policy = json.loads((INFRA / "iam-policy-s3.json").read_text())
    allowed: dict[str, set[str]] = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        for action in actions:
            allowed.setdefault(action, set()).add(st["Resource"])
    runs = "arn:aws:s3:::BUCKET/runs/*"
    # chunk objects, records, uploads and the lock (conditional PUT), resume, overwrite
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert runs in allowed[action], action
    assert allowed["s3:PutObject"] == {runs}  # inputs are never written
    assert allowed["s3:ListBucket"] == {"arn:aws:s3:::BUCKET"}
    assert "s3:*" not in allowed and "*" not in allowed


@pytest.mark.parametrize("name", [NAME])
def test_yaml_documents_parse(name: str) -> None:
    kinds = [d["kind"] for d in yaml.safe_load_all((INFRA / name).read_text()) if d]
    assert kinds == ["ServiceAccount", "RayJob", "NetworkPolicy"]
