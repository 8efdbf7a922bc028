"""A killed driver loses nothing: --resume recomputes only the unfinished chunks and the Zarr is
byte-identical to a clean run. The manifest records the code that produced the results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from tests.cluster.conftest import assert_same_store, job_dict, write_config

REPO = Path(__file__).resolve().parents[2]


def _finished(out: Path) -> int:
    """Chunks the manifest lists as done (a torn last line does not count, as in resume)."""
    try:
        lines = (out / "chunks.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    n = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        n += 1
    return n


@pytest.mark.ray
def test_killed_driver_then_resume(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                   tiny_bundles: tuple[str, str], clean_run: Path) -> None:
    import ray

    from geoseg.cli import main

    out = tmp_path / "out"
    cfg = write_config(tmp_path / "job.yaml", job_dict(region_tif, out, tiny_bundles,
                                                       max_in_flight=2))
    argv = ["-q", "run", str(region_tif), "-o", str(out), "--config", str(cfg)]
    # the driver joins the session's cluster, as a driver on a real cluster would
    cmd = [sys.executable, "-m", "geoseg", *argv, "--address",
           ray.get_runtime_context().gcs_address]
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while _finished(out) < 8 and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(driver.pid, signal.SIGKILL)
        finally:
            driver.kill()
            driver.wait(30)
    done = _finished(out)
    assert 0 < done < 16, (done, (tmp_path / "driver.log").read_text()[-2000:])
    assert not (out / "summary.json").exists()

    assert main([*argv, "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"]["computed_this_run"] == 16 - done
    assert_same_store(clean_run, out)


def test_manifest_records_code_version(tmp_path: Path, region_tif: Path,
                                       tiny_bundles: tuple[str, str]) -> None:
    from geoseg import __version__
    from geoseg.runtime.provenance import code_version

    res = run_job(validate_job(job_dict(region_tif, tmp_path / "o", tiny_bundles)),
                  backend=SerialBackend())
    manifest = json.loads((res.output / "manifest.json").read_text())
    assert manifest["code"]["geoseg_version"] == __version__
    assert manifest["code"]["git_commit"] == code_version()["git_commit"]
