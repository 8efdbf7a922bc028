"""Remote and mosaicked inputs vs. one local COG: throughput, peak memory, bytes over the wire.

    python -m benchmarks.bench_sources                       # 2048² scene, default models, 3 reps
    python -m benchmarks.bench_sources --model null --no-vectors   # the read path laid bare
    python -m benchmarks.bench_sources --size 4096 --repeat 2 --configs a,b,c,d,e,f

One scene (``geoseg sample --size N --seed 3``) is written as a COG (GDAL's COG driver, 512-px
tiles, deflate, overviews) and cut into 2×2 and 4×4 overlapping COG tiles on the same pixel grid
(``--overlap`` px shared with each neighbour), each set listed in a ``.txt`` file and a STAC
ItemCollection (relative hrefs, so the same documents work from disk and over HTTP). Then
``geoseg run --executor local`` (same settings every time, one subprocess per run) reads:

    a  the local COG                        (the reference)
    b  the same COG over loopback HTTP      (Range requests, /vsicurl/)
    c  the 4-item mosaic, local files       (.txt list)
    d  the 16-item mosaic, local files      (.txt list)
    e  the 4-item mosaic over HTTP          (the STAC ItemCollection served over HTTP, --bands)
    f  the 16-item mosaic over HTTP         (likewise; not run by default)

The HTTP server is a small threaded HTTP/1.1 (keep-alive) server with single-range GETs inside
this process; it counts the bytes and requests it serves. Runs are interleaved (each repetition
runs every configuration, in an order rotated per repetition) after one untimed warm-up, and the
table shows medians; every figure comes from one invocation on one machine, so compare ratios.
Memory is the peak PSS summed over the process tree (see :mod:`benchmarks.bench_pipeline`).
Each output's ``predictions.zarr`` arrays are compared with those of (a), pixel by pixel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.bench_pipeline import ROOT, measure, null_bundle, reference_bundle
from tests.range_server import RangeServer

BANDS = ("red", "green", "blue", "nir")
CONFIGS: dict[str, str] = {
    "a": "local COG (1 item)",
    "b": "HTTP COG (1 item)",
    "c": "4-item mosaic, local",
    "d": "16-item mosaic, local",
    "e": "4-item mosaic, HTTP (STAC)",
    "f": "16-item mosaic, HTTP (STAC)",
}
_PROXY = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# --------------------------------------------------------------------------- inputs

def _cog(src_path: Path, out: Path, window: Any = None) -> Path:
    """``window`` of ``src_path`` (all of it when None) as a COG: 512-px tiles, deflate,
    overviews (AUTO: down to one tile), band descriptions and tags kept."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile
    from rasterio.windows import Window

    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        win = window or Window(0, 0, src.width, src.height)
        data = src.read(window=win)
        prof = {"driver": "GTiff", "width": int(win.width), "height": int(win.height),
                "count": src.count, "dtype": src.dtypes[0], "crs": src.crs,
                "transform": src.window_transform(win), "nodata": src.nodata}
        tmp_out = out.with_suffix(".part.tif")
        with MemoryFile() as mem, mem.open(**prof) as tmp:
            tmp.write(data)
            for i, d in enumerate(src.descriptions, start=1):
                if d:
                    tmp.set_band_description(i, d)
            tmp.colorinterp = src.colorinterp
            tmp.update_tags(**src.tags())
            rasterio.shutil.copy(tmp, tmp_out, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                                 OVERVIEWS="AUTO", OVERVIEW_RESAMPLING="NEAREST")
        tmp_out.rename(out)
    return out


def _tiles(cog: Path, n: int, overlap: int, out_dir: Path) -> list[Path]:
    """``n``×``n`` COG tiles of ``cog`` on its own grid, each grown by ``overlap`` px into its
    neighbours (clipped at the image edge)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(cog) as src:
        h, w = src.height, src.width
    paths = []
    for i in range(n):
        r0, r1 = max(0, i * h // n - overlap), min(h, (i + 1) * h // n + overlap)
        for j in range(n):
            c0, c1 = max(0, j * w // n - overlap), min(w, (j + 1) * w // n + overlap)
            paths.append(_cog(cog, out_dir / f"tile_{i}_{j}.tif",
                              Window(c0, r0, c1 - c0, r1 - r0)))
    return paths


def _item_collection(paths: list[Path], out: Path) -> Path:
    """A STAC ItemCollection of ``paths`` (one asset ``image`` each, 4 named bands, hrefs
    relative to the collection, lon/lat footprints)."""
    import rasterio
    from pyproj import Transformer

    feats = []
    for p in paths:
        with rasterio.open(p) as src:
            b = src.bounds
            date = src.tags().get("ACQUISITION_DATE", "2019-06-01")
            t = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        ring = [t.transform(x, y) for x, y in ((b.left, b.bottom), (b.right, b.bottom),
                                               (b.right, b.top), (b.left, b.top),
                                               (b.left, b.bottom))]
        xs, ys = [x for x, _ in ring], [y for _, y in ring]
        feats.append({
            "type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "id": p.stem, "geometry": {"type": "Polygon", "coordinates": [ring]},
            "bbox": [min(xs), min(ys), max(xs), max(ys)],
            "properties": {"datetime": f"{date}T00:00:00Z"},
            "links": [],
            "assets": {"image": {
                "href": p.name, "roles": ["data"],
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "eo:bands": [{"name": n, "common_name": n} for n in BANDS]}}})
    out.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))
    return out


def make_inputs(work: Path, size: int, seed: int, overlap: int) -> dict[str, Any]:
    scene = work / f"scene{size}-{seed}"
    if not (scene / "image_t0.tif").exists():
        subprocess.run([sys.executable, "-m", "geoseg", "-q", "sample", str(scene), "--size",
                        str(size), "--seed", str(seed), "--overwrite"], check=True, cwd=ROOT)
    www = work / f"www{size}-{seed}-{overlap}"  # everything the HTTP server serves
    cog = _cog(scene / "image_t0.tif", www / "scene.tif")
    sets = {}
    for n in (2, 4):
        d = www / f"tiles{n * n}"
        paths = _tiles(cog, n, overlap, d)
        (d / "list.txt").write_text("".join(f"{p.name}\n" for p in paths))
        _item_collection(paths, d / "items.json")
        sets[n * n] = {"dir": d, "paths": paths,
                       "bytes": sum(p.stat().st_size for p in paths)}
    return {"www": www, "cog": cog, "cog_bytes": cog.stat().st_size, "sets": sets}


def _inputs(cfg: str, ins: dict[str, Any], srv: RangeServer) -> list[str]:
    www: Path = ins["www"]
    rel = {k: str(v["dir"].relative_to(www)) for k, v in ins["sets"].items()}
    return {
        "a": [str(ins["cog"])],
        "b": [srv.url("scene.tif")],
        "c": [str(ins["sets"][4]["dir"] / "list.txt")],
        "d": [str(ins["sets"][16]["dir"] / "list.txt")],
        "e": [srv.url(f"{rel[4]}/items.json"), "--bands", ",".join(BANDS)],
        "f": [srv.url(f"{rel[16]}/items.json"), "--bands", ",".join(BANDS)],
    }[cfg]


def run_one(cfg: str, out: Path, ins: dict[str, Any], srv: RangeServer,
            common: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "geoseg", "-q", "run", *_inputs(cfg, ins, srv), "-o", str(out),
           "--overwrite", "--executor", "local", *common]
    b0, r0 = srv.bytes, srv.total_requests
    me = psutil.Process()
    c0 = sum(me.cpu_times()[:2])
    load0 = os.getloadavg()[0]
    res = measure(cmd, env)
    res["bench_cpu_s"] = sum(me.cpu_times()[:2]) - c0  # HTTP server + PSS sampler threads
    res["load1"] = (load0 + os.getloadavg()[0]) / 2
    res["served_bytes"] = srv.bytes - b0
    res["requests"] = srv.total_requests - r0
    summ = json.loads((out / "summary.json").read_text())
    res["pixels"] = summ["throughput"]["pixels"]
    res["mpx_s"] = res["pixels"] / res["wall_s"] / 1e6
    res["summary"] = {k: summ.get(k) for k in ("timings_s", "stage_cpu_s", "engines", "tiling",
                                               "runtime", "throughput", "chunks")}
    res["cmd"] = " ".join(cmd)
    return res


def compare(ref: Path, other: Path) -> dict[str, float]:
    """Fraction of equal pixels per 2-D array of ``ref``'s predictions store (``source``, a
    mosaic's own layer, is not in ``ref``)."""
    import zarr

    ga = zarr.open_group(str(ref / "predictions.zarr"), mode="r")
    gb = zarr.open_group(str(other / "predictions.zarr"), mode="r")
    names = set(gb.array_keys())
    out = {}
    for name, arr in ga.arrays():
        if arr.ndim != 2:
            continue
        got = gb[name] if name in names else None
        if not isinstance(got, zarr.Array) or got.shape != arr.shape:
            out[name] = 0.0
            continue
        out[name] = float(np.mean(np.asarray(arr[:]) == np.asarray(got[:])))
    return out


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _stage(runs: list[dict[str, Any]], part: str, key: str) -> float:
    return statistics.median(float(r["summary"][part].get(key, 0.0)) for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="scene side, px (default 2048)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--overlap", type=int, default=32,
                   help="px each tile extends into its neighbours (default 32)")
    p.add_argument("--model", choices=["default", "reference", "null"], default="default",
                   help="default: geoseg run's own (landcover + buildings, ONNX); reference: "
                        "bench_pipeline's U-Net R18; null: a 1x1 convolution (the pipeline's "
                        "own cost, reads laid bare)")
    p.add_argument("--no-vectors", action="store_true", help="pass --no-vectors")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--configs", default="a,b,c,d,e",
                   help="which runs (a..f, see above; a is always run)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "geoseg-bench-sources"))
    a = p.parse_args()
    cfgs = ["a"] + [c for c in a.configs.split(",") if c in CONFIGS and c != "a"]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ins = make_inputs(work, a.size, a.seed, a.overlap)
    common = ["--chunk-size", str(a.chunk_size), "--halo", str(a.halo)]
    if a.model == "reference":
        common += ["-m", str(reference_bundle(work))]
    elif a.model == "null":
        common += ["-m", str(null_bundle(work))]
    if a.no_vectors:
        common.append("--no-vectors")
    env = {k: "" for k in _PROXY} | {"NO_PROXY": "127.0.0.1,localhost",
                                     "no_proxy": "127.0.0.1,localhost"}
    srv = RangeServer(ins["www"]).start()
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cfgs}
    outs = work / "out"
    try:
        run_one("a", outs / "warmup", ins, srv, common, env)  # page cache, .pyc, model files
        for rep in range(a.repeat):
            order = cfgs[rep % len(cfgs):] + cfgs[:rep % len(cfgs)]
            for cfg in order:
                res = run_one(cfg, outs / f"{cfg}{rep}", ins, srv, common, env)
                runs[cfg].append(res)
                print(f"  rep {rep} {cfg} {CONFIGS[cfg]:<30} {res['wall_s']:6.1f} s  "
                      f"{res['mpx_s']:.3f} Mpx/s  PSS {res['peak_pss_gb']:.2f} GB  "
                      f"served {res['served_bytes'] / 1e6:.1f} MB  load {res['load1']:.1f}",
                      flush=True)
    finally:
        srv.shutdown()
        srv.server_close()
    # equality with (a), every repetition of every other configuration
    ref = outs / "a0"
    for cfg in cfgs:
        for rep, r in enumerate(runs[cfg]):
            r["equal"] = compare(ref, outs / f"{cfg}{rep}")
    total = time.perf_counter() - t_start

    size_of = {"a": ins["cog_bytes"], "b": ins["cog_bytes"], "c": ins["sets"][4]["bytes"],
               "d": ins["sets"][16]["bytes"], "e": ins["sets"][4]["bytes"],
               "f": ins["sets"][16]["bytes"]}
    r0 = runs["a"][0]
    print(f"\nscene {a.size}² (geoseg sample --seed {a.seed}), COG 512-px tiles + overviews "
          f"({ins['cog_bytes'] / 1e6:.1f} MB); tiles overlap {a.overlap} px; model "
          f"{a.model} ({', '.join(f'{k}: {v}' for k, v in r0['summary']['engines'].items())}); "
          f"chunk {a.chunk_size}, halo {a.halo}; vectors {'off' if a.no_vectors else 'on'}; "
          f"--executor local, {r0['summary']['runtime']['threads_per_worker']} threads; "
          f"{psutil.cpu_count()} cores; {a.repeat} interleaved reps (medians); "
          f"load avg (1 min) during runs {min(r['load1'] for rs in runs.values() for r in rs):.1f}"
          f"–{max(r['load1'] for rs in runs.values() for r in rs):.1f}; "
          f"benchmark took {total / 60:.1f} min")
    hdr = (f"{'run':<32} {'Mpx/s':>6} {'wall s':>7} {'range':>11} {'CPU s':>6} {'srv CPU':>7} "
           f"{'PSS GB':>6} {'served MB':>9} {'× files':>7} {'reqs':>5} {'equal %':>8}")
    print(hdr)
    print("-" * len(hdr))
    for cfg in cfgs:
        rs = runs[cfg]
        walls = [r["wall_s"] for r in rs]
        served = _med(rs, "served_bytes")
        eq = min(min(r["equal"].values()) for r in rs)
        print(f"{cfg} {CONFIGS[cfg]:<30} {_med(rs, 'mpx_s'):>6.3f} {_med(rs, 'wall_s'):>7.1f} "
              f"{min(walls):>5.1f}–{max(walls):<5.1f} {_med(rs, 'cpu_s'):>6.1f} "
              f"{_med(rs, 'bench_cpu_s'):>7.1f} {max(r['peak_pss_gb'] for r in rs):>6.2f} "
              f"{served / 1e6:>9.1f} {served / size_of[cfg]:>7.2f} "
              f"{_med(rs, 'requests'):>5.0f} {100 * eq:>8.3f}")
    print("(Mpx/s, wall, CPU s (the run's process tree), srv CPU (this process: HTTP server + "
          "PSS sampler), served, reqs: medians; range: min–max wall; PSS: max over reps; "
          "× files: bytes served / size of the files read; equal %: the worst array of the "
          "worst rep vs. a0)")

    def ratio(x: str, y: str, key: str = "mpx_s") -> float:
        return _med(runs[x], key) / _med(runs[y], key)

    def best(x: str, y: str) -> float:  # best-of-reps ratio: less sensitive to others' load
        return min(r["wall_s"] for r in runs[y]) / min(r["wall_s"] for r in runs[x])

    print("\nthroughput ratios: median wall [best-of-reps wall] {CPU-s of the tree, y / x: "
          "less sensitive to others' load}")
    print(f"  {'':<44} {'value':>5} {'[best]':>7} {'{CPU}':>7}  target")
    checks = [("b", "a", "HTTP / local throughput (1 item)", 0.90),
              ("c", "a", "4-item / 1-item throughput (local)", 0.85),
              ("d", "a", "16-item / 1-item throughput (local)", None),
              ("e", "c", "4-item HTTP / 4-item local throughput", 0.90),
              ("e", "a", "4-item HTTP / 1-item local throughput", None),
              ("f", "d", "16-item HTTP / 16-item local throughput", 0.90)]
    for x, y, name, target in checks:
        if x in runs and y in runs:
            v = ratio(x, y)
            mark = "" if target is None else (f"≥ {target:.2f} " +
                                              ("ok" if v >= target else "MISSED"))
            cpu = ratio(y, x, "cpu_s")
            print(f"  {name:<44} {v:5.3f} [{best(x, y):5.3f}] {{{cpu:5.3f}}}  {mark}")
    for x in ("c", "d", "f"):
        if x in runs:
            n = 4 if x == "c" else 16
            v = _med(runs[x], "peak_pss_gb") / _med(runs["a"], "peak_pss_gb")
            name = f"peak PSS {n}-item{' HTTP' if x == 'f' else ''} / 1-item (local)"
            print(f"  {name:<44} {v:5.3f}                  flat: ≤ 1.10 "
                  f"{'ok' if v <= 1.10 else 'MISSED'}")
    worst = min(min(min(r["equal"].values()) for r in runs[c]) for c in cfgs)
    print(f"  {'outputs equal to (a), worst array of any run':<44} {100 * worst:7.3f} %"
          "             ≥ 99.9 % "
          f"{'ok' if worst >= 0.999 else 'MISSED'}")

    print("\nwhere the time goes (medians, s): read = Σ chunk reads (CPU-ish, summed over "
          "threads), predict = Σ model, write = Σ Zarr writes; setup = plan/manifest/store "
          "(incl. opening the items); chunks/exports/total = run_job wall; start+exit = wall − "
          "total")
    print(f"  {'run':<32} {'read':>6} {'predict':>8} {'write':>6} {'setup':>6} {'chunks':>7} "
          f"{'exports':>7} {'total':>6} {'start+exit':>10}")
    for cfg in cfgs:
        rs = runs[cfg]
        pred = statistics.median(sum(v for k, v in r["summary"]["stage_cpu_s"].items()
                                     if k.startswith("predict")) for r in rs)
        tot = _stage(rs, "timings_s", "total_s")
        print(f"  {cfg} {CONFIGS[cfg]:<30} {_stage(rs, 'stage_cpu_s', 'read_s'):>6.2f} "
              f"{pred:>8.2f} {_stage(rs, 'stage_cpu_s', 'write_s'):>6.2f} "
              f"{_stage(rs, 'timings_s', 'setup_s'):>6.2f} "
              f"{_stage(rs, 'timings_s', 'chunks_s'):>7.2f} "
              f"{_stage(rs, 'timings_s', 'exports_s'):>7.2f} {tot:>6.2f} "
              f"{_med(rs, 'wall_s') - tot:>10.2f}")
    print("\ncommands (rep 0):")
    for cfg in cfgs:
        print(f"  {cfg}: {runs[cfg][0]['cmd']}")
    (work / "results_sources.json").write_text(json.dumps(
        {"args": vars(a), "runs": runs}, indent=1, default=str))
    print(f"\nall runs: {work / 'results_sources.json'}")


if __name__ == "__main__":
    main()
