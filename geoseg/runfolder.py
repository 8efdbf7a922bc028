"""Where a run's files live: a local folder, or a prefix in object storage.

:func:`open_run_folder` prepares and locks ``--out`` for a job and says where each kind of
output goes. A local folder is written as it always was: exports are built in place and
"published" by doing nothing. For ``s3://``/``gs://``/``az://`` the Zarr store is written
straight from the workers (one PUT per chunk object); the GeoPackage, COGs, quicklook, summary
and STAC item are built in a local temporary folder (``$TMPDIR``: it needs room for them) and
uploaded whole, in the order that keeps a partial run from ever looking complete: chunks,
exports, ``summary.json``, ``stac-item.json``, the manifest's ``complete``, the store's
``geoseg_complete``.

:func:`fetch_run` brings a run in object storage to a local folder, for the readers that work on
files (``geoseg change``, ``geoseg eval``, :func:`geoseg.open_run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from geoseg.errors import InputError
from geoseg.layout import LOCK, MANIFEST, STATE, STORE, RunLayout
from geoseg.manifest import RunManifest, start, start_objects
from geoseg.objstore import ObjectFolder, ObjectLock, is_object_url, object_errors
from geoseg.outdir import FolderLock, prepare_folder, remove_output, storage_errors

log = logging.getLogger(__name__)


class RunFolder(Protocol):
    where: str  # the folder or URL a user gave (what messages and the summary name)
    layout: RunLayout  # where outputs are built: the folder itself, or a local staging folder
    store: str  # the Zarr store: a path, or a URL the workers write to
    remote: bool

    def errors(self, name: str) -> contextlib.AbstractContextManager[None]:
        """One-line StorageErrors for writing the output ``name``."""
        ...

    def publish(self, built: Path) -> str:
        """Make a file built under ``layout`` part of the run; returns where it now is."""
        ...

    def discard(self, name: str) -> None:
        """Remove the output ``name`` (absent: nothing to do)."""
        ...

    def store_exists(self) -> bool: ...

    def detach_store_links(self) -> None:
        """A store that is a symlink, or holds one, is removed (the links, never their targets)
        so that the run rewrites it inside the folder instead of writing through them."""
        ...

    def start_manifest(self, data: dict[str, Any], *, overwrite: bool, resume: bool,
                       protect: Iterable[str]) -> RunManifest: ...


class LocalFolder:
    """A run folder on a local or shared file system (everything built in place)."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self.layout = RunLayout(root)
        self.store = str(self.layout.store)

    def errors(self, name: str) -> contextlib.AbstractContextManager[None]:
        return storage_errors(self.layout.root / name)

    def publish(self, built: Path) -> str:
        return str(built)

    def discard(self, name: str) -> None:
        with storage_errors(self.layout.root / name):
            remove_output(self.layout.root / name)

    def store_exists(self) -> bool:
        return Path(self.store).exists()

    def detach_store_links(self) -> None:
        store = Path(self.store)
        links = [store] if store.is_symlink() else (
            [p for p in store.rglob("*") if p.is_symlink()] if store.is_dir() else [])
        if not links:
            return
        log.warning("%s is or holds a symlink (e.g. %s): geoseg writes only inside --out, so "
                    "the store is rebuilt there and its chunks recomputed", store, links[0])
        with storage_errors(store):
            remove_output(store)

    def start_manifest(self, data: dict[str, Any], *, overwrite: bool, resume: bool,
                       protect: Iterable[str]) -> RunManifest:
        return start(self.root, data, overwrite=overwrite, resume=resume,
                     protect=[Path(p) for p in protect if "://" not in p])


class ObjectRunFolder:
    """A run under an object-storage prefix; exports are staged in ``staging`` and uploaded."""

    remote = True

    def __init__(self, url: str, staging: Path) -> None:
        self.folder = ObjectFolder(url)
        self.where = self.folder.url
        self.layout = RunLayout(staging)
        self.store = self.folder.child(STORE)

    def errors(self, name: str) -> contextlib.AbstractContextManager[None]:
        return object_errors(self.folder.child(name))

    def publish(self, built: Path) -> str:
        name = built.relative_to(self.layout.root).as_posix()
        return self.folder.upload(built, name)

    def discard(self, name: str) -> None:
        self.folder.delete_tree(name)

    def detach_store_links(self) -> None:
        pass  # object storage has no links

    def store_exists(self) -> bool:
        # .zmetadata is init_store's last write: without it the store is redone from scratch
        return self.folder.head(f"{STORE}/.zmetadata") is not None

    def start_manifest(self, data: dict[str, Any], *, overwrite: bool, resume: bool,
                       protect: Iterable[str]) -> RunManifest:
        return start_objects(self.folder, data, overwrite=overwrite, resume=resume,
                             protect=[p for p in protect if is_object_url(p)])


@contextlib.contextmanager
def open_run_folder(output: str) -> Iterator[RunFolder]:
    """``--out`` prepared and locked for one job (released on exit); for object storage, the
    bucket is checked first (a missing bucket is one line) and a staging folder made."""
    if not is_object_url(output):
        # absolute: workers (threads here, Ray processes) may not share this process's cwd
        root = prepare_folder(Path(output).absolute())
        with FolderLock(root):
            yield LocalFolder(root)
        return
    folder = ObjectFolder(output)
    folder.check()
    with ObjectLock(folder), tempfile.TemporaryDirectory(prefix="geoseg-out-") as tmp:
        yield ObjectRunFolder(output, Path(tmp))


def read_json(output: str, name: str) -> dict[str, Any] | None:
    """The JSON document ``name`` (e.g. ``summary.json``) of the run in ``output`` (a folder or
    URL); None when there is none or it cannot be read."""
    try:
        if is_object_url(output):
            raw = ObjectFolder(output).read(name)
            data = json.loads(raw) if raw is not None else None
        else:
            data = json.loads((Path(output) / name).read_text())
    except (OSError, ValueError):  # StorageError is an OSError
        return None
    return data if isinstance(data, dict) else None


def read_manifest(output: str) -> dict[str, Any] | None:
    """The manifest of the run in ``output`` (a folder or URL), None when there is none."""
    return read_json(output, MANIFEST)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "geoseg" / "runs"


def fetch_run(url: str, dest: Path | None = None) -> Path:
    """A local copy of the run at ``url`` (its manifest's outputs, not the chunk records),
    refreshed object by object: one already here with the same size and ETag is kept.

    ``dest`` defaults to ``$XDG_CACHE_HOME/geoseg/runs/<hash of the URL>``. The copy holds what
    the bucket holds: an incomplete run stays incomplete (``Run.complete`` says so)."""
    folder = ObjectFolder(url)
    folder.check()
    raw = folder.read(MANIFEST)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or "result_key" not in data:
        raise InputError(f"{folder.url} is not a geoseg run (no {MANIFEST}): pass the URL "
                         "given to `geoseg run --out`")
    dest = Path(dest) if dest is not None else default_cache() / hashlib.sha256(
        folder.url.encode()).hexdigest()[:16]
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / ".geoseg-fetched.json"
    try:
        index: dict[str, list[Any]] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    listing = {name: meta for name, meta in folder.listing().items()
               if name != LOCK and name.split("/", 1)[0] != STATE and name != MANIFEST}
    inside = dest.resolve()
    for name in [*listing, *index]:  # a key like "../x" must not write or delete outside dest
        if not (dest / name).resolve().is_relative_to(inside):
            raise InputError(f"{folder.url}: object {name!r} would land outside {dest}; "
                             "this is not a run geoseg wrote")
    # objects of an earlier copy that the bucket no longer holds go (a rerun replaced them)
    for name in set(index) - set(listing):
        with contextlib.suppress(FileNotFoundError):
            (dest / name).unlink()
        index.pop(name)
    todo = [n for n, m in listing.items() if index.get(n) != [m.size, m.e_tag]
            or not (dest / n).is_file() or (dest / n).stat().st_size != m.size]

    def get(name: str) -> None:
        folder.download(name, dest / name)

    with ThreadPoolExecutor(16, thread_name_prefix="geoseg-fetch") as pool:
        list(pool.map(get, todo))
    index.update({n: [m.size, m.e_tag] for n, m in listing.items()})
    (dest / MANIFEST).write_bytes(raw or b"")  # last: the copy says what the bucket said
    index_path.write_text(json.dumps(index))
    log.info("fetched %d of %d object(s) of %s into %s", len(todo), len(listing), folder.url,
             dest)
    return dest


def local_run(path: str | Path) -> Path:
    """``path`` as a local run folder: a URL is fetched (:func:`fetch_run`), a path is kept."""
    return fetch_run(str(path)) if is_object_url(path) else Path(path)


__all__ = ["LocalFolder", "ObjectRunFolder", "RunFolder", "fetch_run", "local_run",
           "open_run_folder", "read_json", "read_manifest"]
