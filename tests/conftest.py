"""Shared fixtures: tiny generated rasters with real projected CRSs, one session Ray cluster."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
settings.register_profile("geoseg", deadline=None, max_examples=60)
settings.load_profile("geoseg")

SHARED_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
CRS_UTM = "EPSG:32633"


def write_raster(path: Path, data: np.ndarray, *, crs: str | None = CRS_UTM,
                 transform: Affine | None = None, nodata: float | None = None,
                 descriptions: list[str] | None = None, tags: dict[str, str] | None = None) -> Path:
    """A tiled, compressed GeoTIFF of ``data`` (C, H, W) on a 0.5 m grid."""
    if data.ndim == 2:
        data = data[None]
    c, h, w = data.shape
    t = transform or Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)
    profile: dict[str, object] = {"driver": "GTiff", "width": w, "height": h, "count": c,
                                  "dtype": data.dtype.name, "transform": t, "compress": "deflate"}
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16 * max(1, min(w, 256) // 16),
                       blockysize=16 * max(1, min(h, 256) // 16))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
        if tags:
            dst.update_tags(**tags)
    return path


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs) mounted at ``path``: a full disk or a read-only
    one without touching the host's. Skips the test where mounting is not allowed (not root)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(disk: Path, leave: int) -> Path:
    """Fill the file system at ``disk`` with one file until ``leave`` bytes are free."""
    st = os.statvfs(disk)
    filler = disk / "filler.bin"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


def coord_image(h: int, w: int, bands: int = 4) -> np.ndarray:
    """Pixel values encode their own coordinates (exact tiling/stitching checks)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.stack([(yy * 7 + xx * 3 + b * 11) % 251 + 1 for b in range(bands)])
    return out.astype(np.uint8)


@pytest.fixture(autouse=True)
def _local_unless_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that asks for no Ray (no ``ray`` marker, no ``ray_cluster``) runs as a fresh
    process would: executor ``auto`` picks the local executor even when an earlier test left
    the session's Ray running (which made such tests start Ray actors, and test Ray instead of
    what they name, depending on the order they ran in)."""
    if request.node.get_closest_marker("ray") or "ray_cluster" in request.fixturenames:
        return
    import geoseg.change.compare
    import geoseg.job

    monkeypatch.setattr(geoseg.job, "ray_connected", lambda: False)
    monkeypatch.setattr(geoseg.change.compare, "ray_connected", lambda: False)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the whole session (under xdist, in the one worker that runs every
    Ray test: see :func:`pytest_collection_modifyitems`)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip("../shared/data/real not present")
    return SHARED_REAL


def damaged_copy(src: Path, dst: Path) -> Path:
    """``src`` rewritten as a GeoTIFF of 32² tiles, then a few of its compressed tiles
    overwritten (the header stays intact, so it plans fine and those chunks fail)."""
    import rasterio

    with rasterio.open(src) as s:
        profile = {**s.profile, "blockxsize": 32, "blockysize": 32, "tiled": True}
        with rasterio.open(dst, "w", **profile) as d:
            d.write(s.read())
    data = bytearray(dst.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 2000] = b"\xff" * 2000
    dst.write_bytes(bytes(data))
    return dst


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``) the Ray tests run in one worker, one
    after another: those marked ``ray`` or using the session's Ray, and tests/cluster, whose
    tests start Ray clusters of their own. Without xdist the mark does nothing."""
    for item in items:
        if (item.get_closest_marker("ray") is not None or "tests/cluster/" in item.nodeid
                or "ray_cluster" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("ray"))
