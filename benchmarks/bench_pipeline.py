"""geoseg end to end vs. model-only vs. a naive loop, with peak memory of each process tree.

    python -m benchmarks.bench_pipeline --size 4096                # throughput ratios
    python -m benchmarks.bench_pipeline --size 4096 --size 16384 \
        --only geoseg                                              # memory vs raster size
    python -m benchmarks.bench_pipeline --size 16384 --only naive  # vs the naive loop, big
    python -m benchmarks.bench_pipeline --model demo               # the shipped demo bundle
    python -m benchmarks.bench_pipeline --model null --only geoseg # the pipeline's own cost
    python -m benchmarks.bench_pipeline --model replay --only geoseg  # ... on a real map
    python -m benchmarks.bench_pipeline --engine torch-bf16        # geoseg rows in bf16
    python -m benchmarks.bench_pipeline --rv-python /tmp/rvenv/bin/python  # + Raster Vision

Every figure in one table comes from one run of this script on one machine; compare ratios, not
absolute numbers (these machines vary ±12% run to run). Memory is the peak PSS summed over the
whole process tree (driver, raylet, Ray workers), sampled every 0.2 s.
"Where the time goes" prints each stage's seconds (wall time inside the stage's own thread, so
contention counts) and the CPU-s per Mpx of each thread role, from /proc
(benchmarks/thread_cpu.py runs the geoseg rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from geoseg.stageclock import PARTS

ROOT = Path(__file__).resolve().parents[1]


def _role(p: psutil.Process) -> str:
    """What a process of the tree is: driver, a Ray service, or a Ray worker by its title."""
    cmd = p.cmdline()
    title = cmd[0] if cmd else p.name()
    if title.startswith("ray::"):
        return title.split()[0]
    for service in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env",
                    "monitor", "agent"):
        if any(service in c for c in cmd[:3]):
            return service
    if any("multiprocessing.spawn" in c for c in cmd[:4]):
        return "vector worker"  # the local executor's (geoseg/runtime/vector_procs.py)
    if any("multiprocessing.resource_tracker" in c for c in cmd[:4]):
        return "resource tracker"
    if any("forkserver" in c for c in cmd[:4]):  # geoseg's fork server, or a worker it forked
        parent = p.parent()
        forked = parent is not None and any("forkserver" in c for c in parent.cmdline()[:4])
        return "forked worker (vectors, chunks, writer)" if forked else "fork server"
    return ("driver" if any("geoseg" in c or "thread_cpu" in c for c in cmd[:4])
            else p.name())


def tree_pss(proc: psutil.Process, roles: dict[int, tuple[str, int]] | None = None) -> int:
    """Summed PSS of ``proc`` and its descendants; per-process peaks go to ``roles``."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            mi = p.memory_full_info()
            pss = getattr(mi, "pss", mi.rss)
            total += pss
            if roles is not None:
                role, peak = roles.get(p.pid, ("", 0))
                new = _role(p)
                roles[p.pid] = (new if new.startswith("ray::") or not role else role,
                                max(peak, pss))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def by_role(roles: dict[int, tuple[str, int]]) -> dict[str, float]:
    """Sum over processes of each role of their peak PSS, GB (peaks need not coincide)."""
    out: dict[str, float] = {}
    for role, peak in roles.values():
        out[role] = out.get(role, 0.0) + peak / 2**30
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, peak tree PSS and the last JSON line it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child's CPU once it exits
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak = 0
    roles: dict[int, tuple[str, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, tree_pss(ps, roles))
            except psutil.NoSuchProcess:
                return
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    last = {}
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            last = json.loads(line)
            break
    return {"wall_s": wall, "cpu_s": cpu, "peak_pss_gb": peak / 2**30,
            "peak_by_role_gb": by_role(roles), **last}


def reference_bundle(root: Path, onnx: bool = True) -> Path:
    """The peers' benchmark model: smp U-Net ResNet-18 (default decoder), 5 classes, random
    weights, 3 bands (``onnx``: with its ONNX graph, which CPUs run; a GPU runs PyTorch)."""
    import torch

    from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization
    from geoseg.models import build_model, save_bundle

    names = ("bare", "building", "road", "vegetation", "water")
    colors = ("#c8b48c", "#d7301f", "#636363", "#31a354", "#3182bd")
    spec = BundleSpec(name="ref-unet-r18", version="0", task="landcover",
                      architecture=ArchitectureSpec(name="unet", encoder="resnet18"),
                      bands=(1, 2, 3), normalization=Normalization(mean=(110.0,) * 3,
                                                                   std=(50.0,) * 3),
                      classes=tuple(ClassSpec(id=i, name=n, color=c)
                                    for i, (n, c) in enumerate(zip(names, colors, strict=True))),
                      tile_size=512, pixel_size=0.5)
    torch.manual_seed(0)
    out = root / "ref-bundle"
    if not (out / "bundle.yaml").exists():
        save_bundle(build_model(spec), spec, out, dtype="float32")
    if onnx and not (out / "model.onnx").exists():
        from geoseg.models.onnx import export_onnx

        export_onnx(out)  # `geoseg export BUNDLE --onnx`: engine auto runs it on CPUs
    return out


def _onnx_only_bundle(out: Path, module: Any, name: str, mean: float, std: float) -> Path:
    """``module`` (3 bands → 5 land-cover logits) exported as an ONNX-only bundle at ``out``."""
    import torch
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), (torch.zeros(1, 3, 64, 64),), str(out / "model.onnx"),
                      input_names=["x"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"},
                                    "logits": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    names = ("bare", "building", "road", "vegetation", "water")
    (out / "bundle.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "0", "task": "landcover",
        "architecture": {"name": "unet"}, "bands": [1, 2, 3],
        "normalization": {"mean": [mean] * 3, "std": [std] * 3},
        "classes": [{"id": i, "name": n, "color": "#808080"} for i, n in enumerate(names)],
        "tile_size": 512, "onnx": "model.onnx"}, sort_keys=False))
    return out


def null_bundle(root: Path) -> Path:
    """A near-free model (one 1×1 convolution, 3 bands → 5 classes) as an ONNX-only bundle:
    runs the whole pipeline with the model taken out, to measure the pipeline's own cost."""
    import torch

    out = root / "null-bundle"
    if (out / "model.onnx").exists():
        return out
    torch.manual_seed(0)
    return _onnx_only_bundle(out, torch.nn.Conv2d(3, 5, 1), "null-1x1", 110.0, 50.0)


def replay_bundle(root: Path) -> Path:
    """A near-free model that predicts the class id written in band 1 (logit of class k:
    ``-(band1 - k)²``): with :func:`replay_scene` it outputs the demo scene's land-cover truth,
    so the pipeline's own cost is measured on a real map's polygons (the null model's pixel
    noise makes ~25x as many)."""
    import torch

    out = root / "replay-bundle"
    if (out / "model.onnx").exists():
        return out

    class Replay(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids = torch.arange(5, dtype=x.dtype).view(1, 5, 1, 1)
            return -((x[:, :1] - ids) ** 2)

    return _onnx_only_bundle(out, Replay(), "replay-truth", 0.0, 1.0)


def replay_scene(size: int, root: Path) -> Path:
    """The demo scene's land-cover truth as band 1 of a 3-band image (bands 2-3 from the
    image), mosaicked to ``size`` like :func:`scene`: what :func:`replay_bundle` reads."""
    import rasterio

    base = root / "replay4096.tif"
    if not base.exists():
        img = scene(4096, root)
        with rasterio.open(img) as src, rasterio.open(img.parent / "landcover_t0.tif") as lc:
            classes = lc.read(1)
            if classes.max() > 4:
                raise SystemExit(f"{lc.name} has class ids above 4: not the demo's classes")
            prof = src.profile | {"count": 3}
            with rasterio.open(base, "w", **prof) as dst:
                dst.write(classes, 1)
                dst.write(src.read((2, 3)), (2, 3))
    if size == 4096:
        return base
    if size < 4096:
        return _crop(base, size, root / f"replay{size}.tif")
    return _mosaic(base, size, root / f"replay{size}.tif")


def scene(size: int, root: Path) -> Path:
    """The demo scene at ``size`` (4096² is generated; larger sizes mosaic it, which is enough
    for throughput and memory)."""
    base = root / "scene4096" / "image_t0.tif"
    if not base.exists():
        from geoseg.sample import generate_scene

        generate_scene(base.parent, size=4096, seed=0, overwrite=True)
    if size <= 4096:
        if size == 4096:
            return base
        return _crop(base, size, root / f"img{size}.tif")
    return _mosaic(base, size, root / f"img{size}.tif")


def _crop(src_path: Path, size: int, out: Path) -> Path:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        prof = src.profile | {"width": size, "height": size}
        with rasterio.open(out, "w", **prof) as dst:
            dst.write(src.read(window=Window(0, 0, size, size)))
    return out


def _mosaic(src_path: Path, size: int, out: Path) -> Path:
    import rasterio
    from rasterio.windows import Window

    if out.exists():
        return out
    with rasterio.open(src_path) as src:
        n = src.width
        prof = src.profile | {"width": size, "height": size, "BIGTIFF": "IF_SAFER",
                              "NUM_THREADS": "ALL_CPUS"}  # deflate on every core
        with rasterio.open(out, "w", **prof) as dst:
            for r in range(0, size, 1024):
                for c in range(0, size, 1024):
                    win = Window((c % n), (r % n), 1024, 1024)
                    dst.write(src.read(window=win), window=Window(c, r, 1024, 1024))
    return out


def _stage_profile(summary: dict[str, Any], wall: float, cpu: float,
                   threads: dict[str, float]) -> list[str]:
    """Seconds per Mpx of each stage from the run's summary (wall seconds inside the stage's
    own thread, so contention counts), the model stage split into its parts, the vector
    writer's two threads (seam merge, GeoPackage write) by their CPU when the writer is not a
    process of its own, and the cores' idle
    share of the run."""
    mpx = summary["throughput"]["pixels"] / 1e6
    st, t = dict(summary["stage_cpu_s"]), summary["timings_s"]
    rows: list[tuple[str, float]] = [("read", st.pop("read_s", 0.0))]
    part_cpu: dict[str, float] = {}  # the model thread's CPU-s in each part
    for model in summary["models"]:
        rows.append((f"predict {model}", st.pop(f"predict_{model}_s", 0.0)))
        for part in PARTS:
            rows.append((f"  {part}", st.pop(f"{part}_{model}_s", 0.0)))
            if f"{part}_{model}_cpu_s" in st:
                part_cpu[f"  {part} (model thread's CPU)"] = st.pop(f"{part}_{model}_cpu_s")
    forward_cpu = sum(v for k, v in part_cpu.items() if k.startswith("  forward"))
    rows += list(part_cpu.items())
    rows.append(("Zarr write", st.pop("write_s", 0.0)))
    rows += [(k.removesuffix("_s"), v) for k, v in sorted(st.items())]
    rows += [("vectorize tasks", t.get("vectorize_task_s", 0.0)),
             ("seam merge + GeoPackage (writer)", t.get("gpkg_append_s", 0.0))]
    if not summary.get("runtime", {}).get("gpkg_process"):  # (a process: in child processes)
        rows += [("  seam merge, record batches (CPU)", threads.get("geoseg-gpkg", 0.0)),
                 ("  GeoPackage write (CPU)", threads.get("geoseg-gpkg-write", 0.0))]
    rows += [("final merge wait", t.get("vector_merge_s", 0.0)),
             ("COG export", t.get("cog_s", 0.0)), ("quicklook", t.get("quicklook_s", 0.0)),
             ("plan, manifest, store (driver)", t.get("setup_s", 0.0)),
             ("model load", t.get("model_load_s", 0.0)),
             ("process start + exit (outside run_job)", wall - t["total_s"])]
    out = [f"    {name:<42} {v / mpx:>7.3f} s/Mpx" for name, v in rows]
    cores = os.cpu_count() or 1
    out.append(f"    {'whole run, CPU-s of the process tree':<42} {cpu / mpx:>7.3f} CPU-s/Mpx "
               f"({cpu:.1f} CPU-s over {wall:.1f} s wall)")
    if part_cpu:  # exact with the model on one thread (--threads 1); else its pool is native
        one = summary.get("runtime", {}).get("threads_per_worker") == 1
        out.append(f"    {'not the forward pass (whole run less it)':<42} "
                   f"{(cpu - forward_cpu) / mpx:>7.3f} CPU-s/Mpx (forward, model thread: "
                   f"{forward_cpu / mpx:.3f}" + (")" if one else "; the engine's own threads "
                                                 "are not in it: exact with --threads 1)"))
    out.append(f"    {'idle cores (cores x wall - CPU-s)':<42} "
               f"{max(cores * wall - cpu, 0.0) / mpx:>7.3f} core-s/Mpx "
               f"({max(1 - cpu / (cores * wall), 0.0):.0%} of {cores} cores' time)")
    return out


def _geoseg(img: str, out: Path, bundle: str, a: argparse.Namespace, vectors: bool,
            size: int, engine: str = "auto") -> dict[str, Any]:
    threads = out.with_name(f"{out.name}-thread-cpu.json")  # CPU-s by thread role
    cmd = [sys.executable, "-m", "benchmarks.thread_cpu", str(threads), "--",
           "-q", "run", img, "-o", str(out), "--overwrite",
           "-m", bundle, "--chunk-size", str(a.chunk_size), "--halo", str(a.halo),
           "--engine", engine, "--passes-at-once", str(a.passes_at_once)]
    if a.threads is not None:
        cmd += ["--threads", str(a.threads)]
    if a.chunk_processes:
        cmd += ["--chunk-processes", str(a.chunk_processes)]
    if not vectors:
        cmd.append("--no-vectors")
    res = measure(cmd)
    sampled = json.loads(threads.read_text())
    res["thread_cpu_s"], res["busy_cores"] = sampled["cpu_s"], sampled.get("busy_cores", [])
    summ = json.loads((out / "summary.json").read_text())
    res["px_per_s"] = size * size / res["wall_s"]
    res["summary"] = summ
    res["engine"] = next(iter(summ["engines"].values()))
    return res


def _class_agreement(run_a: Path, run_b: Path) -> float:
    """Share of pixels with the same class in two runs' stores (chunk by chunk)."""
    import zarr

    a = zarr.open_group(str(run_a / "predictions.zarr"), mode="r")
    b = zarr.open_group(str(run_b / "predictions.zarr"), mode="r")
    layer = next(k for k in a.array_keys() if k in ("landcover", "buildings"))
    xa, xb = a[layer], b[layer]
    assert isinstance(xa, zarr.Array) and isinstance(xb, zarr.Array)
    same = total = 0
    step = 2048
    for r in range(0, xa.shape[0], step):
        pa, pb = np.asarray(xa[r:r + step]), np.asarray(xb[r:r + step])
        same += int((pa == pb).sum())
        total += pa.size
    return same / total


def has_raster_vision(python: str) -> bool:
    """Whether ``python`` imports Raster Vision (an optional row: say so when it is skipped)."""
    probe = subprocess.run([python, "-c", "import rastervision.pytorch_learner"],
                           capture_output=True, cwd=ROOT, check=False)
    if probe.returncode != 0:
        print(f"Raster Vision row skipped: {python} has no rastervision (install it as "
              "benchmarks/rv_predict.py says, then pass --rv-python)", file=sys.stderr)
    return probe.returncode == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--model", choices=["reference", "demo", "null", "replay"],
                   default="reference",
                   help="reference: U-Net R18 (torch weights + ONNX graph); demo: the shipped "
                        "land-cover bundle; null: a 1x1 convolution (the pipeline's own cost); "
                        "replay: a near-free model that outputs the demo scene's land-cover "
                        "truth (the pipeline's own cost on a real map's polygons)")
    p.add_argument("--only", choices=["all", "naive", "geoseg"], default="all",
                   help="all rows; naive: the naive loop and geoseg (big sizes); geoseg alone")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--halo", default="auto",
                   help="px, or auto: the bundle's measured halo (64 px for one without)")
    p.add_argument("--vectors", choices=["on", "off", "both"], default="both")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "geoseg-bench"))
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "torch-bf16", "onnx"],
                   help="engine of the geoseg rows (auto: what geoseg run picks)")
    p.add_argument("--passes-at-once", type=int, default=1,
                   help="geoseg rows: model passes at once (ONNX on CPUs; see DESIGN.md)")
    p.add_argument("--chunk-processes", type=int, default=0,
                   help="geoseg rows: chunks in N worker processes (geoseg run "
                        "--chunk-processes; the model's threads shared among them)")
    p.add_argument("--threads", type=int, default=None,
                   help="geoseg rows: the model's threads (geoseg run --threads; 1 puts the "
                        "whole forward pass in the model thread, so the pipeline's own CPU is "
                        "exact)")
    p.add_argument("--rv-python", default=os.environ.get("GEOSEG_RV_PYTHON", sys.executable),
                   help="a Python with Raster Vision 0.31.1 for the peers' row (skipped when it "
                        "has none; see benchmarks/rv_predict.py)")
    p.add_argument("--check-engine", default="onnx", choices=["onnx", "torch", "none"],
                   help="also run geoseg --no-vectors with this engine and print the share of "
                        "pixels whose class equals the auto engine's (when auto picks another)")
    a = p.parse_args()
    sizes = a.size or [4096]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.model == "reference":
        bundle = str(reference_bundle(work))
    elif a.model == "null":
        bundle = str(null_bundle(work))
    elif a.model == "replay":
        bundle = str(replay_bundle(work))
    else:
        from geoseg.bundle import builtin_bundle

        bundle = str(builtin_bundle("landcover"))
    py = sys.executable
    rows: list[tuple[str, int, dict[str, Any]]] = []
    agreements: list[str] = []
    for size in sizes:
        img = str(replay_scene(size, work) if a.model == "replay" else scene(size, work))
        for engine in ("torch", "torch-bf16", "onnx") if a.only == "all" else ():
            if engine == "onnx" and not (Path(bundle) / "model.onnx").exists():
                continue
            if engine == "torch-bf16" and not (Path(bundle) / "weights.safetensors").exists():
                continue
            rows.append((f"forward {engine}, no overlap (limit)", size, measure(
                [py, "-m", "benchmarks.variants", "forward", img, bundle, "--engine",
                 engine])))
        if a.only == "all":
            rows.append(("forward torch, 64-px-overlap tiling", size, measure(
                [py, "-m", "benchmarks.variants", "forward", img, bundle, "--overlap", "64"])))
        if a.only in ("all", "naive"):
            rows.append(("naive loop, torch (scene array → GeoTIFF → GPKG)", size, measure(
                [py, "-m", "benchmarks.variants", "naive", img, bundle, str(work / "naive")])))
        if a.only == "all" and a.model == "reference" and has_raster_vision(a.rv_python):
            rows.append(("Raster Vision 0.31.1 predict, torch (GeoTIFF)", size, measure(
                [a.rv_python, "-m", "benchmarks.rv_predict", img, bundle, str(work / "rv")])))
        for vectors in ((True, False) if a.vectors == "both" else (a.vectors == "on",)):
            res = _geoseg(img, work / f"geoseg-{size}-{int(vectors)}", bundle, a, vectors, size,
                          a.engine)
            what = "Zarr + COG + GPKG" if vectors else "--no-vectors: Zarr + COG"
            rows.append((f"geoseg run, {res['engine']} ({what})", size, res))
        auto = rows[-1][2]
        if a.check_engine not in ("none", auto["engine"]):
            res = _geoseg(img, work / f"geoseg-{size}-{a.check_engine}", bundle, a, False, size,
                          a.check_engine)
            rows.append((f"geoseg run, {res['engine']} (--no-vectors: Zarr + COG)", size, res))
            agree = _class_agreement(work / f"geoseg-{size}-0", work / f"geoseg-{size}-"
                                     f"{a.check_engine}") if a.vectors != "on" else None
            if agree is not None:
                agreements.append(f"classes @ {size}: {auto['engine']} = {a.check_engine} on "
                                  f"{agree:.4%} of pixels")
    ran = sorted({r["summary"]["tiling"]["halo"] for _, _, r in rows if "summary" in r})
    print(f"\nmodel: {a.model} ({bundle}); chunk {a.chunk_size}, halo {a.halo} "
          f"(geoseg ran {', '.join(map(str, ran)) or '-'} px); "
          f"{psutil.cpu_count()} cores")
    print(f"{'what':<56} {'size':>6} {'Mpx/s':>7} {'wall s':>8} {'CPU s':>7} {'peak PSS GB':>12}")
    for name, size, r in rows:
        print(f"{name:<56} {size:>6} {r['px_per_s'] / 1e6:>7.3f} {r['wall_s']:>8.1f} "
              f"{r['cpu_s']:>7.1f} {r['peak_pss_gb']:>12.2f}")
    print()
    for size in sizes:
        at = {n: r for n, s, r in rows if s == size}
        naive = next((r for n, r in at.items() if n.startswith("naive")), None)
        rv = next((r for n, r in at.items() if n.startswith("Raster Vision")), None)
        for name, r in at.items():
            if not name.startswith("geoseg"):
                continue
            limit = at.get(f"forward {r['engine']}, no overlap (limit)")
            parts = []
            if naive is not None:
                parts.append(f"{r['px_per_s'] / naive['px_per_s']:.2f}× the naive loop")
                parts.append(f"memory {r['peak_pss_gb'] / naive['peak_pss_gb']:.2f}× its")
            if rv is not None:
                parts.append(f"{r['px_per_s'] / rv['px_per_s']:.2f}× Raster Vision")
            if limit is not None:
                parts.append(f"{r['px_per_s'] / limit['px_per_s']:.2f}× the {r['engine']} "
                             "forward-only limit")
            if parts:
                print(f"ratio @ {size}: {name}: " + ", ".join(parts))
        for name, r in at.items():
            if name.startswith("geoseg"):
                print(f"where the time goes @ {size}, {name}:")
                print("\n".join(_stage_profile(r["summary"], r["wall_s"], r["cpu_s"],
                                                r["thread_cpu_s"])))
                mpx = size * size / 1e6
                roles = ", ".join(f"{k} {v / mpx:.3f}" for k, v in r["thread_cpu_s"].items()
                                  if v > 0)
                print(f"    CPU-s/Mpx by thread role: {roles}")
                if r["busy_cores"]:
                    print("    busy cores in each tenth of the run (this process): "
                          + " ".join(f"{c:.1f}" for c in r["busy_cores"]))
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["peak_by_role_gb"].items())[:6])
                print(f"    peak PSS by process role (GB): {top}")
    for line in agreements:
        print(line)
    gs = [(s, r) for n, s, r in rows if n.startswith("geoseg") and "no-vectors" not in n]
    if len(gs) > 1:
        (s0, r0), (s1, r1) = gs[0], gs[-1]
        print(f"memory geoseg {s1}² / {s0}²: {r1['peak_pss_gb'] / r0['peak_pss_gb']:.3f} "
              f"({r0['peak_pss_gb']:.2f} → {r1['peak_pss_gb']:.2f} GB)")
    (work / "results.json").write_text(json.dumps(
        [{"what": n, "size": s, **{k: v for k, v in r.items() if k != "summary"}}
         for n, s, r in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
