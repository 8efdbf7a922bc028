"""Run one region job from a YAML config: the entry point for ``ray job submit``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.run_region configs/demo.yaml --output /shared/run --resume

(``geoseg submit`` does the same, with the project's caches and data left out of the upload.)
Connects to the cluster it runs on (RAY_ADDRESS is set by the job server), runs the same library
code as ``geoseg run`` and prints the summary path. Exit codes: 0 complete; 3 completed with
failed chunks (rerun with --resume to retry them); 2 bad input; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflows.run_region")
    p.add_argument("config", nargs="?", help="job YAML (see configs/demo.yaml)")
    p.add_argument("--config-json", help="the job config as JSON (instead of a YAML path)")
    p.add_argument("--image", help="override the config's image")
    p.add_argument("--output", help="override the config's output directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="override runtime.device (cuda: model actors ask Ray for GPUs)")
    p.add_argument("--workers", type=int, help="override runtime.workers (model actors)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="skip chunks a previous run finished")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only in the log")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    p = _parser()
    a = p.parse_args(argv)
    if a.config is None and a.config_json is None:
        p.error("give a config YAML path or --config-json")
    if a.config is not None and a.config_json is not None:
        p.error("give a config YAML path or --config-json, not both")
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from geoseg.runtime.provenance import code_version
    from geoseg.runtime.signals import StopOnSignals

    v = code_version()
    print(f"geoseg {v['geoseg_version']} (commit {v['git_commit'] or 'unknown'})", flush=True)
    # `geoseg cancel` (ray job stop) sends SIGTERM: stop cleanly, manifest "cancelled"
    with StopOnSignals():
        return _run(a, p)


def _run(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    from geoseg.cli.run_cmds import RunProgress
    from geoseg.config import load_job_config, validate_job
    from geoseg.errors import GeoSegError
    from geoseg.job import run_job
    from geoseg.runtime.signals import exit_code

    try:
        if a.config_json is not None:
            try:
                data = json.loads(a.config_json)
            except json.JSONDecodeError as exc:
                raise GeoSegError(f"--config-json is not valid JSON: {exc}") from None
            data.update({k: x for k, x in (("image", a.image), ("output", a.output)) if x})
            cfg = validate_job(data, source="--config-json")
        else:
            cfg = load_job_config(a.config, image=a.image, output=a.output)
        cfg = cfg.with_overrides(device=a.device, workers=a.workers)
        progress = RunProgress(quiet=False, every_s=10.0)  # plain lines in the job's log
        try:
            res = run_job(cfg, overwrite=a.overwrite, resume=a.resume, progress=progress)
        finally:
            progress.close()
    except GeoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM from `geoseg cancel`
        print("interrupted: finished chunks are kept; rerun with --resume to continue",
              file=sys.stderr)
        return exit_code(exc)
    print(f"summary: {res.summary_path}")
    if res.ok:
        print(f"geoseg job complete: {res.summary['chunks']['total']} chunks "
              f"({res.summary['chunks']['computed_this_run']} computed this run)")
        return 0
    for f in res.failed:
        print(f"failed chunk {f.chunk_id} window {f.window} after {f.attempts} attempts: "
              f"{f.error}")
    print(f"geoseg job completed with {len(res.failed)} failed chunks: rerun with --resume to "
          "retry them")
    return 3


if __name__ == "__main__":
    sys.exit(main())
