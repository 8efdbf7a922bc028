"""Submitting region jobs to a Ray cluster through the Ray Jobs API, and following them.

A job is ``python -m workflows.run_region CONFIG ...`` run by the cluster's job server on the head
node, with the project shipped as the job's ``runtime_env`` working dir (the cluster's nodes must
already have geoseg's dependencies: see ``infra/Dockerfile``). The image and the outputs are not
shipped: they must be on storage every node can read and write (a shared filesystem or object
storage), which is why relative image/output paths are refused here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.config import JobConfig, load_job_config
from geoseg.errors import ConfigError, GeoSegError, InputError
from geoseg.runtime.provenance import COMMIT_ENV, code_version, source_root

log = logging.getLogger(__name__)

ENTRY_MODULE = "workflows.run_region"
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# gitignore-style patterns, relative to the working dir; the project's .gitignore applies too
EXCLUDES = (".git", ".venv", "venv", "__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache",
            ".ruff_cache", ".hypothesis", "*.egg-info", "build/", "dist/", "/demo/", "/out/",
            "/outputs/", "/runs/", "/data/", "*.zarr", "*.tif", "*.tiff", "*.gpkg", "*.vrt",
            ".ipynb_checkpoints", ".benchmarks")
MAX_FILE_MB = 20.0  # larger files are left out of the shipped working dir (bundles are ~1 MB)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(GeoSegError, ConnectionError):
    """The Ray cluster or its job server cannot be reached, or does not know the job."""


@dataclass(frozen=True)
class Submission:
    """What to run where. ``config`` is a job YAML on this machine."""

    config: Path
    address: str | None = None
    image: str | None = None
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    working_dir: Path | None = None
    submission_id: str | None = None
    max_file_mb: float = MAX_FILE_MB


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str
    message: str
    entrypoint: str
    start_time: float | None
    end_time: float | None
    exit_code: int | None
    metadata: dict[str, str]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def resolve_address(address: str | None) -> str:
    """The job server's URL: ``address``, else RAY_API_SERVER_ADDRESS or RAY_ADDRESS."""
    addr = address or next((os.environ[k] for k in ADDRESS_ENVS if os.environ.get(k)), None)
    if not addr:
        raise ClusterError("no Ray cluster given: pass --address http://HEAD:8265 or set "
                           "RAY_ADDRESS to the dashboard's URL")
    if addr.startswith("ray://") or addr == "auto":
        raise ClusterError(f"{addr!r} is not a job server address: give the dashboard URL, "
                           "e.g. --address http://HEAD:8265")
    return addr if "://" in addr else f"http://{addr}"


def client(address: str | None) -> Any:
    """A ``JobSubmissionClient`` for the cluster (checks that the job server answers)."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray job server at {url} ({_first_line(exc)}): "
                           "start the cluster with the dashboard (ray start --head "
                           "--include-dashboard=true) and pass its URL (port 8265 by "
                           "default)") from None


def project_root(working_dir: Path | None = None) -> Path:
    """The directory shipped to the cluster: it must hold ``geoseg/`` and ``workflows/``."""
    root = (working_dir or source_root()).resolve()
    if not (root / "workflows" / "run_region.py").is_file() or not (root / "geoseg").is_dir():
        raise InputError(f"{root} is not a geoseg source tree (no workflows/run_region.py): "
                         "pass --working-dir with the project's root directory")
    return root


def large_files(root: Path, limit_mb: float) -> list[str]:
    """Files above ``limit_mb`` under ``root`` (outside the always-excluded directories), as
    anchored exclude patterns."""
    skip = {".git", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
            ".ruff_cache", ".hypothesis", "build", "dist", "demo", "out", "outputs", "runs",
            "data"}
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".zarr")]
        for f in filenames:
            p = Path(dirpath) / f
            try:
                big = p.stat().st_size > limit_mb * 2**20
            except OSError:
                continue
            if big:
                out.append("/" + p.relative_to(root).as_posix())
    return sorted(out)


def runtime_env(root: Path, max_file_mb: float = MAX_FILE_MB) -> dict[str, Any]:
    """The job's runtime_env: the project as working dir (no caches, data or outputs), the code
    version for the manifest (the shipped copy has no .git)."""
    big = large_files(root, max_file_mb)
    for p in big:
        log.warning("not shipping %s (> %.0f MB): put it on shared storage", p, max_file_mb)
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    commit = code_version(root).get("git_commit")
    if commit:
        env[COMMIT_ENV] = str(commit)
    return {"working_dir": str(root), "excludes": [*EXCLUDES, *big], "env_vars": env}


def _is_url(p: str) -> bool:
    return "://" in p


def _check_cluster_paths(cfg: JobConfig) -> None:
    for what, value, flag in (("image", cfg.image, "--image"), ("output", cfg.output, "--output")):
        if not _is_url(value) and not Path(value).is_absolute():
            raise ConfigError(
                f"{what} {value!r} is a relative path: on a cluster it would resolve inside the "
                f"job's temporary working dir; pass {flag} with an absolute path on storage every "
                "node mounts (or an object-store URL)")


def entrypoint(sub: Submission, root: Path, cfg: JobConfig) -> str:
    """``python -m workflows.run_region ...``: the config by its path inside the shipped
    working dir, else (a config kept elsewhere) inline as validated JSON."""
    cfg_path = sub.config.resolve()
    args = ["python", "-m", ENTRY_MODULE]
    if cfg_path.is_relative_to(root):
        args.append(cfg_path.relative_to(root).as_posix())
        if sub.image:
            args += ["--image", sub.image]
        if sub.output:
            args += ["--output", sub.output]
    else:
        args += ["--config-json", json.dumps(cfg.model_dump(mode="json"), sort_keys=True,
                                             separators=(",", ":"))]
    if sub.resume:
        args.append("--resume")
    if sub.overwrite:
        args.append("--overwrite")
    return shlex.join(args)


def submit(sub: Submission) -> str:
    """Validate the config here, ship the project, start the job; returns the job id."""
    cfg = load_job_config(sub.config, image=sub.image, output=sub.output)
    _check_cluster_paths(cfg)
    root = project_root(sub.working_dir)
    c = client(sub.address)
    version = code_version(root)
    meta = {"geoseg_version": str(version["geoseg_version"]),
            "git_commit": str(version["git_commit"] or ""), "config": sub.config.name,
            "output": cfg.output}
    ep = entrypoint(sub, root, cfg)
    log.info("submitting %s", ep)
    try:
        return str(c.submit_job(entrypoint=ep, runtime_env=runtime_env(root, sub.max_file_mb),
                                submission_id=sub.submission_id, metadata=meta))
    except (ConnectionError, RuntimeError, OSError, ValueError) as exc:
        raise ClusterError(f"the job server refused the job ({_first_line(exc)}): check "
                           "`geoseg status` and the dashboard; a repeated --job-id is refused"
                           ) from None


def state(job_id: str, address: str | None = None, *, c: Any = None) -> JobState:
    c = c or client(address)
    try:
        info = c.get_job_info(job_id)
    except (RuntimeError, OSError) as exc:
        raise _job_error(job_id, exc) from None
    return JobState(job_id, str(getattr(info.status, "value", info.status)), info.message or "",
                    info.entrypoint, _ms(info.start_time), _ms(info.end_time),
                    info.driver_exit_code, dict(info.metadata or {}))


def logs(job_id: str, address: str | None = None, *, c: Any = None) -> str:
    c = c or client(address)
    try:
        return str(c.get_job_logs(job_id))
    except (RuntimeError, OSError) as exc:
        raise _job_error(job_id, exc) from None


def follow_logs(job_id: str, address: str | None, emit: Callable[[str], None], *,
                c: Any = None) -> None:
    """Stream the job's log to ``emit`` until the job ends (or the stream breaks)."""
    c = c or client(address)
    state(job_id, c=c)  # a clear error for an unknown job before streaming

    async def tail() -> None:
        async for text in c.tail_job_logs(job_id):
            emit(text)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as exc:
        raise _job_error(job_id, exc) from None


def cancel(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    c = client(address)
    try:
        return bool(c.stop_job(job_id))
    except (RuntimeError, OSError) as exc:
        raise _job_error(job_id, exc) from None


def wait(job_id: str, address: str | None, emit: Callable[[str], None], *,
         poll_s: float = 2.0, timeout_s: float | None = None) -> JobState:
    """Stream the job's log to ``emit`` until it ends; return its final state."""
    c = client(address)
    t0 = time.monotonic()
    follow_logs(job_id, address, emit, c=c)
    while not (st := state(job_id, c=c)).done:  # the stream broke, or the end is not yet recorded
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise ClusterError(f"job {job_id} still {st.status} after {timeout_s:.0f} s: "
                               f"follow it with `geoseg logs {job_id} --follow`")
        time.sleep(poll_s)
    return st


def failed_chunks(log_text: str) -> int | None:
    """N from run_region's last line "completed with N failed chunks", if present."""
    import re

    found = re.findall(r"completed with (\d+) failed chunks", log_text)
    return int(found[-1]) if found else None


def _ms(t: int | None) -> float | None:
    return t / 1000 if t else None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _job_error(job_id: str, exc: BaseException) -> ClusterError:
    text = str(exc)
    if "404" in text or "does not exist" in text:
        return ClusterError(f"the cluster knows no job {job_id!r}: list jobs with "
                            "`ray job list --address URL`")
    return ClusterError(f"job {job_id}: the job server failed ({_first_line(exc)}): check that "
                        "the cluster is up")
