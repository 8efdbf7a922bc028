"""Fault injection through the real CLI on Ray: SIGTERM / SIGINT, a full disk, a read-only file
system, a damaged input image. Each either finishes identical to a clean run after --resume, or
stops with one line that says what to fix and recomputes nothing it need not.

(Actor and task-worker kills: test_failures.py; a SIGKILLed driver: test_resume_driver.py;
damaged or missing chunk files and two jobs in one folder: tests/pipeline/test_output_safety.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import assert_same_store, job_dict, write_config
from tests.conftest import fill_up, small_filesystem

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MESSAGE = "interrupted: finished chunks are kept; rerun with --resume to continue"


def _finished(out: Path) -> int:
    try:
        return len((out / "chunks.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _argv(tmp_path: Path, image: Path, out: Path, bundles: tuple[str, str]) -> list[str]:
    cfg = write_config(tmp_path / "job.yaml", job_dict(image, out, bundles, max_in_flight=2))
    return ["-q", "run", str(image), "-o", str(out), "--config", str(cfg)]


def _gcs() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


@pytest.mark.parametrize("sig", [signal.SIGTERM,
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_stops_cleanly_then_resume(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                          tiny_bundles: tuple[str, str], clean_run: Path,
                                          sig: signal.Signals) -> None:
    from geoseg.cli import main

    out = tmp_path / "out"
    argv = _argv(tmp_path, region_tif, out, tiny_bundles)
    cmd = [sys.executable, "-m", "geoseg", *argv, "--address", _gcs()]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while _finished(out) < 3 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == MESSAGE
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == ("cancelled" if sig == signal.SIGTERM else "interrupted")
    assert not (out / ".geoseg.lock").exists()
    done = _finished(out)
    assert 0 < done < 16
    assert main([*argv, "--resume", "--address", _gcs()]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"]["computed_this_run"] == 16 - done
    assert_same_store(clean_run, out)


def test_disk_full_is_one_line_then_resume(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                           tiny_bundles: tuple[str, str], clean_run: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    with small_filesystem(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        filler = fill_up(disk, 96 * 1024)  # room for the manifest and a few chunks
        argv = _argv(tmp_path, region_tif, out, tiny_bundles)
        rc = main([*argv, "--address", _gcs()])
        err = capsys.readouterr().err.strip().splitlines()
        err = [ln for ln in err if not ln.startswith("warning:")]
        assert rc == 4 and len(err) == 1, err
        assert err[0].startswith("error: disk full writing") and "--resume" in err[0]
        # "failed" when there was room to say so, never "complete"
        assert json.loads((out / "manifest.json").read_text())["status"] in ("failed", "running")
        assert not (out / "summary.json").exists()
        partial = _finished(out)
        filler.unlink()
        assert main([*argv, "--resume", "--address", _gcs()]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["chunks"]["computed_this_run"] == 16 - partial
        assert_same_store(clean_run, out)


def test_read_only_file_system(ray_cluster: None, tmp_path: Path, region_tif: Path,
                               tiny_bundles: tuple[str, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    with small_filesystem(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        rc = main(_argv(tmp_path, region_tif, ro / "out", tiny_bundles))
        err = [ln for ln in capsys.readouterr().err.strip().splitlines()
               if not ln.startswith("warning:")]
        assert rc == 4 and len(err) == 1 and "read-only file system" in err[0], err


def test_damaged_image_is_not_retried(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                      tiny_bundles: tuple[str, str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A GeoTIFF with damaged tiles plans fine (its header is intact); the chunks that read
    those tiles fail once each (no retry can help), the others finish, and the run says to fix
    the input, not just to resume."""
    from geoseg.cli import main
    from tests.conftest import damaged_copy

    img = damaged_copy(region_tif, tmp_path / "damaged.tif")
    out = tmp_path / "out"
    argv = _argv(tmp_path, img, out, tiny_bundles)
    rc = main([*argv, "--address", _gcs()])
    captured = capsys.readouterr()
    assert rc == 3
    summary = json.loads((out / "summary.json").read_text())
    failed = summary["chunks"]["failed"]
    assert failed and all(f["attempts"] == 1 and not f["retryable"] for f in failed)
    assert all("is damaged" in f["error"] for f in failed)
    assert "a rerun cannot fix" in captured.out and "Traceback" not in captured.err
    assert summary["chunks"]["total"] == 16 and len(failed) < 16


def test_model_file_error_in_the_actor_is_one_error(ray_cluster: None, tmp_path: Path,
                                                     region_tif: Path,
                                                     tiny_bundles: tuple[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver without torch checks only the header and counts; a wrong tensor deeper in the
    network is found by the model actor as it loads, and comes back as the BundleError itself
    (no actor restarts, no chunk retries)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import geoseg.models.preflight as preflight
    from geoseg.config import validate_job
    from geoseg.errors import BundleError
    from geoseg.job import run_job
    from geoseg.runtime.ray_backend import RayBackend

    bad = Path(shutil.copytree(tiny_bundles[0], tmp_path / "bad"))
    weights = load_file(str(bad / "weights.safetensors"))
    name = next(k for k, v in weights.items() if k.startswith("decoder.") and v.ndim == 4)
    v = weights[name]
    weights[name] = torch.zeros((v.shape[0] + 1, *v.shape[1:]), dtype=v.dtype)
    save_file(weights, str(bad / "weights.safetensors"))
    real = preflight.check_model_file
    monkeypatch.setattr(preflight, "check_model_file",
                        lambda *a, **k: real(*a, **{**k, "architecture": False}))
    t0 = time.monotonic()
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        job = job_dict(region_tif, tmp_path / "out", (str(bad),))
        job["inference"]["engine"] = "torch"  # the weights, not the bundle's ONNX graph
        run_job(validate_job(job), backend=RayBackend())
    assert time.monotonic() - t0 < 60
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and name in manifest["error"]
    assert _finished(tmp_path / "out") == 0
