"""Run one region job from a YAML config: the entry point for ``ray job submit``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.run_region configs/demo.yaml --resume

Connects to the cluster it runs on (RAY_ADDRESS is set by the job server), runs the same library
code as ``geoseg run``, prints the summary path, and exits non-zero if chunks failed.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    p = argparse.ArgumentParser(prog="python -m workflows.run_region")
    p.add_argument("config", help="job YAML (see configs/demo.yaml)")
    p.add_argument("--image")
    p.add_argument("--output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true")
    g.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    from geoseg.config import load_job_config
    from geoseg.errors import GeoSegError
    from geoseg.job import run_job

    try:
        cfg = load_job_config(a.config, image=a.image, output=a.output)
        res = run_job(cfg, overwrite=a.overwrite, resume=a.resume,
                      progress=lambda pr: print(f"progress {pr.done}/{pr.total} chunks "
                                                f"{pr.px_per_s / 1e6:.2f} Mpx/s", flush=True))
    except GeoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"summary: {res.output / 'summary.json'} ({res.summary['status']})")
    return 0 if res.ok else 3


if __name__ == "__main__":
    sys.exit(main())
