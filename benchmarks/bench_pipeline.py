"""geoseg end to end vs. model-only vs. a naive loop, with peak memory of each process tree.

    python -m benchmarks.bench_pipeline --size 4096                # throughput ratios
    python -m benchmarks.bench_pipeline --size 4096 --size 16384 \
        --only geoseg                                              # memory vs raster size
    python -m benchmarks.bench_pipeline --model demo               # the shipped demo bundle

Every figure in one table comes from one run of this script on one machine; compare ratios, not
absolute numbers (these machines vary ±12% run to run). Memory is the peak PSS summed over the
whole process tree (driver, raylet, Ray workers), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

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
    return "driver" if any("geoseg" in c for c in cmd[:4]) else p.name()


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
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    last = {}
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            last = json.loads(line)
            break
    return {"wall_s": wall, "peak_pss_gb": peak / 2**30, "peak_by_role_gb": by_role(roles),
            **last}


def reference_bundle(root: Path) -> Path:
    """The peers' benchmark model: smp U-Net ResNet-18 (default decoder), 5 classes, random
    weights, 3 bands."""
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
    save_bundle(build_model(spec), spec, out, dtype="float32")
    return out


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
        prof = src.profile | {"width": size, "height": size, "BIGTIFF": "IF_SAFER"}
        with rasterio.open(out, "w", **prof) as dst:
            for r in range(0, size, 1024):
                for c in range(0, size, 1024):
                    win = Window((c % n), (r % n), 1024, 1024)
                    dst.write(src.read(window=win), window=Window(c, r, 1024, 1024))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--model", choices=["reference", "demo"], default="reference")
    p.add_argument("--only", choices=["all", "geoseg"], default="all")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--vectors", choices=["on", "off"], default="on")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "geoseg-bench"))
    a = p.parse_args()
    sizes = a.size or [4096]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = str(reference_bundle(work)) if a.model == "reference" else "landcover"
    if a.model == "demo":
        from geoseg.bundle import builtin_bundle

        bundle = str(builtin_bundle("landcover"))
    py = sys.executable
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for size in sizes:
        img = str(scene(size, work))
        if a.only == "all":
            rows.append(("forward, no overlap (limit)", size, measure(
                [py, "-m", "benchmarks.variants", "forward", img, bundle])))
            rows.append(("forward, 64-px-overlap tiling", size, measure(
                [py, "-m", "benchmarks.variants", "forward", img, bundle, "--overlap", "64"])))
            rows.append(("naive loop (scene array → GeoTIFF → GPKG)", size, measure(
                [py, "-m", "benchmarks.variants", "naive", img, bundle, str(work / "naive")])))
        out = work / f"geoseg-{size}"
        cmd = [py, "-m", "geoseg", "-q", "run", img, "-o", str(out), "--overwrite", "-m", bundle,
               "--chunk-size", str(a.chunk_size), "--halo", str(a.halo)]
        if a.vectors == "off":
            cmd.append("--no-vectors")
        res = measure(cmd)
        summ = json.loads((out / "summary.json").read_text())
        res["px_per_s"] = size * size / res["wall_s"]
        res["px_per_s_chunks"] = summ["throughput"]["px_per_s_chunks"]
        res["features"] = summ["features"]
        rows.append(("geoseg run (Zarr + COG + GPKG, wall incl. start-up)", size, res))
    print(f"\nmodel: {a.model} ({bundle}); chunk {a.chunk_size}, halo {a.halo}; "
          f"{psutil.cpu_count()} cores")
    print(f"{'what':<52} {'size':>6} {'Mpx/s':>7} {'wall s':>8} {'peak PSS GB':>12}")
    for name, size, r in rows:
        print(f"{name:<52} {size:>6} {r['px_per_s'] / 1e6:>7.3f} {r['wall_s']:>8.1f} "
              f"{r['peak_pss_gb']:>12.2f}")
    limit = {s: r["px_per_s"] for n, s, r in rows if n.startswith("forward, no overlap")}
    print()
    for name, size, r in rows:
        if size in limit and not name.startswith("forward, no"):
            print(f"ratio  {name} / forward-no-overlap @ {size}: "
                  f"{r['px_per_s'] / limit[size]:.3f}")
    gs = [(s, r) for n, s, r in rows if n.startswith("geoseg")]
    for s_, r in gs:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["peak_by_role_gb"].items())[:6])
        print(f"peak PSS by process role @ {s_} (GB, each process's own peak): {top}")
    if len(gs) > 1:
        (s0, r0), (s1, r1) = gs[0], gs[-1]
        print(f"memory geoseg {s1}² / {s0}²: {r1['peak_pss_gb'] / r0['peak_pss_gb']:.3f} "
              f"({r0['peak_pss_gb']:.2f} → {r1['peak_pss_gb']:.2f} GB)")
    (work / "results.json").write_text(json.dumps(
        [{"what": n, "size": s, **r} for n, s, r in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
