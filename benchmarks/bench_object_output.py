"""A run written to object storage vs. the same run written to a local folder.

    python -m benchmarks.bench_object_output                  # 2048², reference model, 2 reps
    python -m benchmarks.bench_object_output --model null     # the pipeline's own cost laid bare
    python -m benchmarks.bench_object_output --size 4096 --repeat 3

The demo scene (cropped to ``--size``) is segmented by ``geoseg run --executor local`` (one
subprocess per run) into a local folder and into ``s3://bench/run`` on a moto S3 server on
127.0.0.1 (in this process, in threads: it shares the machine's cores with the run, so the S3
figures include the server's own CPU cost, which a real object store does not put on the
workers). Runs are interleaved after one untimed warm-up; the table shows medians, and every
Zarr chunk object is compared with the local run's file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import measure, null_bundle, reference_bundle, scene

BUCKET = "bench"


def _server() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    return srv, f"http://{host}:{port}"


def _env(endpoint: str, tmp: Path) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
            "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none")}


def _run(img: Path, out: str, bundle: Path, a: argparse.Namespace,
         env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "geoseg", "-q", "run", str(img), "-o", out, "--overwrite",
           "--executor", "local", "-m", str(bundle), "--chunk-size", str(a.chunk_size)]
    if a.no_vectors:
        cmd.append("--no-vectors")
    return measure(cmd, env)


def _summary(out: str, client: Any) -> dict[str, Any]:
    if out.startswith("s3://"):
        key = out.removeprefix(f"s3://{BUCKET}/") + "/summary.json"
        return dict(json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    return dict(json.loads((Path(out) / "summary.json").read_text()))


def _same_chunks(local: Path, client: Any) -> int:
    root = local / "predictions.zarr"
    n = 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.name.startswith("."):
            got = client.get_object(Bucket=BUCKET, Key=f"run/predictions.zarr/{rel}")
            if got["Body"].read() != p.read_bytes():
                raise SystemExit(f"chunk {rel} differs between the local and the S3 run")
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--model", choices=["reference", "null"], default="reference")
    p.add_argument("--no-vectors", action="store_true")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    img = scene(a.size, a.work)
    bundle = (reference_bundle if a.model == "reference" else null_bundle)(a.work)
    srv, endpoint = _server()
    try:
        import boto3

        env = _env(endpoint, a.work)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        client.create_bucket(Bucket=BUCKET)
        targets = {"local folder": str(a.work / "run-local"), "S3 (moto, loopback)":
                   f"s3://{BUCKET}/run"}
        for out in targets.values():  # warm-up: page cache, model files, imports
            _run(img, out, bundle, a, env)
        walls: dict[str, list[float]] = {k: [] for k in targets}
        phases: dict[str, dict[str, list[float]]] = {k: {} for k in targets}
        for rep in range(a.repeat):
            order = list(targets) if rep % 2 == 0 else list(targets)[::-1]
            for name in order:
                res = _run(img, targets[name], bundle, a, env)
                walls[name].append(res["wall_s"])
                for k, v in _summary(targets[name], client)["timings_s"].items():
                    phases[name].setdefault(k, []).append(float(v))
        n = _same_chunks(Path(targets["local folder"]), client)
    finally:
        srv.stop()
    base = statistics.median(walls["local folder"])
    print(f"{a.size}² px, {a.chunk_size}² chunks, model {a.model}, vectors "
          f"{'off' if a.no_vectors else 'on'}, {a.repeat} rep(s), {os.cpu_count()} CPUs; "
          f"{n} chunk objects byte-identical to the local files")
    keys = ("setup_s", "chunks_s", "vector_merge_s", "cog_s", "quicklook_s", "total_s")
    print(f"  {'output':<22} {'wall s':>8} {'ratio':>6}  " + " ".join(f"{k:>15}" for k in keys))
    for name in targets:
        wall = statistics.median(walls[name])
        cols = " ".join(f"{statistics.median(phases[name].get(k, [0.0])):>15.2f}" for k in keys)
        print(f"  {name:<22} {wall:>8.2f} {wall / base:>6.2f}  {cols}")


if __name__ == "__main__":
    main()
