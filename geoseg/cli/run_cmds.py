"""``geoseg run``, ``geoseg demo`` and ``geoseg sample``: segment an image (or the demo
scene) into Zarr + COG + GeoPackage, with a progress bar and a short summary."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

from geoseg.cli.progress import ProgressLine, fmt_duration
from geoseg.errors import ConfigError, GeoSegError
from geoseg.layout import RunLayout


def add_width_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--workers`` and ``--threads``: how many model workers, and their threads."""
    p.add_argument("--workers", type=int,
                   help="model workers (default: one per GPU, else one per node of a Ray "
                   "cluster, 1 locally)")
    p.add_argument("--threads", type=int,
                   help="intra-op threads per model worker (default: the cores of its host or "
                   "node, shared among the workers there)")


SOURCE_ARGS = ("bands", "crs", "resolution", "mosaic", "nodata")  # config.SourceConfig's


def add_source_args(m: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How the input images become the one image a job reads (:data:`SOURCE_ARGS`)."""
    m.add_argument("--bands", type=lambda t: tuple(b.strip() for b in t.split(",") if b.strip()),
                   help="bands to read, by name (STAC common names or band descriptions: "
                        "red,green,blue,nir) or 1-based number (default: all bands)")
    m.add_argument("--crs", help="output CRS (default: the most common CRS of the images)")
    m.add_argument("--resolution", type=float,
                   help="output pixel size in CRS units (default: the first image's)")
    m.add_argument("--mosaic", choices=["first", "latest", "least-nodata"],
                   help="where images overlap: the first listed, the latest acquired, or the "
                        "one with the least nodata wins (per pixel, nodata-aware; default first)")
    m.add_argument("--nodata", type=float,
                   help="a value that is nodata in every image (for images that declare none)")


def _halo(text: str) -> int | str:
    """``--halo`` and ``--tile-size``: a whole number of pixels or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels or auto") from None


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", dest="models",
                   help="model bundle dir or built-in name (repeatable; default: landcover and "
                        "buildings)")
    p.add_argument("--bbox", help="region minx,miny,maxx,maxy (needs --bbox-crs)")
    p.add_argument("--bbox-crs", "--region-crs", dest="region_crs",
                   help="CRS of --bbox / --wkt (e.g. EPSG:4326)")
    p.add_argument("--region", help="region as a vector file (GeoJSON, GeoPackage, ...)")
    p.add_argument("--wkt", help="region as WKT (needs --region-crs)")
    p.add_argument("--config", help="job YAML (configs/); flags override it")
    p.add_argument("--chunk-size", type=int,
                   help="output chunk (unit of work and Zarr chunk), px (default 1024)")
    p.add_argument("--halo", type=_halo,
                   help="context read around each chunk, px, or auto (default: the largest "
                        "halo the bundles measured with geoseg export --halo-check, 64 for a "
                        "bundle without one)")
    p.add_argument("--tile-size", type=_halo,
                   help="model input tile, px, a multiple of 32, or auto (default auto: one pass "
                        "per chunk when chunk + halo fits 1536 px, else the bundle's tile size)")
    p.add_argument("--engine", choices=["auto", "torch", "torch-bf16", "onnx"],
                   help="inference engine: torch (safetensors weights, float32 on CPUs), "
                        "torch-bf16 (bfloat16 autocast: fast on CPUs with AMX or AVX512-BF16), "
                        "onnx (the bundle's ONNX graph, onnxruntime) or auto (default: "
                        "torch-bf16 on such CPUs for checked bundles and regions from 32 Mpx, "
                        "else onnx on CPUs when the bundle has a graph, else torch)")
    p.add_argument("--tta", choices=["none", "flips", "d4"],
                   help="test-time augmentation: average the probabilities of 4 flipped (flips) "
                        "or 8 flipped/rotated (d4) views before blending (default: none; costs "
                        "4x / 8x the model time)")
    add_width_args(p)
    p.add_argument("--passes-at-once", type=int, metavar="N",
                   help="model passes at once per model worker. CPUs (onnxruntime): each "
                        "with threads/N threads (default 1; N = cores ran 10%% faster on 2 "
                        "cores and holds N passes' memory). GPU: chunks in flight per worker, "
                        "each on its own CUDA stream (default 2)")
    p.add_argument("--vector-processes", type=int, metavar="N",
                   help="local executor: vectorize in N worker processes (0: threads). "
                        "Default: processes for building footprints and beside a GPU, from "
                        "2048x2048 pixels on; threads otherwise")
    p.add_argument("--chunk-processes", type=int, metavar="N",
                   help="local executor: read, predict and write the chunks in N worker "
                        "processes (strips of chunk columns, each with its own model and "
                        "threads/N threads) instead of the job's process. For hosts where "
                        "one process's threads cannot keep up (a GPU); default: 0")
    p.add_argument("--gpkg-process", action=argparse.BooleanOptionalAction, default=None,
                   help="write the GeoPackage (seam merges, WKB, GDAL) in a process of its "
                        "own, off the interpreter lock the model's caller needs (default: "
                        "beside a GPU from 4096x4096 pixels on; a thread on CPUs)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where models run (default auto: CUDA when available)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS; none: this "
                                     "machine)")
    p.add_argument("--executor", choices=["auto", "local", "ray"],
                   help="where chunks run: local (threads of this process), ray (a local or "
                        "remote Ray) or auto (ray when an address is given, else local; "
                        "default)")
    p.add_argument("--no-vectors", action="store_true", help="skip the GeoPackage")
    p.add_argument("--min-building-area", type=float, metavar="M2",
                   help="drop footprints smaller than this, m² of ground, measured before they are "
                        "squared up (default 20)")
    p.add_argument("--split-confidence", type=float, metavar="P",
                   help="building probability from which interior pixels seed a footprint of "
                        "their own, 0..1 (separates touching buildings; 0 = off; default 0.8)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.add_argument("--resume", action="store_true", help="continue a previous run in --out")


def job_config(a: argparse.Namespace, image: str | list[str] | None, output: str | None) -> Any:
    """The JobConfig of ``geoseg run``'s flags (``--config`` first, then every flag given)."""
    from geoseg.config import make_job_config

    return make_job_config(image, output, a.config, "", _flag, models=a.models,
                           region=_region(a),
                           chunk_size=a.chunk_size, halo=a.halo, tile_size=a.tile_size,
                           engine=a.engine, tta=a.tta, workers=a.workers, threads=a.threads,
                           passes_at_once=getattr(a, "passes_at_once", None),
                           vector_processes=getattr(a, "vector_processes", None),
                           gpkg_process=getattr(a, "gpkg_process", None),
                           chunk_processes=getattr(a, "chunk_processes", None),
                           device=a.device, address=a.address, executor=a.executor,
                           vectors=False if a.no_vectors else None,
                           min_building_area=getattr(a, "min_building_area", None),
                           split_confidence=getattr(a, "split_confidence", None),
                           bands=getattr(a, "bands", None), crs=getattr(a, "crs", None),
                           resolution=getattr(a, "resolution", None),
                           mosaic=getattr(a, "mosaic", None), nodata=getattr(a, "nodata", None))


def _flag(override: str) -> str:
    """How ``geoseg run`` spells the flag of an override (see config.OVERRIDES)."""
    return {"models": "--model", "vectors": "--no-vectors", "region": "--region",
            "output": "--out", "image": "IMAGE"}.get(override, "--" + override.replace("_", "-"))


def _region(a: argparse.Namespace) -> dict[str, Any] | None:
    if a.bbox:
        try:
            bbox = [float(v) for v in a.bbox.split(",")]
        except ValueError:
            raise GeoSegError(f"bad --bbox {a.bbox!r}: give minx,miny,maxx,maxy") from None
        if len(bbox) != 4:
            raise GeoSegError(f"bad --bbox {a.bbox!r}: give exactly 4 numbers")
        if not a.region_crs:
            raise ConfigError("--bbox needs --bbox-crs, the CRS of its numbers (e.g. "
                              "--bbox-crs EPSG:4326 for longitudes and latitudes)")
        return {"bbox": bbox, "crs": a.region_crs}
    if a.region:
        return {"file": a.region, "crs": a.region_crs}
    if a.wkt:
        if not a.region_crs:
            raise ConfigError("--wkt needs --region-crs, the CRS of its coordinates (e.g. "
                              "--region-crs EPSG:4326 for longitudes and latitudes)")
        return {"wkt": a.wkt, "crs": a.region_crs}
    return None


class RunProgress:
    """Chunks done, Mpx/s, km²/h and ETA of a running job (a :class:`ProgressLine`)."""

    def __init__(self, quiet: bool, every_s: float = 5.0) -> None:
        self.line = ProgressLine("predict", 1, quiet=quiet, every_s=every_s)

    def __call__(self, p: Any) -> None:
        # the bar covers the model's chunks and then the vectors (which trail the model on CPUs)
        vectors = f"  vectors {p.vectors_done}/{p.vectors_total}" if p.vectors_total else ""
        text = (f"{p.done}/{p.total} chunks{vectors}  {p.px_per_s / 1e6:.2f} Mpx/s  "
                f"{p.km2_per_h:.1f} km²/h  ETA {fmt_duration(p.eta_s)}"
                + (f"  [red]{p.failed} failed[/red]" if p.failed else ""))
        self.line.update(p.done + p.vectors_done, text, total=p.total + p.vectors_total)

    def close(self) -> None:
        self.line.close()


def _print_summary(res: Any) -> None:
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)  # the results, on stdout, lines unbroken
    s = res.summary
    thr = s["throughput"]
    status = "[green]complete[/green]" if res.ok else f"[red]{s['status']}[/red]"
    con.print(f"geoseg run {status}: {s['grid']['shape'][1]}×{s['grid']['shape'][0]} px "
              f"({s['grid']['crs']}), {s['chunks']['total']} chunks "
              f"({s['chunks']['computed_this_run']} computed) in {s['timings_s']['total_s']:.1f} s"
              + (f", {thr['px_per_s_end_to_end'] / 1e6:.2f} Mpx/s end to end"
                 if thr["px_per_s_end_to_end"] else ""))
    engines = s.get("engines") or {}
    if s.get("models"):  # which engine auto picked (bf16 classes may differ in a few pixels)
        con.print("  models: " + ", ".join(f"{model} ({engines.get(layer, '?')})"
                                           for layer, model in s["models"].items()))
    tiling = s.get("tiling") or {}
    if tiling:  # the halo auto picked (what the bundles measured) and the passes it makes
        con.print(f"  tiling: {tiling['chunk']}-px chunks + {tiling['halo']}-px halo, "
                  f"{tiling['tile']}-px model tiles")
    for name, n in s["features"].items():
        con.print(f"  {name}: {n} features")
    for k, v in s["outputs"].items():
        con.print(f"  {k:<16} {v}")
    con.print(f"  {'summary':<16} {res.summary_path}")
    for f in s["chunks"]["failed"]:
        con.print(f"  [red]failed chunk {f['chunk_id']} window {f['window']}: {f['error']}[/red]")
    if not res.ok:
        fatal = [f for f in res.failed if not f.retryable]
        if fatal:
            con.print(f"  {len(fatal)} chunk(s) failed on an error a rerun cannot fix: fix the "
                      "input or model named above, then rerun with --resume")
        else:
            con.print("  rerun with --resume to retry the failed chunks")


def cmd_run(a: argparse.Namespace) -> int:
    from geoseg.job import run_job

    if not a.config and not (a.image and a.out):
        from geoseg.errors import ConfigError

        raise ConfigError("geoseg run needs the image and -o OUT, or a --config whose image: "
                          "and output: give them (flags override the file)")
    cfg = job_config(a, a.image or None, a.out)
    view = RunProgress(a.quiet)
    try:
        res = run_job(cfg, overwrite=a.overwrite, resume=a.resume, progress=view)
    finally:
        view.close()
    _print_summary(res)
    return 0 if res.ok else 3


def cmd_sample(a: argparse.Namespace) -> int:
    from geoseg.sample import generate_scene

    size = a.size
    t0 = time.perf_counter()
    files = generate_scene(a.out, size=size, seed=a.seed, nodata_collar=a.nodata_collar,
                           overwrite=a.overwrite)
    print(f"sample scene {size}² (seed {a.seed}) in {time.perf_counter() - t0:.1f} s: {files.root}")
    for k in ("image_t0", "image_t1", "landcover_t0", "buildings_t0", "changes"):
        print(f"  {k:<14} {getattr(files, k)}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Generate the demo scene (if missing) and run the whole pipeline on it."""
    from geoseg.sample import generate_scene
    from geoseg.sample.scene import is_scene

    root = Path(a.out)
    scene = root / "scene"
    # a finished scene that geoseg generated is reused; anything else is (re)generated, which
    # replaces only an unfinished scene of geoseg's and refuses files geoseg did not write
    if not is_scene(scene):
        print(f"generating the demo scene ({a.size}² px, seed 0) in {scene} ...", flush=True)
        generate_scene(scene, size=a.size, seed=0, overwrite=True)
    ns = argparse.Namespace(**{**vars(a), "image": str(scene / "image_t0.tif"),
                               "out": str(root / "run"), "overwrite": not a.resume,
                               "resume": a.resume})
    with warnings.catch_warnings():  # the generated scene has no nodata, by design
        warnings.filterwarnings("ignore", message=".*declares no nodata value.*")
        rc = cmd_run(ns)
    if rc == 0 and not a.no_eval:
        from geoseg.scoring import evaluate_run

        report = evaluate_run(root / "run", scene, date="t0")
        from geoseg.outdir import atomic_write_text

        atomic_write_text(RunLayout(root / "run").evaluation, json.dumps(report, indent=2))
        print("  evaluation vs. ground truth: " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["headline"].items()))
    return rc




def run_parser(sub: Any = None) -> argparse.ArgumentParser:
    """``geoseg run IMAGE -o OUT [flags]``: registered on ``sub``, or a parser of its own (for
    commands that run dates with run's defaults)."""
    r = (sub.add_parser("run", help="segment a region of an image into Zarr + GeoPackage")
         if sub is not None else argparse.ArgumentParser(prog="geoseg run"))
    r.add_argument("image", nargs="*",
                   help="the image: a GeoTIFF/COG or anything GDAL reads, a path or an "
                        "http(s)/s3/gs/az URL; several images, a quoted glob, a .txt list or a "
                        "STAC Item/ItemCollection/Catalog (.json) make one mosaic (optional with "
                        "a --config that names it)")
    r.add_argument("--out", "-o", help="output directory (optional with a --config that "
                                       "names it as output:)")
    add_run_args(r)
    add_source_args(r.add_argument_group("several images or STAC items (a mosaic)"))
    r.set_defaults(fn=cmd_run)
    if sub is None:  # a parser of its own has no global -q/-v; as a sub-command, a default
        r.set_defaults(quiet=False, verbose=0)  # here would undo `geoseg -q run`
    return r


def add_run_commands(sub: Any) -> None:
    """Register ``run``, ``sample`` and ``demo``."""
    run_parser(sub)

    s = sub.add_parser("sample", help="generate a synthetic two-date scene with ground truth")
    s.add_argument("out", help="scene directory to write")
    s.add_argument("--size", type=int, default=4096, help="scene width and height, px")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same scene)")
    s.add_argument("--nodata-collar", type=int, default=0,
                   help="width of a nodata border around the image, px")
    s.add_argument("--overwrite", action="store_true", help="replace an existing scene")
    s.set_defaults(fn=cmd_sample)

    d = sub.add_parser("demo", help="generate the demo scene and run the whole pipeline on it")
    d.add_argument("--out", "-o", default="demo", help="folder for the scene and the run")
    d.add_argument("--size", type=int, default=4096, help="demo scene size, px")
    d.add_argument("--no-eval", action="store_true",
                   help="skip scoring the run against the scene's truth")
    add_run_args(d)
    d.set_defaults(fn=cmd_demo)
