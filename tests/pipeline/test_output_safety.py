"""The output folder: --overwrite removes only what geoseg wrote, resume verifies every chunk it
trusts, one job per folder, writes never follow symlinks out of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from geoseg.cli import main
from geoseg.cli.app import _join_negative_values
from geoseg.config import validate_job
from geoseg.errors import GeoSegWarning, InputError, OutputExistsError, OutputLockedError
from geoseg.job import Progress, run_job
from geoseg.outdir import FolderLock
from geoseg.runtime.serial import SerialBackend
from geoseg.store import store_attrs
from tests.pipeline.conftest import textured

ARRAYS = ("landcover", "landcover_confidence", "buildings", "buildings_confidence")
REPO = Path(__file__).resolve().parents[2]


def _cfg(image: Path, out: Path, bundles: tuple[str, str], **extra: Any) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"halo": 48}, "runtime": {"threads_per_worker": 1},
                         **extra})


def _run(image: Path, out: Path, bundles: tuple[str, str], **kw: Any) -> Any:
    return run_job(_cfg(image, out, bundles), backend=SerialBackend(), **kw)


def _same_store(a: Path, b: Path) -> None:
    ga = zarr.open_group(str(a / "predictions.zarr"), mode="r")
    gb = zarr.open_group(str(b / "predictions.zarr"), mode="r")
    for name in ARRAYS:
        assert np.array_equal(ga[name][:], gb[name][:]), name  # type: ignore[index]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, tiny_bundles: tuple[str, str]) -> Path:
    from tests.conftest import write_raster

    root = tmp_path_factory.mktemp("safety")
    tif = write_raster(root / "img.tif", textured(200, 264),
                       descriptions=["red", "green", "blue", "nir"])
    assert _run(tif, root / "clean", tiny_bundles).ok
    return root


def test_overwrite_removes_only_what_geoseg_wrote(clean: Path, tmp_path: Path,
                                                  tiny_bundles: tuple[str, str]) -> None:
    tif = clean / "img.tif"
    out = tmp_path / "o"
    _run(tif, out, tiny_bundles)
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2")
    shutil.copy(tif, out / "input.tif")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _run(tif, out, tiny_bundles)
    res = run_job(_cfg(out / "input.tif", out, tiny_bundles), overwrite=True,
                  backend=SerialBackend())
    assert res.ok
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "data.csv").read_text() == "1,2"
    assert (out / "input.tif").read_bytes() == tif.read_bytes()
    listed = json.loads((out / "manifest.json").read_text())["outputs"]
    assert "notes.txt" not in listed and "predictions.zarr" in listed
    _same_store(clean / "clean", out)


def test_a_stale_gdal_side_file_is_named_and_kept(clean: Path, tmp_path: Path,
                                                  tiny_bundles: tuple[str, str]) -> None:
    """QGIS or ``gdalinfo -stats`` leave ``landcover.tif.aux.xml`` (statistics, histogram)
    beside the COG; after ``--overwrite`` GDAL would show the old figures for the new map. The
    file is not geoseg's, so it stays, with a warning that names it."""
    import os
    import warnings

    out = tmp_path / "o"
    _run(clean / "img.tif", out, tiny_bundles)
    aux = out / "landcover.tif.aux.xml"
    aux.write_text("<PAMDataset><PAMRasterBand band='1'><Metadata><MDI key='STATISTICS_MEAN'>"
                   "1.5</MDI></Metadata></PAMRasterBand></PAMDataset>")
    os.utime(aux, (1, 1))  # written before the run below
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert _run(clean / "img.tif", out, tiny_bundles, overwrite=True).ok
    named = [str(w.message) for w in rec if "aux.xml" in str(w.message)]
    assert named == [f"{aux} (a GDAL side file geoseg did not write) predates the new "
                     "landcover.tif: GIS software will show the earlier file's statistics and "
                     "histogram; delete it"]
    assert "STATISTICS_MEAN" in aux.read_text()


def test_overwrite_never_deletes_its_input(clean: Path, tmp_path: Path,
                                          tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    _run(clean / "img.tif", out, tiny_bundles)
    # a name the earlier run wrote (its COG), now holding the input of this run
    shutil.copy(clean / "img.tif", out / "landcover.tif")
    before = (out / "landcover.tif").read_bytes()
    with pytest.raises(InputError, match="which this run reads"):
        run_job(_cfg(out / "landcover.tif", out, tiny_bundles), overwrite=True,
                backend=SerialBackend())
    assert (out / "landcover.tif").read_bytes() == before
    assert (out / "predictions.zarr").is_dir()  # nothing removed before the refusal


def test_foreign_folder_refused_with_one_line(tmp_path: Path, clean: Path,
                                              tiny_bundles: tuple[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    rc = main(["-q", "run", str(clean / "img.tif"), "-o", str(out), "-m", tiny_bundles[0],
               "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "thesis.tex" in err[0]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_out_is_a_file(tmp_path: Path, clean: Path, tiny_bundles: tuple[str, str],
                       capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "out.txt"
    f.write_text("x")
    rc = main(["-q", "run", str(clean / "img.tif"), "-o", str(f), "-m", tiny_bundles[0]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is a file" in err[0]
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent(tmp_path: Path, clean: Path, tiny_bundles: tuple[str, str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    rc = main(["-q", "run", str(clean / "img.tif"), "-o", str(ro / "o"), "-m", tiny_bundles[0]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "permission denied" in err[0]


def _chunk_file(out: Path, name: str, cid: str) -> Path:
    return out / "predictions.zarr" / name / cid.replace("_", ".")


def test_resume_recomputes_damaged_chunks(clean: Path, tmp_path: Path,
                                          tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    shutil.copytree(clean / "clean", out)
    recs = [json.loads(ln) for ln in (out / "chunks.jsonl").read_text().splitlines()]
    written = [(r["chunk"], n) for r in recs for n, f in sorted(r["files"].items()) if f]
    (c1, n1), (c2, n2), (c3, n3) = written[0], written[7], written[-1]
    f1 = _chunk_file(out, n1, c1)
    f1.write_bytes(f1.read_bytes()[: f1.stat().st_size // 2])  # truncated
    _chunk_file(out, n2, c2).write_bytes(b"")  # emptied
    _chunk_file(out, n3, c3).unlink()  # deleted
    res = run_job(_cfg(clean / "img.tif", out, tiny_bundles), resume=True,
                  backend=SerialBackend())
    assert res.ok
    assert res.summary["chunks"]["computed_this_run"] == len({c1, c2, c3})
    _same_store(clean / "clean", out)
    assert store_attrs(out / "predictions.zarr")["geoseg_complete"] is True
    ref = json.loads((clean / "clean" / "summary.json").read_text())
    assert res.summary["features"] == ref["features"]
    assert res.summary["class_pixels"] == ref["class_pixels"]


def test_resume_progress_rate_counts_this_run_only(clean: Path, tmp_path: Path,
                                                   tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    shutil.copytree(clean / "clean", out)
    lines = (out / "chunks.jsonl").read_text().splitlines()
    (out / "chunks.jsonl").write_text("\n".join(lines[:-2]) + "\n")  # two chunks left to do
    seen: list[Progress] = []
    run_job(_cfg(clean / "img.tif", out, tiny_bundles), resume=True, backend=SerialBackend(),
            progress=seen.append)
    first = seen[0]
    assert first.done == len(lines) - 2 and first.pixels_this_run == 0
    assert first.px_per_s == 0 and first.eta_s is None  # not "117 Mpx/s, ETA 0:00"
    assert seen[-1].pixels_this_run == seen[-1].pixels_done - first.pixels_done > 0
    # a resumed run vectorizes every chunk again; progress counts them after the model's
    assert first.vectors_done == 0 and first.vectors_total == len(lines)
    assert [p.vectors_done for p in seen[-len(lines):]] == list(range(1, len(lines) + 1))


def test_outputs_get_the_usual_permissions(clean: Path) -> None:
    """Files written by rename (summary, manifest, quicklook, ...) are as readable as the
    others: 0666 less the umask, not mkstemp's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    out = clean / "clean"
    for name in ("summary.json", "manifest.json", "chunks.jsonl", "quicklook.png",
                 "stac-item.json", "features.gpkg"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_writes_replace_symlinks(clean: Path, tmp_path: Path,
                                 tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    shutil.copytree(clean / "clean", out)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("summary.json", "quicklook.png", "chunks.jsonl"):
        target = outside / name
        target.write_bytes((out / name).read_bytes() if name == "chunks.jsonl" else b"VICTIM")
        (out / name).unlink()
        (out / name).symlink_to(target)
    lines = (out / "chunks.jsonl").read_text().splitlines()
    (outside / "chunks.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    before = (outside / "chunks.jsonl").read_bytes()
    assert run_job(_cfg(clean / "img.tif", out, tiny_bundles), resume=True,
                   backend=SerialBackend()).ok
    assert (outside / "summary.json").read_bytes() == b"VICTIM"
    assert (outside / "quicklook.png").read_bytes() == b"VICTIM"
    assert (outside / "chunks.jsonl").read_bytes() == before
    for name in ("summary.json", "quicklook.png", "chunks.jsonl"):
        assert not (out / name).is_symlink()


def test_interrupted_resume_of_a_complete_run_is_not_complete(
        clean: Path, tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    """A resume killed half-way leaves no "complete" behind: not the old summary, not the
    store's attribute, not the STAC item; readers (open_run, change) see an incomplete run."""
    import geoseg
    from geoseg.change.runs import open_run as open_change_run

    out = tmp_path / "o"
    shutil.copytree(clean / "clean", out)
    recs = [json.loads(ln) for ln in (out / "chunks.jsonl").read_text().splitlines()]
    for r in recs[:3]:
        for n, f in r["files"].items():
            if f:
                _chunk_file(out, n, r["chunk"]).unlink()

    def stop_at_once(p: Progress) -> None:
        if p.pixels_this_run:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(clean / "img.tif", out, tiny_bundles, resume=True, progress=stop_at_once)
    assert not (out / "summary.json").exists() and not (out / "stac-item.json").exists()
    assert store_attrs(out / "predictions.zarr")["geoseg_complete"] is False
    assert not geoseg.open_run(out).complete
    with pytest.warns(GeoSegWarning, match="not complete"):
        assert not open_change_run(out, "a").complete
    assert _run(clean / "img.tif", out, tiny_bundles, resume=True).ok
    assert store_attrs(out / "predictions.zarr")["geoseg_complete"] is True
    assert geoseg.open_run(out).complete
    _same_store(clean / "clean", out)


def test_resume_never_writes_through_a_linked_store(clean: Path, tmp_path: Path,
                                                    tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    shutil.copytree(clean / "clean", out)
    outside = tmp_path / "userstore"
    (out / "predictions.zarr").rename(outside)
    (out / "predictions.zarr").symlink_to(outside)
    victim = next(p for p in (outside / "landcover").iterdir() if not p.name.startswith("."))
    victim.unlink()
    before = sorted(p.name for p in (outside / "landcover").iterdir())
    assert _run(clean / "img.tif", out, tiny_bundles, resume=True).ok
    assert sorted(p.name for p in (outside / "landcover").iterdir()) == before  # untouched
    assert not (out / "predictions.zarr").is_symlink()
    _same_store(clean / "clean", out)
    # a link inside the store (an array folder) is not followed either
    linked = tmp_path / "linked"
    (out / "predictions.zarr" / "landcover").rename(linked)
    (out / "predictions.zarr" / "landcover").symlink_to(linked)
    stamp = {p.name: p.stat().st_mtime_ns for p in linked.iterdir()}
    assert _run(clean / "img.tif", out, tiny_bundles, resume=True).ok
    assert {p.name: p.stat().st_mtime_ns for p in linked.iterdir()} == stamp
    assert not (out / "predictions.zarr" / "landcover").is_symlink()
    _same_store(clean / "clean", out)


def test_second_job_refused_while_locked(clean: Path, tmp_path: Path,
                                         tiny_bundles: tuple[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from geoseg.outdir import FolderLock; "
         f"FolderLock({str(out)!r}).acquire('test holder'); print('locked', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rc = main(["-q", "run", str(clean / "img.tif"), "-o", str(out), "-m", tiny_bundles[0]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "in use by another geoseg job" in err[0]
        assert f"pid {holder.pid}" in err[0]
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over
    assert (out / ".geoseg.lock").exists()
    assert _run(clean / "img.tif", out, tiny_bundles).ok
    assert not (out / ".geoseg.lock").exists()


_RACE = """
import sys
from geoseg.config import validate_job
from geoseg.errors import OutputLockedError
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
cfg = validate_job({"image": sys.argv[1], "output": sys.argv[2], "models": sys.argv[3:],
                    "inference": {"chunk_size": 64, "halo": 32},
                    "vectors": {"halo": 48}, "runtime": {"threads_per_worker": 1}})
try:
    run_job(cfg, resume=True, backend=SerialBackend())
except OutputLockedError as exc:
    print("REFUSED", exc)
    sys.exit(2)
print("DONE")
"""


def test_two_processes_one_folder(clean: Path, tmp_path: Path,
                                  tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    argv = [sys.executable, "-c", _RACE, str(clean / "img.tif"), str(out), *tiny_bundles]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    assert any("REFUSED" in o and "in use by another geoseg job" in o for o in outs)
    _same_store(clean / "clean", out)
    n = len((out / "chunks.jsonl").read_text().splitlines())
    assert n == 20  # 4 x 5 chunks, each computed once


def test_stale_lock_from_a_dead_process(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    (tmp_path / ".geoseg.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "started": 1.0}))
    with FolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLockedError):
            FolderLock(tmp_path).acquire()
    assert not (tmp_path / ".geoseg.lock").exists()


def test_negative_bbox_values_parse() -> None:
    argv = ["run", "a.tif", "-o", "o", "--bbox", "-101.195,41.478,-101.18,41.495",
            "--bbox-crs", "EPSG:4326"]
    assert _join_negative_values(argv)[4] == "--bbox=-101.195,41.478,-101.18,41.495"
    from geoseg.cli import build_parser

    ns = build_parser().parse_args(_join_negative_values(argv))
    assert ns.bbox == "-101.195,41.478,-101.18,41.495" and ns.region_crs == "EPSG:4326"


def test_lock_of_another_host_is_stale_without_heartbeat(tmp_path: Path) -> None:
    """A job retried on a fresh pod (another host name) takes over a lock whose holder stopped
    refreshing it; a fresh one is respected."""
    lock = tmp_path / ".geoseg.lock"
    lock.write_text(json.dumps({"host": "old-pod-7f9c", "pid": 1, "started": 1.0}))
    with pytest.raises(OutputLockedError, match="old-pod-7f9c"):
        FolderLock(tmp_path).acquire()  # its mtime is now: alive
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    with FolderLock(tmp_path) as held:
        assert json.loads(held.path.read_text())["pid"] == os.getpid()


def test_transient_write_error_is_retried_not_fatal(tmp_path: Path) -> None:
    import errno

    from geoseg.errors import StorageError
    from geoseg.outdir import storage_errors

    with pytest.raises(OSError) as info, storage_errors(tmp_path, fatal_only=True):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(info.value, StorageError)  # retried by the backend
    with pytest.raises(StorageError, match="disk full"), \
            storage_errors(tmp_path, fatal_only=True):
        raise OSError(errno.ENOSPC, "No space left on device")
