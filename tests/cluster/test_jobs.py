"""Submission without a cluster: entrypoint, shipped working dir, input checks, exit codes, and
the --plan dry run (measured rate)."""

from __future__ import annotations

import json
import os
import shlex
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from geoseg.config import load_job_config
from geoseg.runtime import jobs
from tests.cluster.conftest import cluster_cli, job_dict, write_config


def _project(root: Path) -> Path:
    """A minimal geoseg source tree to ship."""
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "run_region.py").write_text("")
    (root / "geoseg").mkdir()
    (root / "configs").mkdir()
    return root


@dataclass
class _Info:
    status: str
    entrypoint: str = "python -m workflows.run_region"
    message: str = ""
    start_time: int | None = 1_000
    end_time: int | None = 5_000
    driver_exit_code: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class FakeClient:
    """Stands in for JobSubmissionClient: records submissions, replays a final state."""

    def __init__(self, final: _Info, log: str = "") -> None:
        self.final, self.log = final, log
        self.submitted: list[dict[str, Any]] = []
        self.shipped: list[str] = []  # the working dir's files at submission, as Ray zips them

    def submit_job(self, **kw: Any) -> str:
        self.submitted.append(kw)
        wd = Path(kw["runtime_env"]["working_dir"])
        self.shipped = sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*")
                              if p.is_file())
        return "raysubmit_test"

    def get_job_info(self, job_id: str) -> _Info:
        if job_id != "raysubmit_test":
            raise RuntimeError("Request failed with status code 404: Job x does not exist.")
        return self.final

    def get_job_logs(self, job_id: str) -> str:
        return self.log

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        for line in self.log.splitlines(keepends=True):
            yield line

    def stop_job(self, job_id: str) -> bool:
        return True


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient(_Info("SUCCEEDED", driver_exit_code=0), "geoseg job complete\n")
    monkeypatch.setattr(jobs, "client", lambda address: c)
    return c


def test_submit_ships_project_with_config_path(tmp_path: Path, fake: FakeClient) -> None:
    root = _project(tmp_path / "proj")
    (root / "geoseg" / "model.py").write_text("x = 1\n")
    (root / "big.bin").open("wb").truncate(25 * 2**20)  # outside geoseg/ and workflows/
    cfg = write_config(root / "configs" / "job.yaml",
                       {"image": "/shared/img.tif", "output": "/shared/out"})
    rc, out, err = cluster_cli(["submit", str(cfg), "--working-dir", str(root), "--address",
                                "http://127.0.0.1:8265", "--resume",
                                "--output", "/shared/out2"])
    assert rc == 0, err
    assert "submitted job raysubmit_test" in out and "geoseg logs raysubmit_test" in out
    (kw,) = fake.submitted
    assert shlex.split(kw["entrypoint"]) == ["python", "-m", "workflows.run_region",
                                             "configs/job.yaml", "--output", "/shared/out2",
                                             "--resume"]
    env = kw["runtime_env"]
    assert fake.shipped == ["configs/job.yaml", "geoseg/model.py", "workflows/run_region.py"]
    assert env["working_dir"] != str(root.resolve())  # a staging copy, removed afterwards
    assert not Path(env["working_dir"]).exists()
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    # Ray's supervisor reads the stop wait from here: 3 s (its default) was not always enough
    # for a cancelled job to write "cancelled" (tests/cluster/test_submit.py::test_cancel)
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 10
    assert kw["metadata"]["output"] == "/shared/out2"


def test_config_outside_project_travels_inline(tmp_path: Path, fake: FakeClient,
                                               tiny_bundles: tuple[str, str]) -> None:
    cfg = write_config(tmp_path / "job.yaml",
                       job_dict(Path("/shared/img.tif"), Path("/shared/out"), tiny_bundles))
    rc, _, err = cluster_cli(["submit", str(cfg), "--address", "127.0.0.1:8265", "--wait"])
    assert rc == 0, err
    args = shlex.split(fake.submitted[0]["entrypoint"])
    assert args[:4] == ["python", "-m", "workflows.run_region", "--config-json"]
    assert json.loads(args[4]) == load_job_config(cfg).model_dump(mode="json")
    # the shipped tree is geoseg's own code, and nothing else
    assert "workflows/run_region.py" in fake.shipped and "geoseg/cli/app.py" in fake.shipped
    assert {p.split("/")[0] for p in fake.shipped} == {"geoseg", "workflows"}


def test_run_region_accepts_inline_config(tmp_path: Path, region_tif: Path,
                                          tiny_bundles: tuple[str, str]) -> None:
    from workflows.run_region import main

    data = job_dict(region_tif, tmp_path / "o", tiny_bundles)
    data["models"] = ["/nonexistent/bundle"]
    assert main(["--config-json", json.dumps(data)]) == 2  # a GeoSegError: bad input, no trace


@pytest.mark.parametrize(("final", "log", "rc", "says"), [
    (_Info("FAILED", driver_exit_code=3),
     "failed chunk 1_0 window (64, 0, 64, 64)\n"
     "geoseg job completed with 1 failed chunks: rerun with --resume to retry them\n",
     3, "completed with 1 failed chunks"),
    (_Info("FAILED", driver_exit_code=2, message="Job entrypoint command failed with exit "
                                                  "code 2"), "error: image not found\n",
     2, "error: job raysubmit_test FAILED"),
    (_Info("STOPPED", message="Job was intentionally stopped."), "", 1, "STOPPED"),
])
def test_wait_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final: _Info,
                         log: str, rc: int, says: str) -> None:
    c = FakeClient(final, log)
    monkeypatch.setattr(jobs, "client", lambda address: c)
    cfg = write_config(tmp_path / "job.yaml", {"image": "/s/i.tif", "output": "/s/o"})
    got, out, err = cluster_cli(["submit", str(cfg), "--address", "http://h:8265", "--wait"])
    assert got == rc and says in out + err
    assert log in out  # the job's log is streamed


def test_status_logs_cancel(fake: FakeClient) -> None:
    fake.final.metadata = {"output": "/shared/out", "git_commit": "abc123"}
    rc, out, _ = cluster_cli(["status", "raysubmit_test", "--address", "http://h:8265"])
    assert rc == 0 and "SUCCEEDED" in out and "/shared/out" in out and "abc123" in out
    rc, out, _ = cluster_cli(["logs", "raysubmit_test", "--address", "http://h:8265"])
    assert rc == 0 and out == fake.log
    rc, out, _ = cluster_cli(["logs", "raysubmit_test", "-f", "--address", "http://h:8265"])
    assert rc == 0 and out == fake.log
    rc, out, _ = cluster_cli(["cancel", "raysubmit_test", "--address", "http://h:8265"])
    assert rc == 0 and "--resume" in out
    rc, _, err = cluster_cli(["status", "nope", "--address", "http://h:8265"])
    assert rc == 2 and err.count("\n") == 1 and "knows no job 'nope'" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_user_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in jobs.ADDRESS_ENVS:
        monkeypatch.delenv(k, raising=False)
    rc, _, err = cluster_cli(["status", "raysubmit_x"])
    assert rc == 2 and err.startswith("error: no Ray cluster given: pass --address")
    rc, _, err = cluster_cli(["logs", "x", "--address", f"http://127.0.0.1:{_free_port()}"])
    assert rc == 2 and "cannot reach the Ray job server" in err and err.count("\n") == 1
    rc, _, err = cluster_cli(["status", "x", "--address", "ray://head:10001"])
    assert rc == 2 and "not a job server address" in err
    cfg = write_config(tmp_path / "job.yaml", {"image": "/s/i.tif", "output": "demo/run"})
    rc, _, err = cluster_cli(["submit", str(cfg), "--address", "http://h:8265"])
    assert rc == 2 and "output 'demo/run' is a relative path" in err and "--output" in err
    bad = write_config(tmp_path / "bad.yaml", {"image": "/s/i.tif", "output": "/o", "typo": 1})
    rc, _, err = cluster_cli(["submit", str(bad), "--plan"])
    assert rc == 2 and "typo" in err and err.count("\n") == 1


def test_run_on_an_unreachable_cluster_is_one_line(tmp_path: Path, region_tif: Path,
                                                    tiny_bundles: tuple[str, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens at the address: one line at once (``ray.init`` waited ~40 s for the GCS,
    then exited as if the job had been sent SIGTERM), exit 2, and no output folder."""
    from geoseg.cli import main

    out = tmp_path / "out"
    address = f"127.0.0.1:{_free_port()}"
    rc = main(["-q", "run", str(region_tif), "-o", str(out), "-m", tiny_bundles[0],
               "--address", address])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot reach the Ray cluster at {address} ("), err
    assert "ray start --head" in err[0] and not out.exists()


@pytest.mark.parametrize("via", ["env", "flag"])
def test_run_with_a_job_server_url_as_the_cluster_is_one_line(
        tmp_path: Path, region_tif: Path, tiny_bundles: tuple[str, str], via: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README has users put the dashboard's URL in RAY_ADDRESS for ``geoseg submit``; a
    later ``geoseg run`` in that shell (or ``--address http://...``) got Ray's traceback."""
    from geoseg.cli import main

    url = f"http://127.0.0.1:{_free_port()}"
    more = ["--address", url] if via == "flag" else []
    if via == "env":
        monkeypatch.setenv("RAY_ADDRESS", url)
    out = tmp_path / "out"
    rc = main(["-q", "run", str(region_tif), "-o", str(out), "-m", tiny_bundles[0], *more])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    given = f"--address {url}" if via == "flag" else f"RAY_ADDRESS={url}"
    assert lines[0].startswith(f"error: {given} is a Ray job server"), lines
    assert ("unset RAY_ADDRESS" in lines[0]) == (via == "env")
    assert not out.exists()


def test_plan_measures_a_rate(tmp_path: Path, region_tif: Path, tiny_bundles: tuple[str, str],
                              clean_run: Path) -> None:
    cfg = write_config(tmp_path / "job.yaml",
                       job_dict(region_tif, tmp_path / "new", tiny_bundles))
    rc, out, err = cluster_cli(["submit", str(cfg), "--plan"])
    assert rc == 0, err
    assert "256×256 px" in out and "16 chunks of 64²" in out and "16 to do" in out
    assert "0.016 km²" in out  # 256² px × 0.25 m²
    assert "measured by calibration: this host, cpu" in out
    # a finished run into the same output: its own measured rate, nothing left to do
    cfg2 = write_config(tmp_path / "job2.yaml", job_dict(region_tif, clean_run, tiny_bundles))
    rc, out, err = cluster_cli(["submit", str(cfg2), "--plan", "--json"])
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["chunks"] == {"total": 16, "todo": 0, "size": 64, "halo": 32}
    assert plan["rate"]["source"] == "summary" and plan["rate"]["px_per_s"] > 0
    assert plan["eta_s"] == 0


@pytest.mark.parametrize("kind", ["dashboard", "no-port", "path"])
def test_an_address_that_is_no_cluster_is_one_line_at_once(
        tmp_path: Path, region_tif: Path, tiny_bundles: tuple[str, str], kind: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The dashboard's HOST:PORT without http:// made ``ray.init`` retry for ever (an HTTP
    server accepts the connection); an address without a port was Ray's traceback."""
    import http.server
    import threading

    from geoseg.cli import main

    class Quiet(http.server.BaseHTTPRequestHandler):  # answers 501, as HTTP, and logs nothing
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.handle_error = lambda *args: None  # type: ignore[method-assign]  # (geoseg hangs up)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        address, says = {
            "dashboard": (f"127.0.0.1:{port}", "answers HTTP: it is the Ray dashboard"),
            "no-port": ("127.0.0.1", "is not HOST:PORT"),
            "path": (f"127.0.0.1:{port}/x", "is not HOST:PORT")}[kind]
        out = tmp_path / "out"
        rc = main(["-q", "run", str(region_tif), "-o", str(out), "-m", tiny_bundles[0],
                   "--address", address])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_the_address_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's job client prefers RAY_ADDRESS / RAY_API_SERVER_ADDRESS to the URL it is given:
    ``geoseg status --address A`` with RAY_ADDRESS=B asked B (and submit ran the job there)."""
    from geoseg.errors import ClusterError

    given, env = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", env)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", env)
    with pytest.raises(ClusterError) as info:
        jobs.client(given)
    assert f"at {given} (" in str(info.value) and env not in str(info.value)
    assert os.environ["RAY_ADDRESS"] == env  # restored
