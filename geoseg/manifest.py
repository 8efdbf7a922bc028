"""The run manifest: plan + resolved config + per-chunk completion, next to the outputs.

``manifest.json`` is written once by the driver when a run starts and lists every output the run
may write (``outputs``); ``chunks.jsonl`` gets one line per finished chunk, appended and fsynced
by the driver (the single writer) *after* the chunk's Zarr write returned. Each line carries the
size and hash of the chunk's stored files, so ``--resume`` trusts a chunk only when its files are
exactly what was written, and recomputes any that is missing, truncated or different.

``--overwrite`` removes exactly the outputs the earlier manifest lists (and geoseg's temporary
files), never anything else; a folder geoseg did not write is refused.

A run in object storage (:class:`ObjectManifest`) keeps the same ``manifest.json`` (rewritten
whole: a PUT is atomic) and, since objects cannot be appended to, one small object per finished
chunk (``_geoseg/chunks/<id>.json``, the chunks.jsonl line) written by the driver after the
chunk's objects were written; ``--resume`` lists them and checks each chunk's objects against
its record (:func:`geoseg.store.damaged_chunks`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import InputError, OutputExistsError, ResumeError
from geoseg.layout import (
    CHUNKS,
    LOCK,
    MANIFEST,
    RECORDS,
    STAC_ITEM,
    STATE,
    RunLayout,
    record_name,
)
from geoseg.objstore import ObjectFolder
from geoseg.outdir import atomic_write_text, remove_output, replace_link, storage_errors

log = logging.getLogger(__name__)


class _Records:
    """What every manifest has: the document and the finished chunks' records."""

    data: dict[str, Any]
    done: dict[str, dict[str, Any]]

    @property
    def result_key(self) -> str:
        return str(self.data.get("result_key", ""))

    def forget(self, chunk_ids: Iterable[str]) -> None:
        """Stop trusting these chunks (their files did not verify): they are recomputed."""
        for cid in chunk_ids:
            self.done.pop(cid, None)


@dataclass
class Manifest(_Records):
    root: Path
    data: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, chunk_id: str, stats: dict[str, Any]) -> None:
        self.done[chunk_id] = stats
        line = json.dumps({"chunk": chunk_id, **stats}, sort_keys=True)
        path = self.root / CHUNKS
        with storage_errors(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())

    def update(self, **values: Any) -> None:
        self.data.update(values)
        _write_json(self.root / MANIFEST, self.data)


class ObjectManifest(_Records):
    """The manifest of a run in object storage (see the module docstring)."""

    def __init__(self, folder: ObjectFolder, data: dict[str, Any],
                 done: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder, self.data, self.done = folder, data, {} if done is None else done

    @property
    def root(self) -> str:
        return self.folder.url

    def record(self, chunk_id: str, stats: dict[str, Any]) -> None:
        line = json.dumps({"chunk": chunk_id, **stats}, sort_keys=True)
        self.folder.put(record_name(chunk_id), (line + "\n").encode())
        self.done[chunk_id] = stats  # only once the record is stored

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.folder.put(MANIFEST, _json_text(self.data).encode())


RunManifest = Manifest | ObjectManifest


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, _json_text(data))


def _entries(root: Path) -> list[Path]:
    """What the folder holds, without the lock of the job that is looking."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name != LOCK and not p.name.startswith(".tmp-"))


def has_results(root: Path) -> bool:
    """Whether ``root`` holds anything (the lock of a job looking at it aside)."""
    return bool(_entries(Path(root)))


def foreign_entries(root: Path) -> bool:
    """Whether ``root`` holds something and is not a run folder geoseg wrote (``geoseg run``
    into it would refuse)."""
    return has_results(root) and _is_ours(root) is None


def _is_ours(root: Path) -> dict[str, Any] | None:
    """The earlier manifest when geoseg wrote this folder, else None."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "result_key" in data else None


def outputs_of(data: dict[str, Any], root: Path) -> list[str]:
    """The names a run wrote or may write: its manifest's list (older manifests: the layout)."""
    listed = data.get("outputs")
    if isinstance(listed, list) and listed:
        return [str(n) for n in listed if "/" not in str(n) and str(n) not in ("", ".", "..")]
    return RunLayout(root).outputs(list(data.get("models", {})))


def _existing(where: str, first: str | None, ours: bool, *, resume: bool, overwrite: bool,
              noun: str) -> str:
    """What to do with an ``--out`` that holds ``first`` (None: nothing): ``new``, ``resume``
    or ``overwrite``; refuses what geoseg did not write, and an earlier run unless told."""
    if first is None:
        return "new"
    if not ours:
        raise OutputExistsError(
            f"{where} holds {noun}s geoseg did not write (e.g. {first}): choose a new or empty "
            f"--out (geoseg never deletes {noun}s it did not write)")
    if resume:
        return "resume"
    if not overwrite:
        raise OutputExistsError(
            f"{where} already holds the results of a geoseg run: pass --resume to continue "
            f"that run or --overwrite to replace its outputs (resume=True / overwrite=True in "
            f"Python; other {noun}s are kept)")
    return "overwrite"


def start(root: Path, data: dict[str, Any], *, overwrite: bool, resume: bool,
          protect: Iterable[Path] = ()) -> Manifest:
    """Open the manifest for a run in ``root`` (created and locked by the caller).

    Refuses a folder geoseg did not write, and a finished or partial run unless told to
    ``resume`` it or ``overwrite`` it; ``protect`` (the run's inputs) is never removed."""
    root = Path(root)
    layout = RunLayout(root)
    entries = _entries(root)
    earlier = _is_ours(root)
    # a run that failed before finishing any chunk (a model file that does not fit its
    # architecture, found as the model loads) left nothing to keep: the same command starts anew
    overwrite = overwrite or (not resume and _failed_empty(layout, earlier))
    todo = _existing(str(root), entries[0].name if entries else None, earlier is not None,
                     resume=resume, overwrite=overwrite, noun="file")
    if todo == "resume":
        return load(root, expect_key=str(data["result_key"]))
    if todo == "overwrite" and earlier is not None:
        _remove_outputs(root, outputs_of(earlier, root), protect)
    new = dict(data)
    new["outputs"] = layout.outputs(list(data.get("models", {})))
    m = Manifest(root, new)
    _write_json(layout.manifest, m.data)
    atomic_write_text(layout.chunks, "")
    return m


def _failed_empty(layout: RunLayout, earlier: dict[str, Any] | None) -> bool:
    """Whether the run in ``layout`` failed before it finished a single chunk."""
    if earlier is None or earlier.get("status") != "failed":
        return False
    try:
        return not layout.chunks.read_text().strip()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _remove_outputs(root: Path, names: list[str], protect: Iterable[Path]) -> None:
    keep = [q for p in protect for q in (Path(p).absolute(), Path(p).resolve())]
    temps = [t for n in names for t in (f".partial-{n}", f".tiles-{Path(n).stem}.tif")]
    doomed = [root / n for n in [*names, *temps]
              if (root / n).exists() or (root / n).is_symlink()]
    for p in doomed:
        target = p.resolve() if not p.is_symlink() else p.absolute()
        for k in keep:
            if k == target or target in k.parents:
                raise InputError(f"--overwrite would delete {p}, which this run reads: copy it "
                                 "elsewhere or write to another --out")
    for p in doomed:
        log.info("--overwrite: removing %s", p)
        remove_output(p)
    others = _entries(root)
    if others:
        log.info("--overwrite kept %d file(s) geoseg did not write (e.g. %s)", len(others),
                 others[0].name)


def load(root: Path, expect_key: str | None = None) -> Manifest:
    layout = RunLayout(root)
    if not layout.manifest.is_file():
        raise ResumeError(f"{root} has no {MANIFEST}: it was not written by geoseg run; "
                          "choose another output")
    for p in (layout.manifest, layout.chunks):
        replace_link(p)  # later writes must stay inside the folder
    data = json.loads(layout.manifest.read_text())
    if expect_key is not None and data.get("result_key") != expect_key:
        raise ResumeError(f"{root} was produced with a different image, region, model or "
                          "inference settings: resume refused; pass --overwrite to start over")
    done: dict[str, dict[str, Any]] = {}
    if layout.chunks.exists():
        text = layout.chunks.read_text()
        if text and not text.endswith("\n"):  # a torn last line: drop it before appending
            text = text[: text.rfind("\n") + 1]
            atomic_write_text(layout.chunks, text)
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed driver: that chunk is redone
            done[rec.pop("chunk")] = rec
    return Manifest(root, data, done)


# --- runs in object storage ---------------------------------------------------------------------

def _earlier_object_run(folder: ObjectFolder) -> dict[str, Any] | None:
    raw = folder.read(MANIFEST)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and "result_key" in data else None


def start_objects(folder: ObjectFolder, data: dict[str, Any], *, overwrite: bool, resume: bool,
                  protect: Iterable[str] = ()) -> ObjectManifest:
    """:func:`start` for a run in object storage (same refusals; ``protect``: input URLs)."""
    entries = [n for n in folder.children() if n != LOCK]
    earlier = _earlier_object_run(folder)
    todo = _existing(folder.url, entries[0] if entries else None, earlier is not None,
                     resume=resume, overwrite=overwrite, noun="object")
    if todo == "resume":
        return load_objects(folder, expect_key=str(data["result_key"]))
    if todo == "overwrite" and earlier is not None:
        _remove_objects(folder, [*outputs_of(earlier, Path()), STATE], protect)
    new = dict(data)
    new["outputs"] = RunLayout(Path()).outputs(list(data.get("models", {})), remote=True)
    m = ObjectManifest(folder, new)
    m.update()
    return m


def _remove_objects(folder: ObjectFolder, names: list[str], protect: Iterable[str]) -> None:
    """Remove a run's listed outputs: the STAC item first (the run stops looking complete at
    once), the manifest last (an interrupted removal is still recognised as geoseg's)."""
    order = [STAC_ITEM, *(n for n in dict.fromkeys(names) if n not in (STAC_ITEM, MANIFEST)),
             MANIFEST]
    for name in order:
        url = folder.child(name)
        for p in protect:
            if p == url or p.startswith(url + "/"):
                raise InputError(f"--overwrite would delete {url}, which this run reads: copy "
                                 "it elsewhere or write to another --out")
    removed = 0
    for name in order:
        removed += folder.delete_tree(name)
    log.info("--overwrite: removed %d object(s) of the earlier run in %s", removed, folder.url)
    others = [n for n in folder.children() if n != LOCK]
    if others:
        log.info("--overwrite kept %d object(s) geoseg did not write (e.g. %s)", len(others),
                 others[0])


def load_objects(folder: ObjectFolder, expect_key: str | None = None) -> ObjectManifest:
    """:func:`load` for a run in object storage: the manifest and every chunk record."""
    raw = folder.read(MANIFEST)
    if raw is None:
        raise ResumeError(f"{folder.url} has no {MANIFEST}: it was not written by geoseg run; "
                          "choose another output")
    data = json.loads(raw)
    if expect_key is not None and data.get("result_key") != expect_key:
        raise ResumeError(f"{folder.url} was produced with a different image, region, model or "
                          "inference settings: resume refused; pass --overwrite to start over")
    names = sorted(n for n in folder.listing(RECORDS) if n.endswith(".json"))
    with ThreadPoolExecutor(16, thread_name_prefix="geoseg-records") as pool:
        texts = list(pool.map(folder.read, names))
    done: dict[str, dict[str, Any]] = {}
    for name, text in zip(names, texts, strict=True):
        try:
            rec = json.loads(text) if text is not None else None
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or "chunk" not in rec:
            log.warning("ignoring the unreadable chunk record %s: that chunk is redone", name)
            continue
        done[str(rec.pop("chunk"))] = rec
    return ObjectManifest(folder, data, done)
