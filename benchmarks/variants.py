"""One measured variant per process (so each one's whole process tree can be measured).

    python -m benchmarks.variants forward   IMAGE BUNDLE [--overlap 64]
    python -m benchmarks.variants naive     IMAGE BUNDLE OUTDIR
Each prints one JSON line with its timing and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window


def _tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    from geoseg.stitch import axis_layout

    ys = axis_layout(h, tile, overlap).starts
    xs = axis_layout(w, tile, overlap).starts
    return [(y, x) for y in ys for x in xs]


def forward(image: str, bundle: str, overlap: int, tile: int, batch: int,
            engine: str = "torch", device: str = "cpu") -> dict[str, float]:
    """Model time alone over a tiling of the image (reads excluded from the clock), softmax
    included, with ``engine`` (torch: PyTorch eager, as users write it; onnx: onnxruntime)."""
    import os

    from geoseg.models.onnx_predictor import load_predictor

    pred: Any = load_predictor(bundle, device, os.cpu_count() or 1, engine)  # type: ignore[arg-type]
    bands = list(pred.spec.bands)
    with rasterio.open(image) as src:
        h, w = src.height, src.width
        origins = _tiles(h, w, tile, overlap)
        model_s = 0.0
        for i in range(0, len(origins), batch):
            group = origins[i:i + batch]
            x = np.stack([src.read(bands, window=Window(c, r, tile, tile), boundless=True,
                                   fill_value=0) for r, c in group]).astype(np.float32)
            t = time.perf_counter()
            pred.predict_proba(x)
            model_s += time.perf_counter() - t
    model_px = len(origins) * tile * tile  # what the model saw (tiles overlap at the edges)
    return {"pixels": h * w, "seconds": model_s, "px_per_s": h * w / model_s,
            "model_px_per_s": model_px / model_s}


def naive(image: str, bundle: str, out: str, tile: int = 512,
          overlap: int = 64) -> dict[str, float]:
    """The hand-written loop peers write: windows → scene-sized array → GeoTIFF → shapes → GPKG."""
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes

    from geoseg.models.predictor import Predictor

    t0 = time.perf_counter()
    pred = Predictor(bundle, num_threads=2)
    bands = list(pred.spec.bands)
    half = overlap // 2
    with rasterio.open(image) as src:
        h, w = src.height, src.width
        profile = src.profile
        scene = np.zeros((h, w), np.uint8)  # the whole scene in RAM
        for r, c in _tiles(h, w, tile, overlap):
            x = src.read(bands, window=Window(c, r, tile, tile), boundless=True,
                         fill_value=0).astype(np.float32)[None]
            cls = pred.predict_proba(x)[0].argmax(0).astype(np.uint8)
            r0 = 0 if r == 0 else half
            c0 = 0 if c == 0 else half
            scene[r + r0:r + tile, c + c0:c + tile] = cls[r0:h - r, c0:w - c]
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    profile.update(count=1, dtype="uint8", nodata=None, compress="deflate")
    with rasterio.open(outp / "naive.tif", "w", **profile) as dst:
        dst.write(scene, 1)
    geoms, vals = [], []
    for geom, val in shapes(scene, transform=profile["transform"]):
        geoms.append(shapely.geometry.shape(geom))
        vals.append(int(val))
    gpd.GeoDataFrame({"class_id": vals}, geometry=geoms, crs=profile["crs"]).to_file(
        outp / "naive.gpkg", driver="GPKG")
    dt = time.perf_counter() - t0
    return {"pixels": h * w, "seconds": dt, "px_per_s": h * w / dt, "polygons": len(geoms)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=["forward", "naive"])
    p.add_argument("image")
    p.add_argument("bundle")
    p.add_argument("out", nargs="?")
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--engine", choices=["torch", "torch-bf16", "onnx"], default="torch")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.variant == "forward":
        res = forward(a.image, a.bundle, a.overlap, a.tile, a.batch, a.engine, a.device)
    else:
        res = naive(a.image, a.bundle, a.out or "/tmp/naive", a.tile, 64)
    # this process's peak resident memory: what one pass of --tile px costs (Linux: KiB)
    res["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
