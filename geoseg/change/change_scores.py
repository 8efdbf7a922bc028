"""Score a change result against a generated scene's truth (``geoseg.sample``).

Pixels: truth changed = ``landcover_t0 != landcover_t1`` where both are valid; only pixels that
the prediction calls known *and* the truth has are scored (``coverage`` says how many of the
truth's pixels the prediction left unknown). Buildings: predicted change features of each type
are matched one-to-one to truth change features of the same type at IoU >= 0.5 (truth
``extended`` counts as ``modified``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window as RioWindow

from geoseg.change.compare import GPKG, PR_PNG, STORE, ChangeResult
from geoseg.change.raster import NO_IMAGE_CHANGE, SPECTRAL, UNCERTAIN
from geoseg.change.spectral import SCALE
from geoseg.errors import GeoSegWarning, InputError
from geoseg.metrics import ObjectScores, score_polygons
from geoseg.scoring import truth_window
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
    g = zarr.open_group(str(store), mode="r", zarr_format=2)
    changed, confidence = g["changed"], g["confidence"]
    spectral = g.get(SPECTRAL)
    tp = fp = fn = tn = truth_valid = unknown = missed_flips = missed_spectral = 0
    # changed pixels by their confidence (min of both dates', uint8): the precision/recall
    # curve of "changed only where confidence >= t"; and, with the image check, confident
    # flips by their image change magnitude (codes): the curve of "... and magnitude >= s"
    hit_by_conf = np.zeros(256, np.int64)
    false_by_conf = np.zeros(256, np.int64)
    hit_by_mag = np.zeros(256, np.int64)
    false_by_mag = np.zeros(256, np.int64)
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
                p = pred == 1  # uncertain (2) counts as "not changed"
                flip = p | (pred == UNCERTAIN)  # ... but is on the curve, at its confidence
                conf = np.asarray(confidence[r0:r0 + h, c0:c0 + w])  # type: ignore[index]
                hit_by_conf += np.bincount(conf[known & flip & truth], minlength=256)
                false_by_conf += np.bincount(conf[known & flip & ~truth], minlength=256)
                if spectral is not None:
                    mag = np.asarray(spectral[r0:r0 + h, c0:c0 + w])  # type: ignore[index]
                    sure = known & ((pred == 1) | (pred == NO_IMAGE_CHANGE))
                    hit_by_mag += np.bincount(mag[sure & truth], minlength=256)
                    false_by_mag += np.bincount(mag[sure & ~truth], minlength=256)
                    missed_spectral += int((known & ~sure & truth).sum())
                tp += int((known & p & truth).sum())
                fp += int((known & p & ~truth).sum())
                fn += int((known & ~p & truth).sum())
                missed_flips += int((known & ~flip & truth).sum())
                tn += int((known & ~p & ~truth).sum())
    prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    scored = tp + fp + fn + tn > 0  # else nothing was known at both dates and in the truth
    if not scored:
        warnings.warn(f"no pixel of {store} is known at both dates and in the truth: the "
                      "change cannot be scored (precision, recall and F1 are null)",
                      GeoSegWarning, stacklevel=2)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": round(prec, 6) if scored else None,
            "recall": round(rec, 6) if scored else None,
            "f1": (round(2 * prec * rec / (prec + rec), 6) if prec + rec else 0.0)
            if scored else None,
            "coverage": round(1 - unknown / truth_valid, 6) if truth_valid else 0.0,
            "truth_changed_fraction": round((tp + fn) / (tp + fp + fn + tn), 6)
            if tp + fp + fn + tn else 0.0,
            "by_confidence": confidence_curve(hit_by_conf, false_by_conf, missed_flips),
            **({"by_spectral_change": confidence_curve(
                hit_by_mag, false_by_mag, missed_spectral, scale=SCALE,
                name="min_spectral_change")} if spectral is not None else {})}


def confidence_curve(hits: np.ndarray, falses: np.ndarray, missed: int, *,
                     scale: float = 1 / 255, name: str = "min_confidence") -> dict[str, Any]:
    """Precision and recall of changed pixels when only those with a stored value >= t count
    as changed (the rest become "not changed"), for every uint8 t; and the lowest t whose
    precision reaches 0.8 (``None`` if none does), as ``t * scale`` under ``name``."""
    tp = np.cumsum(hits[::-1])[::-1]  # tp[t] = changed & right with confidence >= t
    fp = np.cumsum(falses[::-1])[::-1]
    total_true = int(hits.sum()) + missed
    precision = np.divide(tp, tp + fp, out=np.ones(256), where=(tp + fp) > 0)
    recall = tp / total_true if total_true else np.zeros(256)
    ok = np.flatnonzero((precision >= 0.8) & (tp > 0))
    at = int(ok[0]) if ok.size else None
    return {"threshold": [round(t * scale, 4) for t in range(256)],
            "precision": [round(float(v), 5) for v in precision],
            "recall": [round(float(v), 5) for v in recall],
            "precision_0.8_at": None if at is None else {
                name: round(at * scale, 4), "precision": round(float(precision[at]), 5),
                "recall": round(float(recall[at]), 5)}}


CURVE_COLORS = ((200, 40, 40), (30, 130, 90))


def write_pr_png(curves: dict[str, dict[str, Any]], path: Path, size: int = 360) -> Path:
    """Precision/recall curves of :func:`confidence_curve` (label -> curve, at most two) as a
    small PNG (PIL only); a circle marks each curve's lowest threshold."""
    from PIL import Image, ImageDraw

    m = 40  # margin for the axes' labels
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    span = size - 2 * m

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return m + recall * span, size - m - precision * span

    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):  # grid and tick labels
        d.line([xy(v, 0), xy(v, 1)], fill=(225, 225, 225))
        d.line([xy(0, v), xy(1, v)], fill=(225, 225, 225))
        d.text((xy(v, 0)[0] - 8, size - m + 4), f"{v:.1f}", fill="black")
        d.text((4, xy(0, v)[1] - 6), f"{v:.1f}", fill="black")
    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for n, ((label, curve), color) in enumerate(zip(curves.items(), CURVE_COLORS,
                                                    strict=False)):
        pts = [xy(r, p) for r, p in zip(curve["recall"], curve["precision"], strict=True)
               if r > 0]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        if pts:
            x, y = pts[0]
            d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(30, 30, 160), width=2)
        d.text((m + 6, size - m - 30 + 12 * n), f"by {label}", fill=color)
    d.text((m, 8), "changed pixels: precision vs recall", fill="black")
    d.text((size // 2 - 16, size - 16), "recall", fill="black")
    d.text((2, m - 20), "precision", fill="black")
    img.save(path)
    return path


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
    px = report["pixels"]
    curves = {"min confidence": px["by_confidence"]}
    if "by_spectral_change" in px:
        curves["image change (sigma)"] = px["by_spectral_change"]
    px["pr_curve_png"] = str(write_pr_png(curves, out / PR_PNG))
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
