"""What ``geoseg submit`` ships to a Ray cluster as the job's working directory.

An allow-list, not a deny-list: only the ``geoseg`` package, ``workflows/`` and the job config
travel, so a project folder's ``.env``, cloud credentials, ssh keys, data or a virtual
environment never do (and a non-editable install does not ship site-packages). Inside those
folders, a git checkout's ``.gitignore`` applies, and dotfiles, credential-like names and caches
are left out whether ignored or not. The files are copied into a staging directory that becomes
the job's ``working_dir``: Ray's ``excludes`` is a deny-list over the whole folder, which cannot
say "only these two folders" and would still walk (and hash) everything else.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from geoseg.errors import InputError

log = logging.getLogger(__name__)

SHIPPED_DIRS = ("geoseg", "workflows")
MAX_UPLOAD_MB = 50.0
# never shipped, whatever .gitignore says: matched against every path component (case-insensitive)
SECRET_PATTERNS = (".*", "*.env", "env.*", "*.pem", "*.key", "*.crt", "*.p12", "*.pfx",
                   "*.jks", "*.keystore", "*.kdbx", "id_rsa*", "id_dsa*", "id_ecdsa*",
                   "id_ed25519*", "*.ppk", "_netrc", "credentials", "credentials.*",
                   "secrets", "secrets.*", "*secret*.json", "*secret*.yaml", "*secret*.yml",
                   "service-account*.json", "kubeconfig*", "*.tfstate", "*.tfvars")
JUNK_PATTERNS = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", "*.so.tmp", "*~", "*.swp")


@dataclass(frozen=True)
class UploadFile:
    rel: str  # POSIX path inside the working dir
    src: Path
    size: int


@dataclass(frozen=True)
class UploadPlan:
    """The files that would be shipped, from where, and whether .gitignore was applied."""

    root: Path
    files: tuple[UploadFile, ...]
    gitignore: bool

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def mb(self) -> float:
        return self.size / 2**20

    def largest(self, n: int = 5) -> list[UploadFile]:
        return sorted(self.files, key=lambda f: -f.size)[:n]


def is_excluded(rel: str) -> bool:
    """True for a path (relative, POSIX) that must never be shipped: a dotfile or dot-folder,
    a credential-like name, or a cache, in any component."""
    for part in PurePosixPath(rel).parts:
        low = part.lower()
        if any(fnmatch.fnmatchcase(low, p) for p in (*SECRET_PATTERNS, *JUNK_PATTERNS)):
            return True
    return False


def _git_listed(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files under the shipped folders, when ``root`` is
    a git checkout's top level (None otherwise)."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    try:
        res = subprocess.run(
            [git, "--no-optional-locks", "-C", str(root), "ls-files", "-z", "--cached",
             "--others", "--exclude-standard", "--", *SHIPPED_DIRS],
            capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("git ls-files failed in %s (%s): .gitignore not applied", root, exc)
        return None
    if res.returncode != 0:
        log.warning("git ls-files failed in %s: .gitignore not applied", root)
        return None
    return sorted({p for p in res.stdout.decode().split("\0") if p})


def _walked(root: Path) -> list[str]:
    out: list[str] = []
    for top in SHIPPED_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):  # symlinked dirs not followed
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            dirnames[:] = sorted(d for d in dirnames if not is_excluded(f"{rel_dir}/{d}"))
            out += [f"{rel_dir}/{f}" for f in filenames]
    return sorted(out)


def _entry(root: Path, rel: str) -> UploadFile | None:
    src = root / rel
    if src.is_symlink():
        log.warning("not shipping %s: a symbolic link (copy the file itself)", rel)
        return None
    try:
        st = src.stat()
    except OSError:  # listed by git but deleted from the work tree
        return None
    return UploadFile(rel, src, st.st_size) if src.is_file() else None


def plan_upload(root: Path, config: Path | None = None) -> UploadPlan:
    """The upload set: ``geoseg/`` and ``workflows/`` under ``root`` (minus ignored, secret and
    cache files) and ``config`` at its path relative to ``root`` when it lies inside it."""
    listed = _git_listed(root)
    rels = listed if listed is not None else _walked(root)
    files = [f for r in rels if not is_excluded(r) and (f := _entry(root, r)) is not None]
    if config is not None:
        cfg = config.resolve()
        if cfg.is_relative_to(root):
            rel = cfg.relative_to(root).as_posix()
            if is_excluded(rel):
                raise InputError(f"refusing to ship the config {rel}: its name looks like a "
                                 "secret or dotfile; rename it")
            if rel not in {f.rel for f in files}:
                files.append(UploadFile(rel, cfg, cfg.stat().st_size))
    return UploadPlan(root, tuple(sorted(files, key=lambda f: f.rel)), listed is not None)


def check_size(plan: UploadPlan, max_mb: float) -> None:
    """Refuse an upload above ``max_mb`` (one line, naming the largest files)."""
    if plan.mb <= max_mb:
        return
    big = ", ".join(f"{f.rel} ({f.size / 2**20:.1f} MB)" for f in plan.largest(3))
    raise InputError(f"the upload would be {plan.mb:.1f} MB in {len(plan.files)} files, above "
                     f"--max-upload-mb {max_mb:g} (largest: {big}): put large files on shared "
                     "storage, or pass a larger --max-upload-mb")


@contextmanager
def staged(plan: UploadPlan) -> Iterator[Path]:
    """A temporary directory holding exactly the planned files (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="geoseg-upload-"))
    try:
        for f in plan.files:
            dst = tmp / f.rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.src, dst)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
