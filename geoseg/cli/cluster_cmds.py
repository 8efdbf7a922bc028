"""Cluster sub-commands: ``submit`` (or ``submit --plan``, a dry run), ``status``, ``logs``,
``cancel``. They talk to a Ray cluster's job server (the dashboard, port 8265 by default)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from geoseg.cli.progress import fmt_duration
from geoseg.runtime.upload import MAX_UPLOAD_MB

EXIT_FAILED_CHUNKS = 3
PLAN_LIST_N = 25  # files listed by `submit --plan` (all of them with --json)


def _print_plan(e: Any, as_json: bool) -> None:
    from geoseg.runtime.estimate import as_dict

    if as_json:
        print(json.dumps(as_dict(e), indent=2))
        return
    rx, ry = e.resolution
    print(f"plan: {e.width}×{e.height} px ({e.crs}, {abs(rx):g}×{abs(ry):g}), {e.chunks} chunks of "
          f"{e.chunk}² (+{e.halo} px halo), {e.chunks_todo} to do")
    print(f"  pixels   {e.pixels_todo / 1e6:.2f} Mpx to do of {e.pixels / 1e6:.2f} Mpx "
          f"({e.pixels_read / max(e.pixels_todo, 1):.2f}× read with the halo)")
    print(f"  area     {e.area_km2:.3f} km²")
    if e.rate is None:
        why = ("nothing to do" if not e.chunks_todo
               else "no previous run, and calibration is off (--no-calibrate)")
        print(f"  time     unknown: {why}")
        return
    print(f"  rate     {e.rate.px_per_s / 1e6:.3f} Mpx/s measured by {e.rate.source}: "
          f"{e.rate.detail}")
    print(f"  time     {fmt_duration(e.eta_s, 'unknown')} at that rate")
    if e.workers and e.workers > 1 and e.eta_s is not None and e.rate.source == "calibration":
        each = fmt_duration(e.eta_s / e.workers, "unknown")
        print(f"           {each} with {e.workers} such workers if "
              "throughput scales linearly (an upper bound on speed-up)")


def _upload_dict(u: Any, max_mb: float) -> dict[str, Any]:
    return {"root": str(u.root), "files": len(u.files), "bytes": u.size, "mb": round(u.mb, 3),
            "max_mb": max_mb, "within_limit": u.mb <= max_mb, "gitignore": u.gitignore,
            "paths": [f.rel for f in u.files]}


def _print_upload(u: Any, max_mb: float) -> None:
    """What `geoseg submit` would send as the job's working dir (nothing is sent)."""
    src = f"{u.root}" + (", .gitignore applied" if u.gitignore else "")
    print(f"upload: {len(u.files)} files, {u.mb:.2f} MB (limit {max_mb:g} MB) from {src}")
    for f in u.files[:PLAN_LIST_N]:
        print(f"  {f.size / 2**20:8.3f} MB  {f.rel}")
    if len(u.files) > PLAN_LIST_N:
        print(f"  ... and {len(u.files) - PLAN_LIST_N} more (--plan --json lists all)")
    if u.mb > max_mb:
        print(f"  over --max-upload-mb {max_mb:g}: submit would refuse")


def cmd_submit(a: argparse.Namespace) -> int:
    from geoseg.runtime import jobs

    sub = jobs.Submission(Path(a.config), address=a.address, image=a.image, output=a.output,
                          resume=a.resume, overwrite=a.overwrite,
                          working_dir=Path(a.working_dir) if a.working_dir else None,
                          submission_id=a.job_id, max_upload_mb=a.max_upload_mb)
    if a.plan:
        from geoseg.config import load_job_config
        from geoseg.runtime.estimate import as_dict, estimate

        cfg = load_job_config(sub.config, image=sub.image, output=sub.output)
        jobs.check_cluster_paths(cfg)  # what submit refuses, the dry run refuses
        upload = jobs.upload_plan(sub)
        if not a.json:  # first: it needs no image, which may exist on the cluster only
            _print_upload(upload, a.max_upload_mb)
        e = estimate(cfg, calibrate=not a.no_calibrate)
        if a.json:
            print(json.dumps({**as_dict(e), "upload": _upload_dict(upload, a.max_upload_mb)},
                             indent=2))
        else:
            _print_plan(e, False)
        return 0
    job_id = jobs.submit(sub)
    print(f"submitted job {job_id} to {jobs.resolve_address(a.address)}")
    if not a.wait:
        print(f"  follow it: geoseg logs {job_id} --follow   (status: geoseg status {job_id})")
        return 0
    return _wait(job_id, a.address)


def _wait(job_id: str, address: str | None) -> int:
    from geoseg.runtime import jobs

    tail: list[str] = []  # the log's end, to find run_region's last word

    def emit(text: str) -> None:
        _emit(text)
        tail.append(text)
        while len(tail) > 1 and sum(map(len, tail)) > 65536:
            tail.pop(0)

    return _report_end(jobs.wait(job_id, address, emit), "".join(tail))


def _report_end(st: Any, log_text: str) -> int:
    from geoseg.runtime.jobs import failed_chunks

    if st.status == "SUCCEEDED":
        print(f"job {st.job_id} SUCCEEDED")
        return 0
    n = failed_chunks(log_text)
    if st.status == "FAILED" and st.exit_code == EXIT_FAILED_CHUNKS and n:
        print(f"job {st.job_id} completed with {n} failed chunks: submit again with --resume "
              "to retry them", file=sys.stderr)
        return EXIT_FAILED_CHUNKS
    lines = st.message.strip().splitlines()
    print(f"error: job {st.job_id} {st.status}" + (f": {lines[-1]}" if lines else "")
          + f"; see `geoseg logs {st.job_id}`", file=sys.stderr)
    return st.exit_code or 1


def cmd_status(a: argparse.Namespace) -> int:
    from geoseg.runtime import jobs

    st = jobs.state(a.job_id, a.address)
    took = (st.end_time or time.time()) - st.start_time if st.start_time else None
    print(f"job {st.job_id}: {st.status}"
          + (f" ({fmt_duration(took, 'unknown')})" if took is not None else ""))
    if st.message:
        print(f"  message     {st.message.strip().splitlines()[-1]}")
    print(f"  entrypoint  {st.entrypoint[:200]}")
    for k in ("output", "geoseg_version", "git_commit"):
        if st.metadata.get(k):
            print(f"  {k:<11} {st.metadata[k]}")
    if st.exit_code is not None:
        print(f"  exit code   {st.exit_code}")
    return 0


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_logs(a: argparse.Namespace) -> int:
    from geoseg.runtime import jobs

    if a.follow:
        jobs.follow_logs(a.job_id, a.address, _emit)
    else:
        sys.stdout.write(jobs.logs(a.job_id, a.address))
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    from geoseg.runtime import jobs

    if jobs.cancel(a.job_id, a.address):
        print(f"stopping job {a.job_id}: finished chunks are kept; submit with --resume to "
              "continue")
    else:
        print(f"job {a.job_id} had already ended")
    return 0


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray job server URL, e.g. http://127.0.0.1:8265 "
                                     "(default: RAY_ADDRESS)")


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("submit", help="run a job YAML on a Ray cluster (Ray Jobs API)")
    s.add_argument("config", help="job YAML (configs/); validated here before submission")
    _address(s)
    s.add_argument("--image", help="input raster as the cluster's nodes see it (overrides the "
                                   "config)")
    s.add_argument("--output", help="output directory on storage every node mounts (overrides "
                                    "the config)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue a previous run in --output")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--wait", action="store_true",
                   help="stream the job's log until it ends; exit 0, 3 (failed chunks) or 1")
    s.add_argument("--plan", action="store_true",
                   help="dry run here, no cluster: chunks, pixels, area and an estimated time "
                        "from a measured rate, and the files that would be uploaded")
    s.add_argument("--no-calibrate", action="store_true",
                   help="with --plan: no calibration pass (time only from a previous run)")
    s.add_argument("--json", action="store_true", help="with --plan: print JSON")
    s.add_argument("--working-dir", help="project directory whose geoseg/ and workflows/ are "
                                         "shipped (default: geoseg's source tree)")
    s.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                   help="refuse to ship more than this (default %(default)g; only geoseg/, "
                        "workflows/ and the config travel; --plan lists them)")
    s.add_argument("--job-id", help="submission id (default: generated by Ray)")
    s.set_defaults(fn=cmd_submit)

    st = sub.add_parser("status", help="state of a submitted job")
    st.add_argument("job_id", help="the id `geoseg submit` printed (raysubmit_...)")
    _address(st)
    st.set_defaults(fn=cmd_status)

    lg = sub.add_parser("logs", help="log of a submitted job")
    lg.add_argument("job_id", help="the id `geoseg submit` printed (raysubmit_...)")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    _address(lg)
    lg.set_defaults(fn=cmd_logs)

    c = sub.add_parser("cancel", help="stop a submitted job (finished chunks are kept)")
    c.add_argument("job_id", help="the id `geoseg submit` printed (raysubmit_...)")
    _address(c)
    c.set_defaults(fn=cmd_cancel)
