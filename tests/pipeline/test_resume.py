"""Interrupted runs resume: only unfinished chunks are recomputed, results are identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.config import validate_job
from geoseg.errors import ResumeError
from geoseg.job import Progress, run_job
from geoseg.runtime.serial import SerialBackend
from geoseg.store import store_attrs


def _cfg(image: Path, out: Path, bundles: tuple[str, str], halo: int = 64) -> object:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": halo},
                         "vectors": {"halo": 48}, "runtime": {"threads_per_worker": 1}})


def test_interrupt_then_resume_is_identical(tmp_path: Path, scene_tif: Path,
                                            tiny_bundles: tuple[str, str]) -> None:
    clean = run_job(_cfg(scene_tif, tmp_path / "clean", tiny_bundles),  # type: ignore[arg-type]
                    backend=SerialBackend())

    def stop_after_three(p: Progress) -> None:
        if p.done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(scene_tif, out, tiny_bundles),  # type: ignore[arg-type]
                backend=SerialBackend(), progress=stop_after_three)
    assert store_attrs(out / "predictions.zarr")["geoseg_complete"] is False
    assert not (out / "features.gpkg").exists()  # no half-written output that looks finished
    res = run_job(_cfg(scene_tif, out, tiny_bundles),  # type: ignore[arg-type]
                  resume=True, backend=SerialBackend())
    assert res.summary["chunks"]["computed_this_run"] == clean.summary["chunks"]["total"] - 3
    a = zarr.open_group(str(tmp_path / "clean" / "predictions.zarr"), mode="r")
    b = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    for name in ("landcover", "landcover_confidence", "buildings", "buildings_confidence"):
        assert np.array_equal(a[name][:], b[name][:]), name  # type: ignore[index]
    assert store_attrs(out / "predictions.zarr")["geoseg_complete"] is True
    assert res.summary["features"] == clean.summary["features"]


def test_resume_with_changed_settings_refused(tmp_path: Path, scene_tif: Path,
                                              tiny_bundles: tuple[str, str]) -> None:
    run_job(_cfg(scene_tif, tmp_path / "o", tiny_bundles),  # type: ignore[arg-type]
            backend=SerialBackend())
    with pytest.raises(ResumeError, match="--overwrite") as err:
        run_job(_cfg(scene_tif, tmp_path / "o", tiny_bundles, halo=32),  # type: ignore[arg-type]
                resume=True, backend=SerialBackend())
    assert "(inference.halo differ)" in str(err.value), err.value  # it says what changed


@pytest.mark.parametrize("change", ["pixels", "size", "list"])
def test_resume_onto_another_input_under_the_same_name_is_refused(
        tmp_path: Path, tiny_bundles: tuple[str, str], change: str) -> None:
    """The settings' key holds the input's name only: an image replaced under its name (another
    date, another size) or a list that grew was resumed into the earlier run, mixing the two
    (or failing chunk after chunk, after the finished run's summary had been taken back)."""
    import json

    from tests.conftest import write_raster
    from tests.pipeline.conftest import textured

    names = ["red", "green", "blue", "nir"]
    img = write_raster(tmp_path / "a.tif", textured(128, 128, seed=1), descriptions=names)
    src: Path = img
    if change == "list":
        src = tmp_path / "list.txt"
        src.write_text("a.tif\n")
    out = tmp_path / "o"
    first = run_job(_cfg(src, out, tiny_bundles), backend=SerialBackend())  # type: ignore[arg-type]
    assert first.ok
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if change == "pixels":  # the same grid and file size, another date's pixels
        write_raster(img, textured(128, 128, seed=2), descriptions=names)
    elif change == "size":
        write_raster(img, textured(128, 192, seed=1), descriptions=names)
    else:
        write_raster(tmp_path / "b.tif", textured(128, 128, seed=3), descriptions=names)
        src.write_text("a.tif\nb.tif\n")
    with pytest.raises(ResumeError, match=r"the input is not the one this run began with \(its "
                                          r".*(sampled pixels|grid|image list)"):
        run_job(_cfg(src, out, tiny_bundles), resume=True,  # type: ignore[arg-type]
                backend=SerialBackend())
    # the finished run is left exactly as it was: still complete
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    # the same input again resumes (nothing to do)
    if change == "pixels":
        write_raster(img, textured(128, 128, seed=1), descriptions=names)
        res = run_job(_cfg(src, out, tiny_bundles), resume=True,  # type: ignore[arg-type]
                      backend=SerialBackend())
        assert res.ok and res.summary["chunks"]["computed_this_run"] == 0


def test_a_resume_warns_only_when_the_code_differs() -> None:
    """A submitted job records git_dirty as unknown (None): a resume of it from the same
    commit said 'started with 0.1.0 (commit X) using 0.1.0 (commit X)'."""
    from geoseg.job import _code_changed

    base = {"geoseg_version": "0.1.0", "git_commit": "abc", "git_dirty": False}
    assert not _code_changed(base, {**base, "git_dirty": None})
    assert _code_changed(base, {**base, "git_dirty": True})
    assert _code_changed(base, {**base, "git_commit": "def"})
    assert _code_changed(base, {**base, "geoseg_version": "0.2.0"})
