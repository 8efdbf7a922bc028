"""Fixtures for cluster, failure and resume tests: tiny random-weight bundles, a small generated
scene, a config writer, a Zarr comparison and a runner for the cluster sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import write_raster
from tests.pipeline.conftest import textured, tiny_bundle

ARRAYS = ("landcover", "landcover_confidence", "buildings", "buildings_confidence")


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny bundles with their ONNX graphs, so that ``auto`` runs onnxruntime on CPUs, as
    it does for the built-in bundles: a model actor then starts in ~1 s instead of the ~5 s of
    importing torch and segmentation-models-pytorch, which was most of each Ray job here (the
    torch engine in Ray actors: tests/pipeline/test_ray.py)."""
    from geoseg.models import export_onnx

    root = tmp_path_factory.mktemp("cluster-bundles")
    bundles = tiny_bundle(root, "landcover", 1), tiny_bundle(root, "buildings", 2)
    for bundle in bundles:
        export_onnx(bundle)
    return str(bundles[0]), str(bundles[1])


@pytest.fixture(scope="session")
def region_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256² px, 4 bands, EPSG:32633 at 0.5 m: 16 chunks of 64²."""
    root = tmp_path_factory.mktemp("region")
    return write_raster(root / "region.tif", textured(256, 256, seed=5),
                        descriptions=["red", "green", "blue", "nir"],
                        tags={"ACQUISITION_DATE": "2024-06-01"})


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory, region_tif: Path,
              tiny_bundles: tuple[str, str]) -> Path:
    """The reference output: the small job, serial, never interrupted."""
    from geoseg.config import validate_job
    from geoseg.job import run_job
    from geoseg.runtime.serial import SerialBackend

    out = tmp_path_factory.mktemp("clean") / "out"
    assert run_job(validate_job(job_dict(region_tif, out, tiny_bundles)),
                   backend=SerialBackend()).ok
    return out


def job_dict(image: Path, out: Path, bundles: tuple[str, str], **runtime: Any) -> dict[str, Any]:
    """A small job: 64² chunks, no vectors or exports (the Zarr is what these tests compare)."""
    return {"image": str(image), "output": str(out), "models": list(bundles),
            "inference": {"chunk_size": 64, "halo": 32},
            "vectors": {"enabled": False}, "outputs": {"cog": False, "quicklook": False},
            "runtime": {"workers": 1, "threads_per_worker": 1, **runtime}}


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def store_files(out: Path) -> dict[str, bytes]:
    """Every chunk file of the prediction arrays, by relative path (attributes excluded)."""
    root = out / "predictions.zarr"
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for name in ARRAYS for p in sorted((root / name).iterdir())
            if not p.name.startswith(".")}


def assert_same_store(a: Path, b: Path) -> None:
    """Byte-identical chunk files and equal arrays."""
    import zarr

    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, f"chunk files differ: {differ[:5]}"
    za = zarr.open_group(str(a / "predictions.zarr"), mode="r")
    zb = zarr.open_group(str(b / "predictions.zarr"), mode="r")
    for name in ARRAYS:
        assert np.array_equal(np.asarray(za[name][:]), np.asarray(zb[name][:])), name  # type: ignore[index]


def cluster_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run a cluster sub-command as ``geoseg`` would (errors as one line): rc, stdout, stderr."""
    from geoseg.cli.cluster_cmds import add_cluster_commands
    from geoseg.errors import GeoSegError

    p = argparse.ArgumentParser(prog="geoseg")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_cluster_commands(sub)
    args = p.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = int(args.fn(args))
        except GeoSegError as exc:
            print(f"error: {exc}", file=err)
            rc = exc.exit_code
    return rc, out.getvalue(), err.getvalue()


Runner = Callable[[Sequence[str]], tuple[int, str, str]]
