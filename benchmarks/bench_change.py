"""Memory of ``geoseg change`` against the size of the region, in one run.

    geoseg run scene/image_t0.tif -o run_a && geoseg run scene/image_t1.tif -o run_b
    python -m benchmarks.bench_change --run-a run_a --run-b run_b --tiles 1 --tiles 4

``--tiles N`` compares runs N×N times the size of the given ones, made by tiling them (their
Zarr chunks copied to the shifted chunk keys, their footprints translated), as
``bench_pipeline`` tiles the demo image: a 16384² pair from a 4096² pair without an hour of
inference each; their images are tiled the same way as VRTs for the image check. The change
step reads them as it reads any run. Peak memory is the summed PSS of
the ``geoseg change`` process tree, sampled every 0.2 s.

Runs without a buildings model (``geoseg run -m landcover``) or without vectors
(``--no-vectors``) compare too: there are no footprints to tile, and the table's ``buildings``
is null. A failed ``geoseg change`` stops the benchmark with one line (the command and the last
line of its stderr) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_pipeline import measure

STORE = "predictions.zarr"
GPKG = "features.gpkg"
ID = re.compile(r"^b(\d+)_(\d+)$")


def _tile_array(src: Path, dst: Path, n: int) -> None:
    """A 2-D chunked array repeated n×n (chunk files copied to shifted keys)."""
    meta = json.loads((src / ".zarray").read_text())
    rows, cols = meta["shape"]
    ch, cw = meta["chunks"]
    if rows % ch or cols % cw:
        raise SystemExit(f"{src}: shape {rows}×{cols} is not a whole number of chunks")
    dst.mkdir(parents=True)
    sep = meta.get("dimension_separator", ".")
    (dst / ".zarray").write_text(json.dumps({**meta, "shape": [rows * n, cols * n]}, indent=2))
    shutil.copy(src / ".zattrs", dst / ".zattrs")
    for f in src.iterdir():
        if f.name.startswith("."):
            continue
        r, c = (int(x) for x in f.name.split(sep))
        for i in range(n):
            for j in range(n):
                shutil.copy(f, dst / f"{r + i * (rows // ch)}{sep}{c + j * (cols // cw)}")


def _tile_coords(src: Path, dst: Path, n: int, step: float) -> None:
    import zarr

    values = np.asarray(zarr.open_array(str(src), mode="r", zarr_format=2)[:])
    meta = json.loads((src / ".zarray").read_text())
    size = values.size * n
    dst.mkdir(parents=True)
    (dst / ".zarray").write_text(json.dumps({**meta, "shape": [size], "chunks": [size]}))
    shutil.copy(src / ".zattrs", dst / ".zattrs")
    arr = zarr.open_array(str(dst), mode="r+", zarr_format=2)
    arr[:] = values[0] + step * np.arange(size)


def tile_run(src: Path, dst: Path, n: int) -> Path:
    """``src`` run repeated n×n into ``dst`` (store and building footprints)."""
    import geopandas as gpd
    import shapely
    import zarr

    if n == 1:
        return src
    if dst.exists():
        shutil.rmtree(dst)
    store, out = src / STORE, dst / STORE
    out.mkdir(parents=True)
    for f in (".zgroup", ".zattrs"):
        shutil.copy(store / f, out / f)
    attrs = json.loads((store / ".zattrs").read_text())
    a, _, _, _, e, _ = attrs["transform"][:6]
    height = width = 0
    for arr in sorted(p for p in store.iterdir() if (p / ".zarray").exists()):
        shape = json.loads((arr / ".zarray").read_text())["shape"]
        if len(shape) == 2:
            _tile_array(arr, out / arr.name, n)
            height, width = shape
        elif arr.name in ("x", "y"):
            _tile_coords(arr, out / arr.name, n, a if arr.name == "x" else e)
        else:
            shutil.copytree(arr, out / arr.name)
    zarr.consolidate_metadata(str(out), zarr_format=2)
    if not _has_buildings(src):  # a run without a buildings model, or without vectors
        return dst
    frame = gpd.read_file(src / GPKG, layer="buildings", engine="pyogrio")
    parts = []
    for i in range(n):
        for j in range(n):
            part = frame.copy()
            shift = np.array([j * width * a, i * height * e])
            part["geometry"] = shapely.transform(np.asarray(frame.geometry.values, dtype=object),
                                                 lambda xy, shift=shift: xy + shift)
            part["id"] = [f"b{int(m[1]) + i * height}_{int(m[2]) + j * width}"
                          if (m := ID.match(str(v))) else f"{v}-{i}-{j}" for v in frame["id"]]
            parts.append(part)
    tiled = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=frame.crs)
    tiled.to_file(dst / GPKG, layer="buildings", driver="GPKG", engine="pyogrio")
    return dst


def _has_buildings(run: Path) -> bool:
    """Whether ``run`` wrote building footprints (its GeoPackage has a buildings layer)."""
    import pyogrio

    gpkg = run / GPKG
    return gpkg.is_file() and "buildings" in {str(name) for name, _ in
                                               pyogrio.list_layers(gpkg)}


def _source_image(run: Path) -> str:
    return str(json.loads((run / STORE / ".zattrs").read_text())["source_image"])


def tile_image(src: str, dst: Path, n: int) -> str:
    """The image ``src`` repeated n×n as a GDAL VRT (no pixels copied), on the tiled runs'
    grid, for the change step's image check."""
    import html

    import rasterio

    if n == 1:
        return src
    with rasterio.open(src) as ds:
        h, w, count = ds.height, ds.width, ds.count
        gt = ds.transform.to_gdal()
        srs, dtype = ds.crs.to_wkt(), ds.dtypes[0]
    types = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
    lines = [f'<VRTDataset rasterXSize="{w * n}" rasterYSize="{h * n}">',
             f"  <SRS>{html.escape(srs)}</SRS>",
             f"  <GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>"]
    for b in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{types[dtype]}" band="{b}">')
        for i in range(n):
            for j in range(n):
                lines += ["    <SimpleSource>",
                          f'      <SourceFilename relativeToVRT="0">{html.escape(str(src))}'
                          "</SourceFilename>",
                          f"      <SourceBand>{b}</SourceBand>",
                          f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                          f'      <DstRect xOff="{j * w}" yOff="{i * h}" xSize="{w}" '
                          f'ySize="{h}"/>',
                          "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    dst.write_text("\n".join(lines) + "\n")
    return str(dst)


def run_change(cmd: list[str], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``measure`` the ``geoseg change`` command ``cmd`` writing to ``out``: its measurements and
    its ``change_summary.json``. A change that fails (or writes no summary) stops the benchmark
    with one line naming the command and the last line of its stderr."""
    shown = shlex.join(cmd)
    try:
        res = measure(cmd)
    except SystemExit as exc:  # measure's message: "CMD failed (RC):\nSTDERR"
        head, _, err = str(exc.code).partition("\n")
        rc = re.search(r"failed \((-?\d+)\):$", head)
        last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()),
                    "(nothing on stderr)")
        raise SystemExit(f"error: {shown} failed (exit {rc[1] if rc else '?'}): {last}") from None
    path = out / "change_summary.json"
    if not path.is_file():
        raise SystemExit(f"error: {shown} exited 0 but wrote no {path}")
    return res, json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-a", type=Path, required=True)
    ap.add_argument("--run-b", type=Path, required=True)
    ap.add_argument("--tiles", type=int, action="append")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-change"))
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for n in args.tiles or [1, 4]:
        ra = tile_run(args.run_a, work / f"a-x{n}", n)
        rb = tile_run(args.run_b, work / f"b-x{n}", n)
        out = work / f"change-x{n}"
        images = [tile_image(_source_image(r), work / f"{k}-x{n}.vrt", n)
                  for k, r in (("a", args.run_a), ("b", args.run_b))]
        res, summary = run_change([sys.executable, "-m", "geoseg", "change", str(ra), str(rb),
                                   "-o", str(out), "--overwrite", "--images", *images], out)
        # a section is null when the runs have no such model (buildings) or no such output
        shape = (summary.get("grid") or {}).get("shape")
        rows.append({"tiles": n, "shape": shape, "wall_s": round(res["wall_s"], 1),
                     "peak_pss_gb": round(res["peak_pss_gb"], 3),
                     "buildings": (summary.get("buildings") or {}).get("counts")})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'tiles':>5} {'shape':>13} {'wall s':>8} {'peak PSS GB':>12}")
    for r in rows:
        print(f"{r['tiles']:>5} {'×'.join(map(str, r['shape'] or [])):>13} {r['wall_s']:>8} "
              f"{r['peak_pss_gb']:>12}")
    if len(rows) > 1:
        print(f"memory {rows[-1]['tiles']}×{rows[-1]['tiles']} / {rows[0]['tiles']}×"
              f"{rows[0]['tiles']}: {rows[-1]['peak_pss_gb'] / rows[0]['peak_pss_gb']:.3f}")
    (work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
