"""The GPU check for a short lease (one H100/H200, no network, ≤ 8 minutes).

    python -m benchmarks.gpu_check [--size 16384] [--work DIR] [--budget 420]

Steps, in this order, each printed as one JSON line as it ends (and appended to
``$OUT/gpu_check.jsonl``; ``--only``/``--skip`` choose):

1. ``model_only``: the reference bundle's forward pass (PyTorch, bf16 autocast, channels-last)
   on batches already on the GPU, softmax and argmax included, synchronised: the limit a
   pipeline could reach; and ``pipeline_pass``: one model pass as ``geoseg run`` makes it (a
   1152² float32 window from host memory through pinned memory, classes and confidence
   computed on the GPU, two uint8 planes back), in one thread.
2. ``run_no_vectors``, ``run_vectors``: ``geoseg run --device cuda`` end to end on a ``size``²
   mosaic (Zarr + COG, then + GeoPackage), GPU utilisation sampled by ``nvidia-smi`` every
   0.2 s, CPU-s of the process tree (Ray's worker processes are not its children: the Ray
   steps' CPU-s leave them out), the run's ``summary.json`` timings; each also with
   ``--chunk-processes 4`` (``*_procs4``: reads, passes and writes in 4 worker processes that
   share the GPU, where one process's interpreter lock held the first lease's host to 2.2 of
   16 cores).
3. ``tests``, ``tests_ray``: the CUDA tests (``pytest -m gpu``: device blend = host blend,
   tiled = whole on CUDA, concurrent callers, ``predict_core``, bf16/fp16 training; the Ray GPU
   test where Ray is installed).
4. ``run_vectors_gpkg_thread``: ``run_vectors`` with the GeoPackage writer in a thread of the
   job's process (``--no-gpkg-process``) instead of a process of its own (the default there),
   ``run_no_vectors_chunk2048`` (2048-px chunks in 512² tiles blended on the GPU) and, where
   Ray is installed, ``ray_*``: the Ray executor with 4 or 1 model actors sharing the GPU.
5. ``summary``: each run against the issue's targets (≥ 0.85× model-only, ≥ 100 Mpx/s per GPU).

A step that would not fit the remaining ``--budget`` seconds is skipped and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import reference_bundle, scene

RESULTS = "gpu_check.jsonl"
# the files holding the CUDA tests (tests/cluster's need Ray: skipped where it is missing)
GPU_TESTS = ["tests/pipeline/test_gpu_path.py", "tests/pipeline/test_local_executor.py",
             "tests/pipeline/test_chunk_processes.py",
             "tests/pipeline/test_pipeline.py", "tests/train/test_checkpoint.py",
             "tests/cluster/test_gpu.py"]
# step → seconds it may take, in the order they run (the most telling first)
STEPS = {"model_only": 40.0, "run_no_vectors": 150.0, "run_no_vectors_procs4": 120.0,
         "run_vectors": 200.0, "run_vectors_procs4": 150.0, "tests": 120.0,
         "run_vectors_gpkg_thread": 150.0, "run_no_vectors_chunk2048": 120.0}
CHUNK_PROCESSES = 4  # the *_procs4 steps: chunks in 4 worker processes sharing the GPU
# where py-spy is installed: run_no_vectors again under `py-spy record --gil` (what holds the
# interpreter lock while the GPU waits; benchmarks/gil_profile.py)
GIL_STEPS = {"gil_no_vectors": 90.0}
GIL_RATE = 50
# Ray steps (where Ray is installed): the GPU shared by N model actors (gpus_per_worker 1/N),
# writes and vectors in Ray worker processes
RAY_STEPS = {"ray_no_vectors_w4": 120.0, "ray_vectors_w4": 150.0, "ray_no_vectors_w1": 120.0}


class Check:
    def __init__(self, out: Path, budget: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget
        self.rows: dict[str, Any] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, step: str, **row: Any) -> None:
        self.rows[step] = row
        line = json.dumps({"step": step, **row})
        print(line, flush=True)
        with open(self.out / RESULTS, "a") as f:
            f.write(line + "\n")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tests(chk: Check, timeout: float) -> None:
    """The CUDA tests in two groups, each with its own log and a per-test timeout shorter than
    the step's: one test that hangs (the Ray GPU tests did not finish in 120 s on the first
    H200 lease) then names itself instead of hiding every result."""
    groups = {"tests": [t for t in GPU_TESTS if "cluster" not in t],
              "tests_ray": [t for t in GPU_TESTS if "cluster" in t]}
    if importlib.util.find_spec("ray") is None:
        del groups["tests_ray"]
    for name, files in groups.items():
        t0 = time.monotonic()
        log_path = chk.out / f"gpu_{name}.txt"
        cmd = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
               f"--timeout={max(20, int(timeout / 2))}", "--continue-on-collection-errors",
               *files]
        with open(log_path, "w") as log_file:  # written as it runs: a timeout keeps the log
            try:
                rc: int | None = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                                timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        lines = log_path.read_text().strip().splitlines()
        chk.emit(name, rc=rc, seconds=round(time.monotonic() - t0, 1),
                 passed=sum(" PASSED" in ln for ln in lines),
                 failed=[ln.split(" ")[0] for ln in lines if " FAILED" in ln or " ERROR" in ln],
                 tail=lines[-6:])


def model_only(chk: Check, bundle: Path, shapes: list[tuple[int, int]], device: str,
               seconds: float = 3.0) -> None:
    import numpy as np
    import torch

    from geoseg.models.predictor import Predictor

    pred = Predictor(bundle, device=device, engine="torch")
    model = pred.model
    dev = pred.device
    cuda = dev.type == "cuda"
    with pred._autocast():  # the pipeline's own autocast (bf16, else fp16, on a GPU)
        dtype = str(torch.get_autocast_dtype("cuda")).removeprefix("torch.") if cuda \
            else "float32"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    rows: list[dict[str, Any]] = []
    for tile, batch in shapes:
        x = torch.randn(batch, len(pred.spec.bands), tile, tile, device=dev)
        x = x.contiguous(memory_format=torch.channels_last)
        n = 0
        with torch.inference_mode(), pred._autocast():
            for _ in range(3):  # warm-up (cuDNN picks its algorithms)
                torch.softmax(model(x).float(), dim=1).argmax(dim=1)
            sync()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                torch.softmax(model(x).float(), dim=1).argmax(dim=1)
                n += 1
                if n % 4 == 0:
                    sync()
            sync()
            dt = time.perf_counter() - t0
        rows.append({"tile": tile, "batch": batch,
                     "mpx_s": round(n * batch * tile * tile / dt / 1e6, 1),
                     "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                     if cuda else None})
    # one model pass as the pipeline makes it: a 1024-px chunk with a 64-px halo, host → GPU
    win = (np.random.default_rng(0).random((3, 1152, 1152)) * 255).astype(np.float32)
    crop = (slice(64, 1088), slice(64, 1088))
    for _ in range(2):
        pred.predict_core(win[None], crop)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.predict_core(win[None], crop)
        n += 1
    dt = time.perf_counter() - t0
    chk.emit("model_only", engine="torch", dtype=dtype,
             gpu=torch.cuda.get_device_name(dev) if cuda else None, shapes=rows,
             best_mpx_s=max(r["mpx_s"] for r in rows),
             pipeline_pass={"window": 1152, "core": 1024,
                            "core_mpx_s": round(n * 1024 * 1024 / dt / 1e6, 1),
                            "window_mpx_s": round(n * 1152 * 1152 / dt / 1e6, 1)})


def run(chk: Check, name: str, image: Path, bundle: Path, work: Path, vectors: bool,
        timeout: float, extra: list[str], device: str) -> None:
    out = work / name
    cmd = [sys.executable, "-m", "geoseg", "-q", "run", str(image), "-o", str(out),
           "--overwrite", "-m", str(bundle), "--device", device, *extra]
    gil = chk.out / f"{name}.pyspy.txt"
    if name.startswith("gil_"):  # who holds the GIL: py-spy's GIL samples, 50 a second
        cmd = ["py-spy", "record", "--gil", "--threads", "-r", str(GIL_RATE), "--format",
               "raw", "-o", str(gil), "--", *cmd]
    if not vectors:
        cmd.append("--no-vectors")
    smi_csv = chk.out / f"nvidia_smi_{name}.csv"
    sampler = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits", "-lms", "200"]
    with open(smi_csv, "w") as f:  # no nvidia-smi (a dry run on a CPU): sample nothing
        smi = subprocess.Popen(sampler if shutil.which("nvidia-smi") else ["sleep", "1d"],
                               stdout=f, stderr=subprocess.DEVNULL)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        chk.emit(name, rc=None, timed_out=timeout)
        return
    finally:  # the sampler stops whether the run ended or timed out
        smi.terminate()
        smi.wait()
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    util = []
    for line in smi_csv.read_text().splitlines():
        try:
            util.append(float(line.split(",")[0]))
        except ValueError:
            continue
    row: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(wall, 2),
                           "cpu_s": round(cpu, 1), "cores": os.cpu_count()}
    if proc.returncode != 0:
        row["stderr_tail"] = proc.stderr.strip().splitlines()[-8:]
        chk.emit(name, **row)
        return
    summ = json.loads((out / "summary.json").read_text())
    px = summ["throughput"]["pixels"]
    if gil.exists():
        from benchmarks.gil_profile import summarize

        held, stages, leaves = summarize(gil)
        row["gil_held_share_of_wall"] = round(held / (GIL_RATE * wall), 3)
        row["gil_by_stage"] = {k: round(v / max(1, held), 3) for k, v in stages.most_common()}
        row["gil_top_leaves"] = [[round(v / max(1, held), 3), k]
                                 for k, v in leaves.most_common(8)]
    busy = sorted(util)
    chunks_s = (summ.get("timings_s") or {}).get("chunks_s")
    # the chunk phase alone (reads, passes, writes, vectors beside them): what the host feeds
    # the GPU once the fixed costs (imports, CUDA start, model load, exports) are paid
    row["chunk_phase_mpx_s"] = round(px / chunks_s / 1e6, 2) if chunks_s else None
    row |= {"mpx": round(px / 1e6, 1), "mpx_s": round(px / wall / 1e6, 2),
            "cpu_s_per_mpx": round(cpu / (px / 1e6), 3),
            "gpu_util_mean": round(sum(util) / max(1, len(util)), 1),
            "gpu_util_median": busy[len(busy) // 2] if busy else None,
            "gpu_util_samples": len(util),
            "tiling": summ.get("tiling"), "engines": summ.get("engines"),
            "runtime": summ.get("runtime"), "timings_s": summ.get("timings_s"),
            "stage_cpu_s": summ.get("stage_cpu_s")}
    chk.emit(name, **row)


def ray_flags(work: Path, workers: int) -> list[str]:
    """`geoseg run` flags for the Ray executor with ``workers`` model actors sharing the GPU."""
    cfg = work / f"ray_w{workers}.yaml"
    cfg.write_text(f"runtime:\n  gpus_per_worker: {1 / workers}\n")
    return ["--config", str(cfg), "--executor", "ray", "--workers", str(workers)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--work", type=Path, default=Path("/tmp/geoseg-gpu-check"))
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all steps")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a dry run of the check's mechanics on a machine without a GPU")
    every = [*STEPS, *GIL_STEPS, *RAY_STEPS]
    p.add_argument("--skip", action="append", default=[], choices=every)
    p.add_argument("--only", action="append", default=[], choices=every,
                   help="run these steps alone (repeatable; default: every step)")
    p.add_argument("run_args", nargs="*", help="extra `geoseg run` flags (after --)")
    a = p.parse_args()
    out = Path(os.environ.get("OUT") or a.work)
    out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    chk = Check(out, a.budget)

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch: the GPU check needs one", file=sys.stderr)
        raise SystemExit(2)
    t0 = time.monotonic()
    bundle = reference_bundle(a.work, onnx=False)
    image = scene(a.size, a.work)
    chk.emit("prepare", seconds=round(time.monotonic() - t0, 1), image=str(image),
             size=a.size, torch=torch.__version__, python=sys.version.split()[0])

    steps = dict(STEPS)
    if shutil.which("py-spy"):
        steps |= GIL_STEPS
    if importlib.util.find_spec("ray") is not None:
        steps |= RAY_STEPS
    for step, need in steps.items():
        if step in a.skip or (a.only and step not in a.only):
            continue
        if chk.left() < min(need, 30):
            chk.emit(step, skipped=f"{chk.left():.0f} s of the budget left")
            continue
        timeout = max(30.0, min(need, chk.left()))
        try:
            if step == "model_only":
                shapes = [(512, 16), (1024, 4), (1152, 4), (2048, 2)] if a.device == "cuda" \
                    else [(512, 1)]
                model_only(chk, bundle, shapes, a.device)
            elif step == "tests":
                tests(chk, timeout)
            else:
                more = ["--chunk-size", "2048"] if step.endswith("chunk2048") else []
                if step.endswith("gpkg_thread"):  # the writer as before it had a process
                    more = ["--no-gpkg-process"]
                if step.endswith("_procs4"):  # the host's work in 4 processes, not 1
                    more = ["--chunk-processes", str(CHUNK_PROCESSES)]
                if step.startswith("ray_"):
                    more = ray_flags(a.work, int(step.rsplit("_w", 1)[1]))
                run(chk, step, image, bundle, a.work, "no_vectors" not in step, timeout,
                    [*more, *a.run_args], a.device)
        except Exception as exc:  # one step's failure must not hide the others
            chk.emit(step, error=f"{type(exc).__name__}: {exc}")

    mo = chk.rows.get("model_only", {}).get("best_mpx_s")
    summary: dict[str, Any] = {"model_only_mpx_s": mo}
    for step in (s for s in steps if s.startswith(("run_", "ray_"))):
        r = chk.rows.get(step, {})
        if r.get("mpx_s"):
            summary[step] = {"mpx_s": r["mpx_s"], "chunk_phase_mpx_s": r["chunk_phase_mpx_s"],
                             "gpu_util_mean": r["gpu_util_mean"],
                             "ratio_to_model_only": round(r["mpx_s"] / mo, 3) if mo else None,
                             "meets_0.85x": bool(mo and r["mpx_s"] >= 0.85 * mo),
                             "meets_100_mpx_s": r["mpx_s"] >= 100}
    chk.emit("summary", **summary)


if __name__ == "__main__":
    main()
