"""Safety of the output folder: one job per folder, writes that never follow links out of it, and
I/O errors that say what happened.

- :class:`FolderLock` is an exclusive lock file (``.geoseg.lock``, created atomically with the
  holder's host, PID and start time, its mtime refreshed every 30 s). A lock whose process is
  gone (same host: PID dead or reused; another host: no heartbeat for 5 minutes, e.g. a job
  retried on a fresh Kubernetes pod) is stale and taken over; a live one refuses the second job
  with one line.
- :func:`atomic_write_bytes` writes through a temporary name and ``os.replace``: a symlink at the
  destination is replaced, never followed, and a reader never sees half a file.
- :func:`storage_errors` turns ``OSError`` and GDAL/OGR write failures into a one-line
  :class:`~geoseg.errors.StorageError` that names the cause (disk full, permission) and the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from geoseg.errors import (
    GeoSegError,
    InputError,
    OutputExistsError,
    OutputLockedError,
    StorageError,
)

log = logging.getLogger(__name__)

LOW_SPACE_BYTES = 64 * 2**20  # below this, a failed write is reported as "disk full"


def process_start(pid: int) -> float | None:
    """When process ``pid`` of this host started (None: no such process, or not ours to ask);
    with the PID, it tells a live lock holder from a later process that reuses the PID."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no such process, or no permission to ask
        return None


HEARTBEAT_S = 30.0  # a held lock's mtime is refreshed this often
STALE_AFTER_S = 300.0  # a lock of another host untouched this long is stale


def holder_alive(holder: dict[str, Any], mtime: float | None = None) -> bool:
    """Whether the process recorded in a lock still runs: on this host, its PID (and start
    time); on another host (a retried Kubernetes job gets a new pod), its heartbeat."""
    if holder.get("host") != socket.gethostname():
        return mtime is None or time.time() - mtime < STALE_AFTER_S
    pid = int(holder.get("pid", -1))
    started = process_start(pid) if pid > 0 else None
    if started is None:
        return False
    recorded = holder.get("started")
    # a PID reused by a later process is not the holder
    return recorded is None or abs(float(recorded) - started) < 1.0


class FolderLock:
    """Exclusive lock on an output folder for the lifetime of a job."""

    def __init__(self, root: Path, name: str = ".geoseg.lock") -> None:
        self.path = Path(root) / name
        self.held = False
        self._beat: threading.Event | None = None

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def acquire(self, what: str = "geoseg run") -> FolderLock:
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": process_start(os.getpid()), "command": what, "since": time.time()}
        for _ in range(3):
            if self._create(me):
                self.held = True
                self._beat = threading.Event()
                threading.Thread(target=self._heartbeat, args=(self._beat,), daemon=True,
                                 name="geoseg-lock").start()
                return self
            holder = self._read()
            if holder is not None and holder_alive(holder, self._mtime()):
                raise OutputLockedError(
                    f"{self.path.parent} is in use by another geoseg job ({holder.get('command')}"
                    f", host {holder.get('host')}, pid {holder.get('pid')}): wait for it, or "
                    f"choose another --out; if that job is gone, delete {self.path}")
            self._break_stale(holder)
        raise OutputLockedError(f"could not lock {self.path.parent}: another job keeps taking "
                                "it; retry when it has finished")

    def _create(self, me: dict[str, Any]) -> bool:
        """Create the lock with its content in one step (link of a finished temporary file)."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-lock-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o644)  # readable by the group's other jobs, which must see it live
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}  # released meanwhile: try again
        except OSError:
            return {"host": "unknown (lock unreadable)", "pid": "?", "command": "?"}  # alive
        except ValueError:
            return None  # written by no geoseg (content is created in one step): stale
        return data if isinstance(data, dict) else None

    def _break_stale(self, holder: dict[str, Any] | None) -> None:
        if holder == {}:
            return
        log.warning("taking over the stale lock %s (%s)", self.path, holder)
        # move it aside, then check it is the lock judged stale: another process may have
        # broken that one and taken the folder in between; its live lock goes back
        aside = self.path.with_name(f".tmp-stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if holder is not None and moved != holder:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        os.unlink(aside)

    def release(self) -> None:
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def prepare_folder(root: Path) -> Path:
    """Create the output folder (one line when it cannot be a folder or cannot be written)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"--out {root} is a file, not a folder: choose a folder path")
    with storage_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write into {root} (permission denied): choose another "
                           "--out or fix its permissions")
    return root


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` by rename when the block ends without an error.

    The temporary file has a fresh unique name beside ``path`` (never a fixed name that a
    symlink could stand in for), so a symlink at ``path`` is replaced and never written through,
    and a failed or interrupted write leaves the earlier file as it was."""
    path = Path(path)
    with storage_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it: mkstemp's is 0600
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename (replaces a symlink there)."""
    with atomic_open(path) as f:
        f.write(data)


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's current umask. Linux shows it in /proc (no change to the process); elsewhere
    it can only be read by setting it, briefly, which is done under a lock so that two threads
    of geoseg's cannot leave the process with the wrong one."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8) & 0o777
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the strictest, should another thread create a file meanwhile
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_link(path: Path) -> None:
    """A symlink at ``path`` becomes a regular file with the same content (or goes away when its
    target is missing), so that later in-place writes stay inside the folder."""
    path = Path(path)
    if not path.is_symlink():
        return
    try:
        data = path.read_bytes()
    except OSError:
        path.unlink()
        return
    atomic_write_bytes(path, data)


def check_target(path: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse, before any work, to write ``path`` (named ``what`` in the message) where it holds
    a file that ``ours`` does not recognise as geoseg's own earlier output, or where its folder
    does not exist."""
    if (path.exists() or path.is_symlink()) and not ours(path):
        raise OutputExistsError(f"{what} {path} exists and geoseg did not write it: choose "
                                "another path (geoseg never overwrites files it did not write)")
    if not path.parent.is_dir():
        raise InputError(f"the folder of {what} {path} does not exist: create it or choose "
                         "another path")


def remove_output(path: Path) -> None:
    """Remove one output geoseg wrote: a directory tree, a file, or a symlink (never its target)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only file system"
    return ""


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def storage_error(exc: BaseException, path: Path) -> StorageError:
    """A one-line StorageError for a failed write at ``path``."""
    cause = _cause(exc)
    if not cause:
        free = _free_bytes(Path(path))
        if free is not None and free < LOW_SPACE_BYTES:
            cause = "disk full"
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    detail = lines[-1][:200] if lines else type(exc).__name__
    # "then rerun": a job adds how it resumes (see geoseg.job), other commands just rerun
    if cause == "disk full":
        err = StorageError(f"disk full writing {path}: free some space, then rerun")
    elif cause:
        err = StorageError(f"{cause} writing {path}: fix it, then rerun")
    else:
        err = StorageError(f"cannot write {path} ({detail}): fix it, then rerun")
    err.fatal = bool(cause)
    return err


def _write_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        from pyogrio.errors import DataLayerError, DataSourceError

        kinds += [DataSourceError, DataLayerError]
    with contextlib.suppress(ImportError):
        from rasterio.errors import RasterioError

        kinds.append(RasterioError)
    return tuple(kinds)


@contextlib.contextmanager
def storage_errors(path: Path, fatal_only: bool = False) -> Iterator[None]:
    """Turn write failures under ``path`` into one-line StorageErrors. ``fatal_only``: only
    those a retry cannot fix (disk full, permission, read-only); others (EIO, a stale NFS
    handle) propagate as they are, to be retried."""
    try:
        yield
    except StorageError:
        raise
    except _write_errors() as exc:
        if isinstance(exc, GeoSegError):
            raise
        err = storage_error(exc, Path(path))
        if fatal_only and not err.fatal:
            raise
        raise err from exc
