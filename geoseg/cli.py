"""The ``geoseg`` command: parse, validate, call the library, print a short summary.

Errors a user can cause print as one line on stderr with a non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from geoseg.errors import ConfigError, GeoSegError, GeoSegWarning


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class _ProgressView:
    """rich progress bar: chunks done, Mpx/s, km²/h, ETA."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not sys.stdout.isatty()
        self.bar: Any = None
        self.task: Any = None
        self.last_line = 0.0

    def __call__(self, p: Any) -> None:
        text = (f"{p.done}/{p.total} chunks  {p.px_per_s / 1e6:.2f} Mpx/s  "
                f"{p.km2_per_h:.1f} km²/h  ETA {_fmt_eta(p.eta_s)}"
                + (f"  [red]{p.failed} failed[/red]" if p.failed else ""))
        if self.quiet:  # logs / CI: a plain line at most every 5 s and at the end
            now = time.monotonic()
            if now - self.last_line > 5 or p.done == p.total:
                print(f"progress: {text}".replace("[red]", "").replace("[/red]", ""), flush=True)
                self.last_line = now
            return
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("predict"), BarColumn(),
                                TextColumn("{task.description}"))
            self.bar.start()
            self.task = self.bar.add_task(text, total=p.total)
        self.bar.update(self.task, completed=p.done, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", dest="models",
                   help="model bundle dir or built-in name (repeatable; default: landcover and "
                        "buildings)")
    p.add_argument("--bbox", help="region minx,miny,maxx,maxy (needs --bbox-crs)")
    p.add_argument("--bbox-crs", "--region-crs", dest="region_crs",
                   help="CRS of --bbox / --wkt (e.g. EPSG:4326)")
    p.add_argument("--region", help="region as a vector file (GeoJSON, GeoPackage, ...)")
    p.add_argument("--wkt", help="region as WKT (needs --region-crs)")
    p.add_argument("--config", help="job YAML (configs/); flags override it")
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--halo", type=int)
    p.add_argument("--tile-size", type=int)
    p.add_argument("--engine", choices=["auto", "torch", "onnx"],
                   help="inference engine: torch (safetensors weights), onnx (the bundle's ONNX "
                        "graph, onnxruntime) or auto (default: onnx on CPUs when the bundle has a "
                        "graph, else torch)")
    p.add_argument("--tta", choices=["none", "flips", "d4"],
                   help="test-time augmentation: average the probabilities of 4 flipped (flips) "
                        "or 8 flipped/rotated (d4) views before blending (default: none; costs "
                        "4x / 8x the model time)")
    p.add_argument("--workers", type=int, help="model workers (default: one per GPU, else 1)")
    p.add_argument("--threads", type=int, help="torch threads per worker")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS; none: this "
                                     "machine)")
    p.add_argument("--executor", choices=["auto", "local", "ray"],
                   help="where chunks run: local (threads of this process), ray (a local or "
                        "remote Ray) or auto (ray when an address is given, else local; "
                        "default)")
    p.add_argument("--no-vectors", action="store_true", help="skip the GeoPackage")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.add_argument("--resume", action="store_true", help="continue a previous run in --out")


def _job_config(a: argparse.Namespace, image: str, output: str) -> Any:
    from geoseg.config import load_job_config, validate_job

    data: dict[str, Any] = {}
    if a.config:
        data = load_job_config(a.config, image=image, output=output).model_dump()
    data.update({"image": image, "output": output})
    if a.models:
        data["models"] = a.models
    region: dict[str, Any] | None = None
    if a.bbox:
        try:
            region = {"bbox": [float(v) for v in a.bbox.split(",")], "crs": a.region_crs}
        except ValueError:
            raise GeoSegError(f"bad --bbox {a.bbox!r}: give minx,miny,maxx,maxy") from None
        if len(region["bbox"]) != 4:
            raise GeoSegError(f"bad --bbox {a.bbox!r}: give exactly 4 numbers")
    elif a.region:
        region = {"file": a.region, "crs": a.region_crs}
    elif a.wkt:
        region = {"wkt": a.wkt, "crs": a.region_crs}
    if region is not None:
        data["region"] = region
    inf = dict(data.get("inference") or {})
    for k, v in (("chunk_size", a.chunk_size), ("halo", a.halo), ("tile_size", a.tile_size),
                 ("engine", a.engine), ("tta", getattr(a, "tta", None))):
        if v is not None:
            inf[k] = v
    data["inference"] = inf
    rt = dict(data.get("runtime") or {})
    for k, v in (("workers", a.workers), ("threads_per_worker", a.threads),
                 ("device", a.device), ("address", a.address),
                 ("executor", getattr(a, "executor", None))):
        if v is not None:
            rt[k] = v
    data["runtime"] = rt
    if a.no_vectors:
        data["vectors"] = {**(data.get("vectors") or {}), "enabled": False}
    return validate_job(data, source="arguments")


def _print_summary(res: Any) -> None:
    con = _console()
    s = res.summary
    thr = s["throughput"]
    status = "[green]complete[/green]" if res.ok else f"[red]{s['status']}[/red]"
    con.print(f"geoseg run {status}: {s['grid']['shape'][1]}×{s['grid']['shape'][0]} px "
              f"({s['grid']['crs']}), {s['chunks']['total']} chunks "
              f"({s['chunks']['computed_this_run']} computed) in {s['timings_s']['total_s']:.1f} s"
              + (f", {thr['px_per_s_end_to_end'] / 1e6:.2f} Mpx/s end to end"
                 if thr["px_per_s_end_to_end"] else ""))
    for name, n in s["features"].items():
        con.print(f"  {name}: {n} features")
    for k, v in s["outputs"].items():
        con.print(f"  {k:<16} {v}")
    con.print(f"  {'summary':<16} {res.output / 'summary.json'}")
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

    cfg = _job_config(a, a.image, a.out)
    view = _ProgressView(a.quiet)
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

    root = Path(a.out)
    scene = root / "scene"
    if not (scene / "scene.json").exists():
        print(f"generating the demo scene ({a.size}² px, seed 0) in {scene} ...", flush=True)
        generate_scene(scene, size=a.size, seed=0, overwrite=True)
    ns = argparse.Namespace(**{**vars(a), "image": str(scene / "image_t0.tif"),
                               "out": str(root / "run"), "overwrite": not a.resume,
                               "resume": a.resume})
    with warnings.catch_warnings():  # the generated scene has no nodata, by design
        warnings.filterwarnings("ignore", message=".*declares no nodata value.*")
        rc = cmd_run(ns)
    if rc == 0 and not a.no_eval:
        from geoseg.evaluate import evaluate_run

        report = evaluate_run(root / "run", scene, date="t0")
        (root / "run" / "evaluation.json").write_text(json.dumps(report, indent=2))
        print("  evaluation vs. ground truth: " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["headline"].items()))
    return rc


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where the parser sets one (options left to the job config,
    whose argparse default is None, say theirs in their help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: ``--help`` shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from geoseg import __version__

    p = argparse.ArgumentParser(
        prog="geoseg", description="Segment huge georeferenced images into maps: land cover "
        "and building footprints as georeferenced Zarr, COG and GeoPackage, change between "
        "dates, training and evaluation; on this machine or a Ray cluster.")
    p.add_argument("--version", action="version", version=f"geoseg {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_CommandParser)

    r = sub.add_parser("run", help="segment a region of an image into Zarr + GeoPackage")
    r.add_argument("image")
    r.add_argument("--out", "-o", required=True, help="output directory")
    _add_run_args(r)
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("sample", help="generate a synthetic two-date scene with ground truth")
    s.add_argument("out")
    s.add_argument("--size", type=int, default=4096)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nodata-collar", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_sample)

    d = sub.add_parser("demo", help="generate the demo scene and run the whole pipeline on it")
    d.add_argument("--out", "-o", default="demo")
    d.add_argument("--size", type=int, default=4096)
    d.add_argument("--no-eval", action="store_true")
    _add_run_args(d)
    d.set_defaults(fn=cmd_demo)

    from geoseg.cli_change import add_change_command
    from geoseg.cli_cluster import add_cluster_commands
    from geoseg.cli_extra import add_extra_commands

    add_extra_commands(sub)
    add_change_command(sub)
    add_cluster_commands(sub)
    return p


# options whose value may start with "-" (a bbox west of Greenwich or south of the equator)
_NEGATIVE_VALUE_OPTIONS = ("--bbox",)


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -101.2,41.4,...`` → ``--bbox=-101.2,41.4,...`` (argparse would take the value for
    an option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in _NEGATIVE_VALUE_OPTIONS and nxt is not None and nxt.startswith("-") \
                and len(nxt) > 1 and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _stop_ray() -> None:
    """Shut down the Ray this process started or joined (workers and actors go with it)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_join_negative_values(raw))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default", GeoSegWarning)
    warnings.showwarning = lambda m, c, *_a, **_k: print(f"warning: {m}", file=sys.stderr)
    from geoseg.runtime.signals import StopOnSignals, exit_code

    # SIGTERM (Kubernetes, systemd, timeout, `ray job stop`) stops a job as Ctrl-C does
    with StopOnSignals():
        return _dispatch(args, exit_code)


def _dispatch(args: argparse.Namespace, exit_code: Callable[[BaseException], int]) -> int:
    """Run the sub-command; user errors and interruptions become one line and an exit code."""
    try:
        return int(args.fn(args))
    except KeyboardInterrupt as exc:  # JobInterrupted too
        _stop_ray()
        print("interrupted: finished chunks are kept; rerun with --resume to continue",
              file=sys.stderr)
        return exit_code(exc)
    except GeoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:  # settings passed on the command line, checked by pydantic
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or exc.title
        print(f"error: invalid {where}: {first['msg']} (got {first.get('input')!r})",
              file=sys.stderr)
        return ConfigError.exit_code

if __name__ == "__main__":
    sys.exit(main())
