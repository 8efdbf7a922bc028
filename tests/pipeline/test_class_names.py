"""Class names with spaces and punctuation ("bare soil (dry)") are spelled one way in every
output: the store's ``class_names``, the summary, the GeoPackage, the API and the change; only
CF's space-separated ``flag_meanings`` writes a space as ``_``."""

from __future__ import annotations

from pathlib import Path

import pyogrio
import pytest
import torch
import zarr

import geoseg
from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization
from geoseg.change import compare_runs
from geoseg.errors import InputError
from geoseg.models import build_model, save_bundle
from tests.conftest import write_raster
from tests.pipeline.conftest import LC, textured

NAMES = ("bare soil (dry)", "building", "road", "low vegetation", "water")


def _bundle(root: Path) -> Path:
    spec = BundleSpec(
        name="spaced", version="0.0.1", task="landcover",
        architecture=ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                                      decoder_channels=(16, 8, 8)),
        bands=(1, 2, 3, 4), band_names=("red", "green", "blue", "nir"),
        normalization=Normalization(mean=(100.0,) * 4, std=(50.0,) * 4),
        classes=tuple(ClassSpec(id=i, name=n, color=c)
                      for i, (n, (_, c)) in enumerate(zip(NAMES, LC, strict=True))),
        tile_size=256, pixel_size=0.5)
    torch.manual_seed(3)
    return save_bundle(build_model(spec), spec, root / "spaced")


def test_class_names_are_spelled_one_way(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    runs = []
    for seed in (0, 1):
        image = write_raster(tmp_path / f"img{seed}.tif", textured(128, 128, seed=seed),
                             descriptions=["red", "green", "blue", "nir"])
        runs.append(geoseg.run(image, tmp_path / f"run{seed}", models=[str(bundle)],
                               chunk_size=64, workers=1, threads=1))
    run = runs[0]
    assert run.class_names("landcover") == NAMES
    attrs = zarr.open_group(str(run.layout.store), mode="r")["landcover"].attrs
    assert attrs["flag_meanings"] == ("bare_soil_(dry) building road low_vegetation water")
    assert set(run.summary.class_areas_m2["landcover"]) <= set(NAMES)
    gpkg = pyogrio.read_dataframe(run.layout.gpkg, layer="landcover")
    assert set(gpkg["class_name"]) <= set(NAMES) and "low vegetation" in set(gpkg["class_name"])
    change = compare_runs(runs[0].path, runs[1].path, tmp_path / "change",
                          min_spectral_change=0)
    names = {r["from_class"] for r in change.summary["transitions"]}
    assert names <= set(NAMES) and "low vegetation" in names


def test_a_run_from_before_class_names_compares_with_a_new_one() -> None:
    """A store written before ``class_names`` reads "low_vegetation" from flag_meanings; a new
    one "low vegetation": the same classes, so change compares them."""
    from geoseg.change.runs import ClassScheme, RunInfo, check_same_classes

    def run(names: tuple[str, ...]) -> RunInfo:
        scheme = ClassScheme(tuple(range(len(names))), names, ("#000000",) * len(names))
        return RunInfo(Path("r"), None, 64, scheme, "", "", True, None)  # type: ignore[arg-type]

    check_same_classes(run(tuple(n.replace(" ", "_") for n in NAMES)), run(NAMES))
    with pytest.raises(InputError, match="different land-cover classes"):
        check_same_classes(run(NAMES[::-1]), run(NAMES))
