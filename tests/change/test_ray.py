"""The land-cover change pass as Ray tasks (bands of chunk rows, with the rows of context the
width filter needs) gives exactly what the local threads give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.change import compare_runs
from tests.change.conftest import SHAPE, T_A, make_run, pattern, shifted
from tests.conftest import write_raster

pytestmark = pytest.mark.ray

LAYERS = ("from_class", "to_class", "changed", "confidence", "spectral_change")


def _layers(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(out / "change.zarr"), mode="r")
    return {n: np.asarray(g[n][...]) for n in LAYERS}  # type: ignore[index]


@pytest.mark.parametrize("grid", ["a", "b"])
def test_ray_equals_threads(tmp_path: Path, ray_cluster: None, grid: str) -> None:
    rng = np.random.default_rng(1)
    conf_a = rng.integers(60, 255, SHAPE).astype(np.uint8)
    a = make_run(tmp_path / "a", pattern(SHAPE, 3), conf_a, chunk=32)
    # b: another origin (10.3, 7.6 px off) and chunking, so it is resampled onto a's grid
    b = make_run(tmp_path / "b", pattern((100, 130), 4), 200, transform=shifted(10.3, 7.6),
                 chunk=48, date="2024-06-01")
    # the images (b's on its own, resampled grid) for the image check, read where tasks run
    images = (str(write_raster(tmp_path / "a.tif", rng.integers(0, 255, (3, *SHAPE), np.uint8),
                               transform=T_A)),
              str(write_raster(tmp_path / "b.tif", rng.integers(0, 255, (3, 100, 130), np.uint8),
                               transform=shifted(10.3, 7.6))))
    local = compare_runs(a, b, tmp_path / "threads", grid=grid,  # type: ignore[arg-type]
                         min_confidence=0.4, executor="threads", min_change_width=5,
                         images=images, min_spectral_change=0.5)
    on_ray = compare_runs(a, b, tmp_path / "ray", grid=grid,  # type: ignore[arg-type]
                          min_confidence=0.4, executor="ray", min_change_width=5,
                          images=images, min_spectral_change=0.5)
    assert local.summary["executor"] == "threads" and on_ray.summary["executor"] == "ray"
    want, got = _layers(local.output), _layers(on_ray.output)
    for name in LAYERS:
        np.testing.assert_array_equal(got[name], want[name])
    assert (want["changed"] == 1).any() and (want["changed"] == 255).any()
    assert (want["changed"] == 3).any()  # vetoed by the images, the same on Ray
    assert on_ray.summary["areas"] == local.summary["areas"]
    assert ((on_ray.output / "transitions.csv").read_bytes()
            == (local.output / "transitions.csv").read_bytes())
    assert zarr.open_group(str(on_ray.output / "change.zarr"), mode="r").attrs["geoseg_complete"]
