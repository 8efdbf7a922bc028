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
    with pytest.raises(ResumeError, match="--overwrite"):
        run_job(_cfg(scene_tif, tmp_path / "o", tiny_bundles, halo=32),  # type: ignore[arg-type]
                resume=True, backend=SerialBackend())
