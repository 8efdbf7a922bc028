"""What ``geoseg submit`` ships (only geoseg/, workflows/ and the config; never secrets, caches or
ignored files), ``--plan``'s upload listing, the size limit, and a Ray cluster with token
authentication answering as one error line."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geoseg.errors import ClusterAuthError
from geoseg.runtime import jobs
from geoseg.runtime.upload import is_excluded, plan_upload, staged
from tests.cluster.conftest import cluster_cli, job_dict, write_config

SECRETS = (".env", ".env.production", "prod.env", ".aws/credentials", ".ssh/id_rsa",
           "id_rsa", "id_rsa.pub", "id_ed25519", ".netrc", "secrets.yaml", "cert.pem",
           "server.key", "client.p12", "credentials", "credentials.json", ".git-credentials",
           ".docker/config.json", ".kube/config")


def _project(root: Path) -> Path:
    """A geoseg tree with secrets planted at the top and inside the shipped folders."""
    for rel in ("geoseg/__init__.py", "geoseg/core.py", "geoseg/bundles/m/bundle.yaml",
                "workflows/run_region.py", "configs/job.yaml", "README.md", "data/big.tif",
                ".venv/lib/site.py", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    for rel in SECRETS:
        for where in (root, root / "geoseg", root / "workflows" / "sub"):
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_text("TOP SECRET\n")
    cache = root / "geoseg" / "__pycache__"
    cache.mkdir()
    (cache / "core.cpython-311.pyc").write_bytes(b"\0")
    return root


SHIPPED = ["configs/job.yaml", "geoseg/__init__.py", "geoseg/bundles/m/bundle.yaml",
           "geoseg/core.py", "workflows/run_region.py"]


def test_no_secret_is_shipped(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    plan = plan_upload(root, root / "configs" / "job.yaml")
    assert [f.rel for f in plan.files] == SHIPPED
    assert not plan.gitignore
    with staged(plan) as wd:
        got = sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*") if p.is_file())
        assert got == SHIPPED
        assert not any("TOP SECRET" in (wd / p).read_text() for p in got)
    assert not wd.exists()


@pytest.mark.parametrize("rel", [*SECRETS, "a/.env.local", "geoseg/__pycache__/x.pyc",
                                 "x/ID_RSA", "Secrets.YML", "geoseg.egg-info/PKG-INFO"])
def test_excluded_names(rel: str) -> None:
    assert is_excluded(rel)


@pytest.mark.parametrize("rel", ["geoseg/cli/app.py", "geoseg/runtime/jobs.py",
                                 "geoseg/bundles/landcover/weights.safetensors",
                                 "workflows/run_region.py", "configs/demo.yaml",
                                 "geoseg/keys.py", "geoseg/environment.py"])
def test_code_is_not_excluded(rel: str) -> None:
    assert not is_excluded(rel)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_gitignore_applies_in_a_checkout(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    (root / ".gitignore").write_text("geoseg/generated/\n*.log\n")
    (root / "geoseg" / "generated").mkdir()
    (root / "geoseg" / "generated" / "cache.bin").write_text("x")
    (root / "workflows" / "run.log").write_text("x")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    # a secret committed by mistake is still not shipped
    subprocess.run(["git", "-C", str(root), "add", "-f", "geoseg/secrets.yaml",
                    "geoseg/core.py"], check=True)
    plan = plan_upload(root, root / "configs" / "job.yaml")
    assert plan.gitignore
    assert [f.rel for f in plan.files] == SHIPPED


@pytest.fixture()
def recording(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``jobs.client`` replaced by one that records what would be uploaded."""
    sent: list[dict[str, Any]] = []

    class Client:
        def submit_job(self, **kw: Any) -> str:
            wd = Path(kw["runtime_env"]["working_dir"])
            sent.append({"files": sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*")
                                         if p.is_file()), **kw})
            return "raysubmit_1"

    monkeypatch.setattr(jobs, "client", lambda address: Client())
    return sent


def test_submit_ships_exactly_the_plan(tmp_path: Path,
                                       recording: list[dict[str, Any]]) -> None:
    root = _project(tmp_path / "proj")
    cfg = write_config(root / "configs" / "job.yaml", {"image": "/s/i.tif", "output": "/s/o"})
    rc, _, err = cluster_cli(["submit", str(cfg), "--working-dir", str(root), "--address",
                              "http://h:8265"])
    assert rc == 0, err
    assert recording[0]["files"] == SHIPPED
    assert "excludes" not in recording[0]["runtime_env"]


def test_plan_lists_the_upload(tmp_path: Path, recording: list[dict[str, Any]],
                               region_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    root = _project(tmp_path / "proj")
    (root / "geoseg" / "weights.bin").open("wb").truncate(3 * 2**20)
    cfg = write_config(root / "configs" / "job.yaml",
                       job_dict(region_tif, tmp_path / "out", tiny_bundles))
    argv = ["submit", str(cfg), "--working-dir", str(root), "--plan", "--no-calibrate"]
    rc, out, err = cluster_cli(argv)
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("upload:"))
    assert line.startswith("upload: 6 files, 3.00 MB (limit 50 MB)")
    assert "geoseg/weights.bin" in out and "configs/job.yaml" in out
    assert "secret" not in out.lower() and ".env" not in out
    assert "256×256 px" in out  # the compute plan follows
    assert "time     unknown: no previous run, and calibration is off (--no-calibrate)" in out
    rc, out, err = cluster_cli([*argv, "--json"])
    assert rc == 0, err
    up = json.loads(out)["upload"]
    assert up["files"] == 6 and up["paths"] == sorted([*SHIPPED, "geoseg/weights.bin"])
    assert up["within_limit"] is True
    rc, out, _ = cluster_cli([*argv, "--max-upload-mb", "1"])
    assert rc == 0 and "over --max-upload-mb 1: submit would refuse" in out
    assert recording == []  # --plan submits nothing
    rc, _, err = cluster_cli([*argv, "--output", "rel_out"])  # as submit refuses it
    assert rc == 2 and "output 'rel_out' is a relative path" in err, err


def test_size_limit_refuses(tmp_path: Path, recording: list[dict[str, Any]]) -> None:
    root = _project(tmp_path / "proj")
    (root / "geoseg" / "weights.bin").open("wb").truncate(60 * 2**20)  # sparse
    cfg = write_config(root / "configs" / "job.yaml", {"image": "/s/i.tif", "output": "/s/o"})
    argv = ["submit", str(cfg), "--working-dir", str(root), "--address", "http://h:8265"]
    rc, _, err = cluster_cli(argv)
    assert rc == 2 and err.count("\n") == 1 and recording == []
    assert err.startswith("error: the upload would be 60.0 MB in 6 files, above "
                          "--max-upload-mb 50")
    assert "geoseg/weights.bin (60.0 MB)" in err
    rc, _, err = cluster_cli([*argv, "--max-upload-mb", "100"])
    assert rc == 0, err
    assert "geoseg/weights.bin" in recording[0]["files"]


@pytest.mark.parametrize(("extra", "says"), [
    ({"region": {"file": "configs/area.geojson"}}, "region file 'configs/area.geojson'"),
    ({"models": ["my-bundle/"]}, "model 'my-bundle/'"),
])
def test_relative_paths_not_shipped_are_refused(tmp_path: Path, extra: dict[str, Any],
                                                says: str,
                                                recording: list[dict[str, Any]]) -> None:
    cfg = write_config(tmp_path / "job.yaml", {"image": "/s/i.tif", "output": "/s/o", **extra})
    rc, _, err = cluster_cli(["submit", str(cfg), "--address", "http://h:8265"])
    assert rc == 2 and says in err and "relative path" in err and err.count("\n") == 1


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A job server with token authentication: 401 without a token, 403 with a wrong one."""

    def do_GET(self) -> None:
        auth = self.headers.get("authorization", "")
        code, text = ((401, "Unauthorized: Missing authentication token") if not auth
                      else (403, "Forbidden: Invalid authentication token"))
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def token_server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_token_auth_is_one_line(token_server: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    cfg = write_config(tmp_path / "job.yaml", {"image": "/s/i.tif", "output": "/s/o"})
    for argv in (["status", "j"], ["logs", "j"], ["logs", "j", "-f"], ["cancel", "j"],
                 ["submit", str(cfg)]):
        rc, out, err = cluster_cli([*argv, "--address", token_server])
        assert rc == 2 and out == "" and err.count("\n") == 1, (argv, err)
        # 401 (no token sent) normally; 403 when an in-process local Ray started earlier in
        # this session turned token mode on for the process (Ray 2.60 does, with its own token)
        assert err.startswith((
            f"error: the Ray job server at {token_server} requires token authentication (401): "
            "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN",
            f"error: the Ray job server at {token_server} rejected the authentication token "
            "(403): check that RAY_AUTH_TOKEN")), err


def test_wrong_token_and_errors() -> None:
    e = jobs.auth_error("http://h:8265", 403)
    assert isinstance(e, ClusterAuthError) and isinstance(e, PermissionError)
    assert "rejected the authentication token (403)" in str(e) and "RAY_AUTH_TOKEN" in str(e)
    assert "\n" not in str(e) and "\n" not in str(jobs.auth_error(None, 401))


def test_ray_authentication_error_is_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.exceptions import AuthenticationError

    class Client:
        def get_job_info(self, job_id: str) -> Any:
            raise AuthenticationError("Authentication failed: Forbidden\n\nToken is wrong")

    monkeypatch.setattr(jobs, "client", lambda address: Client())
    rc, _, err = cluster_cli(["status", "j", "--address", "http://h:8265"])
    assert rc == 2 and err.count("\n") == 1 and "(403)" in err
