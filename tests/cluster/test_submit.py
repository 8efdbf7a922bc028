"""A real two-node Ray cluster on this machine (head + worker, started with ``ray start``): a
region submitted with ``geoseg submit --wait`` succeeds and its Zarr equals a local run's;
status, logs and cancel work; the dashboard/job server listens on 127.0.0.1 only.

The cluster is this test's own: its processes run in their own process groups, with their own
temp dir and free ports; teardown stops exactly those processes (SIGTERM to the blocking
``ray start``, which stops what it started; then SIGKILL to any descendant left), never
``ray stop``, which would stop every Ray on the machine (including the session's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster.conftest import assert_same_store, cluster_cli, job_dict, write_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    temp: Path
    gcs_port: int
    dashboard_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def tree(self) -> list[psutil.Process]:
        """Every live process this cluster started (the ``ray start`` processes and their
        descendants)."""
        out: list[psutil.Process] = []
        for p in self.procs:
            try:
                root = psutil.Process(p.pid)
                out += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return out

    def listening(self) -> dict[int, tuple[str, set[str]]]:
        """Listening TCP ports of the cluster's processes → (process, addresses bound to)."""
        names = {}
        for p in self.tree():
            try:
                names[p.pid] = p.name()
            except psutil.NoSuchProcess:
                continue
        out: dict[int, tuple[str, set[str]]] = {}
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.pid in names:
                out.setdefault(c.laddr.port, (names[c.pid], set()))[1].add(c.laddr.ip)
        return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _wait_for(what: str, check: Any, timeout: float, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        for p in cluster.procs:
            if p.poll() is not None:
                logs = "\n".join(f.read_text()[-2000:] for f in cluster.temp.glob("*.out"))
                raise RuntimeError(f"ray start exited ({p.returncode}) before {what}:\n{logs}")
        time.sleep(0.5)
    raise TimeoutError(f"cluster: no {what} after {timeout:.0f} s")


def _alive_nodes(url: str) -> int:
    data = _get_json(f"{url}/api/v0/nodes?limit=10")
    return sum(1 for n in data["data"]["result"]["result"] if n["state"] == "ALIVE")


def _stop(cluster: LocalCluster) -> list[int]:
    """Stop this cluster's processes only; return the pids that needed SIGKILL."""
    tree = cluster.tree()
    for p in reversed(cluster.procs):  # worker node first, then head
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
    for p in reversed(cluster.procs):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    _, alive = psutil.wait_procs(tree, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)
    return [p.pid for p in alive]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not installed")
    gcs, dash, client, *agent = _free_ports(11)
    temp = Path(tempfile.mkdtemp(prefix="gsray", dir="/tmp"))  # short: unix socket paths
    cluster = LocalCluster(temp, gcs, dash)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats"]
    head = ["ray", "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", "--include-dashboard=true",
            f"--ray-client-server-port={client}", f"--temp-dir={temp / 'h'}",
            f"--dashboard-agent-listen-port={agent[0]}",
            f"--dashboard-agent-grpc-port={agent[1]}", f"--metrics-export-port={agent[2]}",
            f"--runtime-env-agent-port={agent[3]}", *common]
    worker = ["ray", "start", f"--address=127.0.0.1:{gcs}", f"--temp-dir={temp / 'w'}",
              f"--dashboard-agent-listen-port={agent[4]}",
              f"--dashboard-agent-grpc-port={agent[5]}", f"--metrics-export-port={agent[6]}",
              f"--runtime-env-agent-port={agent[7]}", *common]
    try:
        for name, cmd in (("head", head), ("worker", worker)):
            with open(temp / f"{name}.out", "wb") as out:
                cluster.procs.append(subprocess.Popen(cmd, env=_env(), stdout=out,
                                                      stderr=subprocess.STDOUT,
                                                      start_new_session=True))
            if name == "head":
                _wait_for("job server", lambda: _get_json(f"{cluster.url}/api/version"), 120,
                          cluster)
        _wait_for("second node", lambda: _alive_nodes(cluster.url) == 2, 120, cluster)
        yield cluster
    finally:
        killed = _stop(cluster)
        leftover = [p for p in psutil.process_iter(["cmdline"])
                    if str(temp) in " ".join(p.info["cmdline"] or [])]
        shutil.rmtree(temp, ignore_errors=True)
        assert not leftover, f"processes outlived the cluster: {leftover}"
        if killed:
            print(f"teardown needed SIGKILL for {len(killed)} process(es)")


def test_dashboard_binds_loopback_only(local_cluster: LocalCluster) -> None:
    bound = local_cluster.listening()
    assert bound[local_cluster.dashboard_port][1] == {"127.0.0.1"}, bound
    # what else listens, and where (Ray binds its gRPC services beyond loopback: see report)
    for port, (name, ips) in sorted(bound.items(), key=lambda kv: kv[1][0]):
        print(f"  {name:<28} {port:>5} {sorted(ips)}")


def test_submit_wait_status_logs(local_cluster: LocalCluster, tmp_path: Path, region_tif: Path,
                                 tiny_bundles: tuple[str, str], clean_run: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "job.yaml",
                       job_dict(region_tif, out, tiny_bundles, workers=2, device="cpu"))
    t0 = time.perf_counter()
    rc, printed, err = cluster_cli(["submit", str(cfg), "--address", local_cluster.url,
                                    "--wait", "--job-id", "geoseg-test-1"])
    took = time.perf_counter() - t0
    assert rc == 0, printed[-3000:] + err
    assert "job geoseg-test-1 SUCCEEDED" in printed and "geoseg job complete" in printed
    print(f"submit --wait: {took:.1f} s")
    assert_same_store(clean_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    # the shipped working dir has no .git: the commit travels in the job's environment
    from geoseg.runtime.provenance import code_version

    assert manifest["code"]["git_commit"] == code_version()["git_commit"]

    rc, printed, _ = cluster_cli(["status", "geoseg-test-1", "--address", local_cluster.url])
    assert rc == 0 and "SUCCEEDED" in printed and str(out) in printed
    rc, printed, _ = cluster_cli(["logs", "geoseg-test-1", "--address", local_cluster.url])
    assert rc == 0 and "summary:" in printed
    rc, printed, _ = cluster_cli(["logs", "geoseg-test-1", "--follow", "--address",
                                  local_cluster.url])
    assert rc == 0 and "geoseg job complete" in printed  # an ended job: the whole log, then exit


def test_cancel(local_cluster: LocalCluster, tmp_path: Path, region_tif: Path,
                tiny_bundles: tuple[str, str]) -> None:
    cfg = write_config(tmp_path / "job.yaml", job_dict(region_tif, tmp_path / "out",
                                                       tiny_bundles))
    rc, _, err = cluster_cli(["submit", str(cfg), "--address", local_cluster.url, "--job-id",
                              "geoseg-test-2"])
    assert rc == 0, err
    manifest = tmp_path / "out" / "manifest.json"
    deadline = time.monotonic() + 120
    while not manifest.exists():  # the job is running: cancel it mid-way
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rc, printed, _ = cluster_cli(["cancel", "geoseg-test-2", "--address", local_cluster.url])
    assert rc == 0 and "--resume" in printed
    from geoseg.runtime import jobs

    deadline = time.monotonic() + 60
    while (st := jobs.state("geoseg-test-2", local_cluster.url)).status != "STOPPED":
        assert time.monotonic() < deadline, st
        time.sleep(1)
    # the entrypoint got SIGTERM and said so: never "running" for a job that is gone
    assert json.loads(manifest.read_text())["status"] == "cancelled"
