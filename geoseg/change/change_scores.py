"""Score a change result against a generated scene's truth (``geoseg.sample``).

Pixels: truth changed = ``landcover_t0 != landcover_t1`` where both are valid; only pixels that
the prediction calls known *and* the truth has are scored (``coverage`` says how many of the
truth's pixels the prediction left unknown). Buildings: predicted change features of each type
are matched one-to-one to truth change features of the same type at IoU >= 0.5 (truth
``extended`` counts as ``modified``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window as RioWindow

from geoseg.change.compare import GPKG, STORE, ChangeResult
from geoseg.errors import InputError
from geoseg.evaluate import truth_window
from geoseg.metrics import ObjectScores, score_polygons
from geoseg.store import FILL, store_grid

TRUTH_KIND = {"new": "new", "demolished": "demolished", "extended": "modified",
              "modified": "modified"}


def _ratio(n: int, d: int) -> float:
    return n / d if d else (1.0 if n == 0 else 0.0)


def _pixel_scores(store: Path, scene: Path) -> dict[str, Any]:
    grid, chunk = store_grid(store)
    t0, t1 = scene / "landcover_t0.tif", scene / "landcover_t1.tif"
    for p in (t0, t1):
        if not p.exists():
            raise InputError(f"{p} not found: pass a scene directory from `geoseg sample`")
    win = truth_window(t0, grid)
    if truth_window(t1, grid) != win:
        raise InputError(f"{t0.name} and {t1.name} are on different grids: regenerate the scene")
    changed = zarr.open_group(str(store), mode="r", zarr_format=2)["changed"]
    tp = fp = fn = tn = truth_valid = unknown = 0
    with rasterio.open(t0) as s0, rasterio.open(t1) as s1:
        for r0 in range(0, grid.height, chunk):
            for c0 in range(0, grid.width, chunk):
                h, w = min(chunk, grid.height - r0), min(chunk, grid.width - c0)
                pred = np.asarray(changed[r0:r0 + h, c0:c0 + w])  # type: ignore[index]
                rw = RioWindow(win.col_off + c0, win.row_off + r0, w, h)
                a = s0.read(1, window=rw, boundless=True, fill_value=FILL)
                b = s1.read(1, window=rw, boundless=True, fill_value=FILL)
                valid = (a != FILL) & (b != FILL)
                truth = a != b
                known = valid & (pred != FILL)
                truth_valid += int(valid.sum())
                unknown += int((valid & (pred == FILL)).sum())
                p = pred == 1
                tp += int((known & p & truth).sum())
                fp += int((known & p & ~truth).sum())
                fn += int((known & ~p & truth).sum())
                tn += int((known & ~p & ~truth).sum())
    prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(prec, 6),
            "recall": round(rec, 6), "f1": round(2 * prec * rec / (prec + rec), 6)
            if prec + rec else 0.0,
            "coverage": round(1 - unknown / truth_valid, 6) if truth_valid else 0.0,
            "truth_changed_fraction": round((tp + fn) / (tp + fp + fn + tn), 6)
            if tp + fp + fn + tn else 0.0}


def _building_scores(gpkg: Path, scene: Path, bounds: tuple[float, float, float, float]
                     ) -> dict[str, Any]:
    import geopandas as gpd
    import shapely

    truth_path = scene / "changes.gpkg"
    if not truth_path.exists():
        raise InputError(f"{truth_path} not found: pass a scene directory from `geoseg sample`")
    pred = gpd.read_file(gpkg, layer="building_changes", engine="pyogrio")
    truth = gpd.read_file(truth_path, layer="building_changes", engine="pyogrio")
    if truth.crs is not None and pred.crs is not None and truth.crs != pred.crs:
        truth = truth.to_crs(pred.crs)
    box = shapely.box(*bounds)
    truth = truth[truth.geometry.representative_point().within(box)]
    truth_kind = truth["change"].map(TRUTH_KIND)
    out: dict[str, Any] = {}
    total = ObjectScores(0, 0, 0)
    for kind in ("new", "demolished", "modified"):
        p = pred[pred["change"] == kind]
        if kind == "modified":  # a merged building is one modified feature, however many parts
            p = p.drop_duplicates(subset=["id_b"])
        t = truth[truth_kind == kind]
        s = score_polygons(list(p.geometry), list(t.geometry), 0.5)
        out[kind] = s.to_dict()
        total = total + s
    out["all_changes"] = total.to_dict()
    return out


def evaluate_change(result_or_out: ChangeResult | Path | str, scene_dir: Path | str
                    ) -> dict[str, Any]:
    """Precision/recall of changed pixels and of new/demolished/modified buildings."""
    out = result_or_out.output if isinstance(result_or_out, ChangeResult) else Path(
        result_or_out)
    scene = Path(scene_dir)
    store = out / STORE
    if not (store / ".zgroup").exists():
        raise InputError(f"{out} has no {STORE}: pass the -o directory of `geoseg change`")
    report: dict[str, Any] = {"pixels": _pixel_scores(store, scene)}
    headline = {"changed px precision": report["pixels"]["precision"],
                "changed px recall": report["pixels"]["recall"]}
    gpkg = out / GPKG
    if gpkg.exists():
        grid, _ = store_grid(store)
        b = grid.bounds
        report["buildings"] = _building_scores(gpkg, scene, (b.left, b.bottom, b.right, b.top))
        for kind in ("new", "demolished", "modified"):
            headline[f"{kind} buildings F1"] = report["buildings"][kind]["f1"]
    report["headline"] = headline
    return report
