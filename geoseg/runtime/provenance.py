"""Which code produced a result: geoseg's version and, when known, the git commit.

The commit comes from the source checkout geoseg is imported from; where there is none (a job's
shipped working dir, a container image), from ``GEOSEG_GIT_COMMIT``, which ``geoseg submit`` and
the worker image set.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from geoseg import __version__

COMMIT_ENV = "GEOSEG_GIT_COMMIT"


def source_root() -> Path:
    """The directory that holds the ``geoseg`` package (a checkout's root when run from one)."""
    return Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    try:
        # --no-optional-locks: reading the state must never rewrite the index
        res = subprocess.run([git, "--no-optional-locks", "-C", str(root), *args],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def _checkout(root: Path) -> tuple[str | None, bool | None]:
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def code_version(root: Path | None = None) -> dict[str, Any]:
    """``{"geoseg_version", "git_commit", "git_dirty"}``; commit and dirty are None when unknown.

    ``git_dirty`` is True when tracked files differ from the commit (the result may not be
    reproducible from the commit alone)."""
    commit, dirty = _checkout(root or source_root())
    if commit is None:
        commit = os.environ.get(COMMIT_ENV) or None
    return {"geoseg_version": __version__, "git_commit": commit, "git_dirty": dirty}
