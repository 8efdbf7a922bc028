"""geoseg on Ray vs. the local executor: the same job on this machine, and what Ray costs.

    python -m benchmarks.bench_ray --size 16384 --model null --vectors off  # pipeline's own cost
    python -m benchmarks.bench_ray --size 4096                              # reference U-Net-R18

Rows, each one run of ``geoseg run`` on the same image and bundle:

- local: the local executor (threads of one process, the default on one machine);
- ray, connected: a running one-node Ray cluster (``ray start --head`` on 127.0.0.1 with this
  machine's cores, started before the row and not timed in it; its start-up is printed apart),
  joined with ``--address``: what a user who submits to a cluster gets;
- ray, started by the job: ``--executor ray`` without an address (Ray's start-up included);
- ray, two nodes: a two-node cluster (``ray start --head`` and ``ray start --address``), each
  node's processes pinned to half of this machine's cores, as a real cluster's nodes each have
  their own (the job's defaults: a model actor per node, each node reading its own band).

CPU is the whole machine's, from /proc/stat (every Ray process counts, those that exit during
the run too): run it on an otherwise idle machine. "idle" is the share of the cores' time
nobody used during the run. "reads" is the read stage's CPU-s per Mpx (``stage_cpu_s.read_s``);
"decoded/tile" how many times each source tile was decoded (``source_blocks``: 1.0 when every
block was decoded once). Ratios are Ray / local from this one run of the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import ROOT, null_bundle, reference_bundle, scene


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def ray_env() -> dict[str, str]:
    """This benchmark's Ray: no usage stats, no token auth on either side, no inherited
    address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``geoseg run``; wall, machine CPU and its summary."""
    c0, t0 = machine_cpu_s(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, machine_cpu_s() - c0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu,
            "summary": json.loads((out / "summary.json").read_text())}


class Cluster:
    """A Ray cluster of this benchmark's own on 127.0.0.1 (``ray start --head --block``, plus
    ``ray start --address --block`` for each further node), stopped by signalling the processes
    that started it. With several nodes each node's processes are pinned to its own share of
    the cores (CPU affinity), as nodes of a real cluster each have their own."""

    def __init__(self, cores: int, env: dict[str, str], nodes: int = 1) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.temp = tempfile.mkdtemp(prefix="ray-bench-")
        self.address = f"127.0.0.1:{self.port}"
        per = max(1, cores // nodes)
        t0 = time.perf_counter()
        self.procs: list[subprocess.Popen[bytes]] = []
        for k in range(nodes):
            where = (["--head", "--port", str(self.port), "--include-dashboard", "false",
                      "--temp-dir", self.temp] if k == 0 else ["--address", self.address])
            cpus = set(range(k * per, (k + 1) * per)) if nodes > 1 else None
            self.procs.append(subprocess.Popen(
                ["ray", "start", "--block", "--node-ip-address", "127.0.0.1", *where,
                 "--num-cpus", str(per if nodes > 1 else cores), "--disable-usage-stats"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None))
            while self.alive_nodes(env) <= k:
                if self.procs[k].poll() is not None or time.perf_counter() - t0 > 180:
                    self.stop()
                    raise SystemExit("ray start failed (or took over 3 minutes)")
                time.sleep(0.5)
        self.start_s = time.perf_counter() - t0

    def alive_nodes(self, env: dict[str, str]) -> int:
        """Active nodes as `ray status` lists them (0 while the head does not answer)."""
        done = subprocess.run(["ray", "status", "--address", self.address], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            return 0
        return sum(1 for ln in done.stdout.splitlines() if ln.strip().split(" ")[-1]
                   .startswith("node_") and ln.strip()[:1].isdigit())

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        shutil.rmtree(self.temp, ignore_errors=True)


def tiles(image: str) -> int:
    """Source blocks of the image's first band."""
    import rasterio

    with rasterio.open(image) as src:
        bh, bw = src.block_shapes[0]
        return math.ceil(src.height / bh) * math.ceil(src.width / bw)


def line(name: str, r: dict[str, Any], mpx: float, cores: int, n_tiles: int) -> str:
    s = r["summary"]
    read = s.get("stage_cpu_s", {}).get("read_s", 0.0)
    blocks = s.get("source_blocks", {})
    decoded = f"{blocks['decoded'] / n_tiles:12.2f}" if blocks else f"{'-':>12}"
    idle = max(0.0, 1 - r["cpu_s"] / (r["wall_s"] * cores))
    return (f"{name:<34} {mpx / r['wall_s']:7.3f} {r['wall_s']:8.1f} {r['cpu_s'] / mpx:9.3f} "
            f"{idle:6.0%} {read / mpx:7.3f} {decoded} {s['timings_s'].get('model_load_s', 0):8.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--model", choices=["reference", "null"], default="reference")
    p.add_argument("--vectors", choices=["on", "off"], default="on")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "geoseg-bench"))
    p.add_argument("--rows", default="local,connected,started,two-nodes",
                   help="which rows, comma-separated: local, connected, started, two-nodes")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = str(reference_bundle(work) if a.model == "reference" else null_bundle(work))
    img = str(scene(a.size, work))
    mpx = a.size * a.size / 1e6
    cores = os.cpu_count() or 1
    env = ray_env()
    out = work / f"ray-{a.size}"

    def cmd(*extra: str) -> list[str]:
        return [sys.executable, "-m", "geoseg", "-q", "run", img, "-o", str(out), "--overwrite",
                "-m", bundle, "--chunk-size", str(a.chunk_size), "--halo", str(a.halo),
                *(["--no-vectors"] if a.vectors == "off" else []), *extra]

    rows: dict[str, dict[str, Any]] = {}
    wanted = a.rows.split(",")
    if "local" in wanted:
        rows["local executor"] = run(cmd("--executor", "local"), out, env)
    cluster_s = None
    if "connected" in wanted:
        cluster = Cluster(cores, env)
        try:
            cluster_s = cluster.start_s
            rows["ray, connected to a cluster"] = run(cmd("--address", cluster.address), out, env)
        finally:
            cluster.stop()
    if "started" in wanted:
        rows["ray, started by the job"] = run(cmd("--executor", "ray"), out, env)
    if "two-nodes" in wanted and cores >= 2:
        cluster = Cluster(cores, env, nodes=2)
        try:
            rows["ray, two nodes of half the cores"] = run(
                cmd("--address", cluster.address), out, env)
        finally:
            cluster.stop()

    n_tiles = tiles(img)
    print(f"\nmodel: {a.model} ({bundle}); {a.size}² ({mpx:.1f} Mpx, {n_tiles} source tiles); "
          f"chunk {a.chunk_size}, halo {a.halo}; vectors {a.vectors}; {cores} cores")
    print(f"{'what':<34} {'Mpx/s':>7} {'wall s':>8} {'CPU-s/Mpx':>9} {'idle':>6} "
          f"{'reads':>7} {'decoded/tile':>12} {'actors s':>8}")
    for name, r in rows.items():
        print(line(name, r, mpx, cores, n_tiles))
    if cluster_s is not None:
        print(f"(the cluster's own start-up, `ray start --head` until `ray status` answers: "
              f"{cluster_s:.1f} s, not in its row)")
    base = rows.get("local executor")
    for name, r in rows.items():
        if base is None or r is base:
            continue
        print(f"ratio {name} / local: throughput {base['wall_s'] / r['wall_s']:.2f}x, "
              f"CPU-s per Mpx {r['cpu_s'] / base['cpu_s']:.2f}x")
    for name, r in rows.items():
        t = r["summary"]["timings_s"]
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                       if isinstance(v, (int, float)) and v))


if __name__ == "__main__":
    main()
