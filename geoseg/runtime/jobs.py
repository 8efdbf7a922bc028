"""Submitting region jobs to a Ray cluster through the Ray Jobs API, and following them.

A job is ``python -m workflows.run_region CONFIG ...`` run by the cluster's job server on the head
node. Only the code travels as the job's ``runtime_env`` working dir: the ``geoseg`` package,
``workflows/`` and the job config (see :mod:`geoseg.runtime.upload`); the cluster's nodes must
already have geoseg's dependencies (``infra/Dockerfile``). The image and the outputs are not
shipped: they must be on storage every node can read and write (a shared filesystem or object
storage), which is why relative image, output, region and model paths are refused here.

A cluster with Ray token authentication (``RAY_AUTH_MODE=token``) answers 401/403 to a client
without the token; that becomes one :class:`~geoseg.errors.ClusterAuthError` line naming the
variables to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.config import JobConfig, load_job_config
from geoseg.errors import (
    ClusterAuthError,
    ClusterError,
    ConfigError,
    InputError,
    MissingDependencyError,
)
from geoseg.runtime.provenance import COMMIT_ENV, code_version, source_root
from geoseg.runtime.upload import MAX_UPLOAD_MB, UploadPlan, check_size, plan_upload, staged
from geoseg.sources.remote import redact

log = logging.getLogger(__name__)

ENTRY_MODULE = "workflows.run_region"
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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
    max_upload_mb: float = MAX_UPLOAD_MB


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


@contextlib.contextmanager
def _without(names: Sequence[str]) -> Iterator[None]:
    """The environment without ``names`` for the block (restored after it)."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def client(address: str | None) -> Any:
    """A ``JobSubmissionClient`` for the cluster (checks that the job server answers)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise MissingDependencyError("cluster commands need Ray, which is not installed: "
                                     "pip install 'geoseg[cluster]'") from exc

    url = resolve_address(address)
    with authenticated(url), _without(ADDRESS_ENVS if address else ()):
        try:  # (Ray's client prefers RAY_ADDRESS to the URL it is given: --address wins here)
            return JobSubmissionClient(url)
        except (ConnectionError, RuntimeError, OSError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Ray job server at {url} ({_first_line(exc)}): "
                               "start the cluster with the dashboard (ray start --head "
                               "--include-dashboard=true) and pass its URL (port 8265 by "
                               "default)") from None


AUTH_HELP = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (or "
             "RAY_AUTH_TOKEN_PATH to a file holding it); on KubeRay: RAY_AUTH_TOKEN=$(kubectl "
             "get secret geoseg-ray-token -o jsonpath='{.data.auth_token}' | base64 -d)")


def auth_error(url: str | None, status: int | None) -> ClusterAuthError:
    """The one-line error for a 401 (no token sent) or 403 (wrong token) from the job server."""
    where = f"the Ray job server at {url}" if url else "the Ray job server"
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if status == 403:
        what = "rejected the authentication token (403)"
        todo = ("check that RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (else ~/.ray/auth_token) holds "
                "the cluster's current token")
    else:
        what = "requires token authentication (401)"
        todo = AUTH_HELP if mode.lower() != "token" else (
            "RAY_AUTH_MODE=token is set but no token was found: set RAY_AUTH_TOKEN to the "
            "cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding it)")
    return ClusterAuthError(f"{where} {what}: {todo}")


@contextlib.contextmanager
def authenticated(url: str | None) -> Iterator[None]:
    """Turn Ray's ``AuthenticationError`` (and a refused log stream) into one
    :class:`ClusterAuthError` line."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        msg = str(getattr(exc, "message", "")) or ""
        raise auth_error(url, 403 if msg.startswith("Authentication failed") else 401) from None


def project_root(working_dir: Path | None = None) -> Path:
    """The directory the code is taken from: it must hold ``geoseg/`` and ``workflows/``."""
    root = (working_dir or source_root()).resolve()
    if not (root / "workflows" / "run_region.py").is_file() or not (root / "geoseg").is_dir():
        raise InputError(f"{root} is not a geoseg source tree (no workflows/run_region.py): "
                         "pass --working-dir with the project's root directory")
    return root


def upload_plan(sub: Submission) -> UploadPlan:
    """What :func:`submit` would ship for ``sub`` (nothing is sent)."""
    return plan_upload(project_root(sub.working_dir), sub.config)


#: Seconds Ray's job supervisor waits after ``geoseg cancel``'s SIGTERM before it SIGKILLs the
#: job (Ray's default 3): the job stops its actors and writes "cancelled" into its manifest in
#: that time, which took longer than 3 s on a loaded 2-core machine and left "running" behind.
#: The supervisor takes it from the job's runtime_env.
STOP_WAIT_S = 30


def runtime_env(working_dir: Path, root: Path) -> dict[str, Any]:
    """The job's runtime_env: the staged code as working dir, the code version for the
    manifest (the shipped copy has no .git), and time to stop cleanly when cancelled."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    commit = code_version(root).get("git_commit")
    if commit:
        env[COMMIT_ENV] = str(commit)
    return {"working_dir": str(working_dir), "env_vars": env}


def _is_url(p: str) -> bool:
    return "://" in p


def check_cluster_paths(cfg: JobConfig) -> None:
    """Paths the cluster must resolve: absolute (shared storage) or URLs, never relative (they
    would resolve inside the job's temporary working dir, which holds only the code)."""
    checks = [("image", image, "pass --image with") for image in cfg.images]
    checks.append(("output", cfg.output, "pass --output with"))
    if cfg.region is not None and cfg.region.file:
        checks.append(("region file", cfg.region.file, "give the region file as"))
    for m in cfg.models:
        if "/" in m or Path(m).exists():  # a bundle directory, not a built-in name
            checks.append(("model", m, "give the bundle directory as"))
    for what, value, todo in checks:
        if not _is_url(value) and not Path(value).is_absolute():
            raise ConfigError(
                f"{what} {value!r} is a relative path: on a cluster it would resolve inside the "
                f"job's temporary working dir, which holds only the code; {todo} an absolute "
                "path on storage every node mounts (or an object-store URL)")


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
    """Validate the config here, stage and ship the code, start the job; returns the job id."""
    cfg = load_job_config(sub.config, image=sub.image, output=sub.output)
    check_cluster_paths(cfg)
    root = project_root(sub.working_dir)
    plan = plan_upload(root, sub.config)
    check_size(plan, sub.max_upload_mb)
    c = client(sub.address)
    version = code_version(root)
    meta = {"geoseg_version": str(version["geoseg_version"]),
            "git_commit": str(version["git_commit"] or ""), "config": sub.config.name,
            "output": cfg.output}
    ep = entrypoint(sub, root, cfg)
    log.info("submitting %s with %d files (%.1f MB)", redact(ep), len(plan.files), plan.mb)
    with staged(plan) as work, authenticated(resolve_address(sub.address)):
        try:
            return str(c.submit_job(entrypoint=ep, runtime_env=runtime_env(work, root),
                                    submission_id=sub.submission_id, metadata=meta))
        except (ConnectionError, RuntimeError, OSError, ValueError) as exc:
            if sub.submission_id and _known_job(c, sub.submission_id):
                raise ClusterError(f"the cluster already has a job {sub.submission_id!r}: "
                                   "pick another --job-id (geoseg status lists the jobs)"
                                   ) from None
            why = _first_line(exc, last=True)
            raise ClusterError(f"the job server refused the job ({why}): check `geoseg status` "
                               "and the dashboard; a repeated --job-id is refused") from None


def state(job_id: str, address: str | None = None, *, c: Any = None) -> JobState:
    c = c or client(address)
    with authenticated(_url(c, address)):
        try:
            info = c.get_job_info(job_id)
        except (RuntimeError, OSError) as exc:
            raise _job_error(job_id, exc) from None
    return JobState(job_id, str(getattr(info.status, "value", info.status)), info.message or "",
                    info.entrypoint, _ms(info.start_time), _ms(info.end_time),
                    info.driver_exit_code, dict(info.metadata or {}))


def logs(job_id: str, address: str | None = None, *, c: Any = None) -> str:
    c = c or client(address)
    with authenticated(_url(c, address)):
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

    import aiohttp

    with authenticated(_url(c, address)):
        try:
            asyncio.run(tail())
        except aiohttp.ClientResponseError as exc:  # the websocket handshake, e.g. 401
            if exc.status in (401, 403):
                raise auth_error(_url(c, address), exc.status) from None
            raise _job_error(job_id, exc) from None
        except (RuntimeError, OSError) as exc:
            raise _job_error(job_id, exc) from None


def cancel(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    c = client(address)
    with authenticated(_url(c, address)):
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


def _url(c: Any, address: str | None) -> str | None:
    """The job server's URL, for messages (the client's own when it has one)."""
    return getattr(c, "_address", None) or address


def _ms(t: int | None) -> float | None:
    return t / 1000 if t else None


def _known_job(c: Any, job_id: str) -> bool:
    try:
        c.get_job_info(job_id)
    except Exception:  # (a 404: no such job; anything else: not known either)
        return False
    return True


def _first_line(exc: BaseException, last: bool = False) -> str:
    """The first (``last``: the last) non-empty line of ``exc``: a job server's error body is
    a Python traceback, whose first line says only "Traceback (most recent call last):"."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1 if last else 0] if lines else type(exc).__name__)[:300]


def _job_error(job_id: str, exc: BaseException) -> ClusterError:
    text = str(exc)
    if "404" in text or "does not exist" in text:
        return ClusterError(f"the cluster knows no job {job_id!r}: list jobs with "
                            "`ray job list --address URL`")
    return ClusterError(f"job {job_id}: the job server failed ({_first_line(exc)}): check that "
                        "the cluster is up")
