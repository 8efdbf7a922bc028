"""Run outputs in object storage (``s3://``, ``gs://``, ``az://``): the few operations geoseg
needs (get, put, conditional put, list, delete, upload a file), the lock object, and one-line
errors.

Why obstore (the Rust ``object_store`` crate): one wheel with no pin on botocore (s3fs pins it
through aiobotocore), the same code for S3, GCS and Azure, conditional writes on all three
(create-if-absent, replace-if-ETag-matches), retries with backoff built in (10 tries within 3
minutes for 5xx, 429 and connection errors), and zarr-python 3 writes through it
(:class:`zarr.storage.ObjectStore`).

Credentials and endpoints come only from the environment the provider's own tools read
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, IRSA/EKS pod identity (``AWS_WEB_IDENTITY_TOKEN_FILE``), the EC2/ECS
metadata service; ``GOOGLE_APPLICATION_CREDENTIALS`` or GKE workload identity;
``AZURE_STORAGE_ACCOUNT_NAME`` with a key, SAS, or Azure workload/managed identity). geoseg never
copies them into a manifest, a plan or a log line. An ``AWS_ENDPOINT_URL`` that starts with
``http://`` (MinIO in the cluster, a test server) allows plain HTTP to that endpoint only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.errors import InputError, MissingDependencyError, OutputLockedError, StorageError
from geoseg.outdir import holder_alive, process_start

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
_NO_BUCKET = ("NoSuchBucket", "bucket does not exist", "ContainerNotFound",
              "container does not exist")


def is_object_url(path: str | Path) -> bool:
    """Whether ``path`` names a folder in object storage (``s3://bucket/prefix`` ...)."""
    scheme, sep, _ = str(path).partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


_URL_SYNTAX = "#?%"


def check_url(url: str) -> None:
    """Refuse an object-storage URL whose path holds ``#``, ``?`` or ``%``: obstore reads them
    as a fragment, a query or an escape, so the folder it would write is not the one named
    (``s3://b/runs/h#1`` is ``s3://b/runs/h``, where a run's store would replace the
    user's objects), while geoseg's own names and messages keep the text as given."""
    path = url.partition("://")[2]
    bad = sorted({c for c in path if c in _URL_SYNTAX})
    if bad:
        raise InputError(f"{url}: {' '.join(repr(c) for c in bad)} cannot be part of an "
                         "object-storage folder name here (it is URL syntax, so the objects "
                         "would be written elsewhere): name the folder without # ? %")


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *(n.strip("/") for n in names if n)])


def bucket_of(url: str) -> str:
    """``s3://bucket/a/b`` → ``s3://bucket``."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


_clients: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_clients_lock = threading.Lock()


def client(url: str) -> Any:
    """The obstore store of the folder ``url`` (prefix = its path), one per process and set of
    credentials/endpoint variables (a new endpoint or key in the environment: a new client)."""
    check_url(url)
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    key = (url.rstrip("/"), env)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _make_client(key[0])
        return found


def _make_client(url: str) -> Any:
    try:
        from obstore.store import from_url
    except ImportError as exc:
        raise MissingDependencyError(f"--out {url} needs obstore: pip install obstore") from exc
    plain_http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    extra: dict[str, Any] = {}
    profile = _profile_credentials(url)
    if profile is not None:
        extra["credential_provider"], region = profile
        if region and not os.environ.get("AWS_REGION"):
            extra["config"] = {"region": region}
    if url.split("://", 1)[0].lower() in AZURE_SCHEMES:
        extra["config"] = azure_config(os.environ)
        endpoints = (extra["config"].get("endpoint"), os.environ.get("AZURE_STORAGE_ENDPOINT"),
                     os.environ.get("AZURE_ENDPOINT"))
        plain_http = plain_http or any(str(e or "").startswith("http://") for e in endpoints)
    try:
        return from_url(url, client_options={"allow_http": True} if plain_http else None,
                        **extra)
    except Exception as exc:  # no request is made here: settings the client cannot use
        raise StorageError(f"cannot use {url} ({_detail(exc)}): {_setup_hint(url)}"
                           ) from exc


AZURE_SCHEMES = ("az", "abfs", "abfss")

#: What to set when a store cannot even be configured (no account, no region ...), by scheme.
_SETUP = {
    "s3": "set AWS_REGION and the credentials the usual way (AWS_PROFILE, or AWS_ACCESS_KEY_ID "
          "and AWS_SECRET_ACCESS_KEY; AWS_ENDPOINT_URL for an S3-compatible store)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run where a "
          "workload identity is attached",
    "az": "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with "
          "AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN (as for az:// inputs)",
}


def _setup_hint(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    return _SETUP["az" if scheme in AZURE_SCHEMES else scheme[:2]]


def azure_config(env: Mapping[str, str]) -> dict[str, Any]:
    """obstore's Azure settings from the variables that GDAL (which reads ``az://`` inputs) and
    Azure's own tools use but obstore does not read: ``AZURE_STORAGE_CONNECTION_STRING``
    (account, key or SAS, endpoint; ``UseDevelopmentStorage=true``: the emulator) and
    ``AZURE_STORAGE_ACCOUNT``. obstore's own variables (``AZURE_STORAGE_ACCOUNT_NAME``,
    ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_ENDPOINT`` ...) win, so that one set of
    variables serves a job's inputs and outputs alike. The key is handed to the client as GDAL
    gets it, from the environment, and never logged."""
    parts: dict[str, str] = {}
    for item in env.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            parts[name.strip().lower()] = value.strip()
    conf: dict[str, Any] = {}
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        conf["use_emulator"] = True
    account = parts.get("accountname") or env.get("AZURE_STORAGE_ACCOUNT")
    if account and not env.get("AZURE_STORAGE_ACCOUNT_NAME"):
        conf["account_name"] = account
    if parts.get("accountkey") and not any(env.get(f"AZURE_STORAGE_{k}_KEY")
                                           for k in ("ACCOUNT", "ACCESS", "MASTER")):
        conf["account_key"] = parts["accountkey"]
    if parts.get("sharedaccesssignature") and not any(
            env.get(f"AZURE_STORAGE_SAS_{k}") for k in ("KEY", "TOKEN")):
        conf["sas_key"] = parts["sharedaccesssignature"].lstrip("?")
    endpoint = parts.get("blobendpoint")
    if not endpoint and account and parts.get("endpointsuffix"):
        protocol = parts.get("defaultendpointsprotocol", "https")
        endpoint = f"{protocol}://{account}.blob.{parts['endpointsuffix']}"
    if endpoint and not (env.get("AZURE_STORAGE_ENDPOINT") or env.get("AZURE_ENDPOINT")):
        conf["endpoint"] = endpoint.rstrip("/")
    return conf


def _profile_credentials(url: str) -> tuple[Any, str | None] | None:
    """(provider, region) of ``AWS_PROFILE`` for an s3:// URL, through boto3: the object store
    client reads keys from the environment, web identity (IRSA) and the instance metadata, but
    not the ``~/.aws`` files. None when no profile is named or keys are in the environment."""
    if not url.startswith("s3") or not os.environ.get("AWS_PROFILE") or os.environ.get(
            "AWS_ACCESS_KEY_ID"):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError as exc:
        raise MissingDependencyError(
            "AWS_PROFILE is set: reading its ~/.aws profile for --out s3:// needs boto3 (pip "
            "install boto3), or export the profile's keys: eval \"$(aws configure "
            "export-credentials --format env)\"") from exc
    session = boto3.Session()
    return Boto3CredentialProvider(session), session.region_name


def _detail(exc: BaseException) -> str:
    from geoseg.sources.remote import redact

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return redact(lines[0][:200]) if lines else type(exc).__name__


#: The client found no credentials and asked the instance's metadata service for a token, which
#: did not give one (no cloud instance, or none with an identity attached).
_NO_IDENTITY = re.compile(r"token request|169\.254\.169\.254|metadata\.google\.internal")

#: A denial in an error's text (status 401/403, the providers' error codes): obstore raises a
#: GenericError, not a PermissionDeniedError, for a 403 on a listing.
_DENIED = re.compile(r"status code:? 40[13]\b|\b40[13] (Forbidden|Unauthorized)\b|AccessDenied"
                     r"|Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken"
                     r"|InvalidToken|AuthenticationFailed|AuthorizationFailure"
                     r"|AuthorizationPermissionMismatch|InvalidAuthenticationInfo")
_CODE = re.compile(r"<Code>\s*([^<]+?)\s*</Code>(?:.*?<Message>\s*([^<]+?)\s*</Message>)?",
                   re.S)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``/``__context__``)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _denied(exc: BaseException) -> str | None:
    """The detail of an access denial somewhere in ``exc``'s chain (None: not one): the
    provider's error code and message when the response body gives them."""
    from geoseg.sources.remote import redact

    for e in _chain(exc):
        text = str(e)
        if _DENIED.search(text):
            m = _CODE.search(text)
            if m is None:
                return _detail(e)
            return redact(f"{m[1]}: {m[2]}" if m[2] else m[1])[:200]
    return None


def storage_error(exc: BaseException, url: str, what: str = "write") -> StorageError | None:
    """A one-line StorageError for an object-storage failure at ``url`` (None: not one).

    ``fatal`` (a retry cannot help): a missing bucket, denied access, bad credentials;
    anything else (network, 5xx after the client's own retries) is transient."""
    try:
        from obstore import exceptions as ox
    except ImportError:
        return None
    text = str(exc)
    if isinstance(exc, FileNotFoundError | ox.NotFoundError | ox.GenericError) and any(
            s in text for s in _NO_BUCKET):
        err = StorageError(f"bucket {bucket_of(url)} does not exist ({url}): create it, or "
                           "choose another --out")
    elif isinstance(exc, ox.BaseError) and _NO_IDENTITY.search(text):
        err = StorageError(f"no credentials for {url}: none in the environment, and no "
                           f"instance identity answered ({_detail(exc)}): "
                           f"{_setup_hint(url)}")
    elif isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError | PermissionError
                    ) or (isinstance(exc, ox.BaseError) and _denied(exc) is not None):
        err = StorageError(f"access denied to {url} ({_denied(exc) or _detail(exc)}): check the "
                           "credentials (environment, IAM role / workload identity) and the "
                           "bucket policy")
    elif isinstance(exc, ox.BaseError):
        # "reach" is the first request of a job or a fetch: nothing was started to resume
        then = ("rerun" if what == "reach" else
                "rerun with --resume (finished chunks are kept)")
        err = StorageError(f"cannot {what} {url} ({_detail(exc)}): check the network and the "
                           f"endpoint, then {then}")
        err.fatal = False
        return err
    else:
        return None
    err.fatal = True
    return err


@contextlib.contextmanager
def object_errors(url: str, what: str = "write", fatal_only: bool = False) -> Iterator[None]:
    """Object-storage failures under ``url`` as one-line StorageErrors; ``fatal_only``: only
    those a retry cannot fix, the others propagate as they are (a chunk task retries them)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        err = storage_error(exc, url, what)
        if err is None or (fatal_only and not err.fatal):
            raise
        raise err from exc


@dataclass(frozen=True)
class Meta:
    """What a listing or a write says about one object."""

    size: int
    e_tag: str | None
    modified: float | None = None  # seconds since the epoch (the server's clock)
    version: str | None = None

    @classmethod
    def of(cls, m: Any) -> Meta:
        when = m.get("last_modified")
        return cls(int(m.get("size", 0)), m.get("e_tag"),
                   when.timestamp() if when is not None else None, m.get("version"))


class ObjectFolder:
    """A "folder" in object storage: names are relative to the URL's path."""

    def __init__(self, url: str) -> None:
        if not is_object_url(url):
            raise ValueError(f"not an object-storage URL: {url}")
        check_url(url)
        self.url = url.rstrip("/")

    def __repr__(self) -> str:
        return f"ObjectFolder({self.url!r})"

    @property
    def store(self) -> Any:
        return client(self.url)

    def child(self, name: str) -> str:
        return join(self.url, name)

    def check(self) -> None:
        """Fail with one line when the bucket is missing or cannot be read."""
        import obstore

        with object_errors(self.url, "reach"):
            obstore.list_with_delimiter(self.store)

    def get(self, name: str) -> tuple[bytes, Meta] | None:
        """The object's bytes and metadata (None: no such object)."""
        import obstore

        with object_errors(self.child(name), "read"):
            try:
                got = obstore.get(self.store, name)
            except FileNotFoundError as exc:
                if any(s in str(exc) for s in _NO_BUCKET):
                    raise
                return None
            return bytes(got.bytes()), Meta.of(got.meta)

    def read(self, name: str) -> bytes | None:
        got = self.get(name)
        return None if got is None else got[0]

    def head(self, name: str) -> Meta | None:
        import obstore

        with object_errors(self.child(name), "read"):
            try:
                return Meta.of(obstore.head(self.store, name))
            except FileNotFoundError as exc:
                if any(s in str(exc) for s in _NO_BUCKET):
                    raise
                return None

    def put(self, name: str, data: bytes) -> Meta:
        """Write the whole object (readers see the old or the new bytes, never a mix)."""
        import obstore

        with object_errors(self.child(name)):
            r = obstore.put(self.store, name, data)
        return Meta(len(data), r.get("e_tag"), None, r.get("version"))

    def create(self, name: str, data: bytes) -> Meta | None:
        """Write only if no such object exists (If-None-Match); None when one does."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with object_errors(self.child(name)):
            try:
                r = obstore.put(self.store, name, data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return None
        return Meta(len(data), r.get("e_tag"), None, r.get("version"))

    def replace(self, name: str, data: bytes, expect: Meta) -> Meta | None:
        """Write only if the object is still ``expect`` (If-Match its ETag); None otherwise."""
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        mode = {k: v for k, v in (("e_tag", expect.e_tag), ("version", expect.version)) if v}
        with object_errors(self.child(name)):
            try:
                r = obstore.put(self.store, name, data, mode=mode)  # type: ignore[arg-type]
            except (PreconditionError, NotFoundError, FileNotFoundError):
                return None
        return Meta(len(data), r.get("e_tag"), None, r.get("version"))

    def upload(self, path: Path, name: str) -> str:
        """Upload a local file (multipart when large: the object appears once complete)."""
        import obstore

        with object_errors(self.child(name)):
            obstore.put(self.store, name, Path(path))
        return self.child(name)

    def download(self, name: str, path: Path) -> None:
        got = self.get(name)
        if got is None:
            raise FileNotFoundError(self.child(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got[0])

    def listing(self, prefix: str = "") -> dict[str, Meta]:
        """Every object under ``prefix`` (a folder name, or "" for all): name → metadata."""
        import obstore

        base = prefix.strip("/")
        out: dict[str, Meta] = {}
        with object_errors(self.child(base), "list"):
            for batch in obstore.list(self.store, prefix=base or None, chunk_size=1000):
                for m in batch:
                    out[str(m["path"])] = Meta.of(m)
        return out

    def children(self) -> list[str]:
        """Top-level names (objects and "folders") in this folder."""
        import obstore

        with object_errors(self.url, "list"):
            got = obstore.list_with_delimiter(self.store)
        return sorted({*(str(p) for p in got["common_prefixes"]),
                       *(str(m["path"]) for m in got["objects"])})

    def delete(self, names: list[str]) -> None:
        import obstore

        for i in range(0, len(names), 1000):
            with object_errors(self.url, "delete in"):
                obstore.delete(self.store, names[i:i + 1000])

    def delete_tree(self, name: str) -> int:
        """Delete the object ``name`` and everything under ``name/``; returns how many."""
        base = name.strip("/")
        # (a listing of "x" is that of the folder "x/": the object "x" is asked for by name)
        names = [n for n in self.listing(base) if n.startswith(base + "/")]
        if base and self.head(base) is not None:
            names.append(base)
        self.delete(names)
        return len(names)


HEARTBEAT_S = 30.0  # a held lock object is rewritten (If-Match) this often


class ObjectLock:
    """One job per output prefix: a lock object created with If-None-Match (no job can take a
    live lock), refreshed every 30 s with If-Match on its ETag, and taken over with If-Match
    when its holder is gone (as :class:`geoseg.outdir.FolderLock` judges it: on this host, its
    process is dead; from another host, no refresh for 5 minutes: a crashed driver, a lost
    pod), so two jobs that both find it stale cannot both win. Released by deleting it when it
    is still ours (a check, then a delete: a takeover between the two is not detected)."""

    def __init__(self, folder: ObjectFolder, name: str = ".geoseg.lock") -> None:
        self.folder, self.name = folder, name
        self.held: Meta | None = None
        self._beat: threading.Event | None = None
        self._lost = False

    def acquire(self, what: str = "geoseg run") -> ObjectLock:
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": process_start(os.getpid()), "command": what,
                         "since": time.time()}).encode()
        for _ in range(3):
            meta = self.folder.create(self.name, me)
            if meta is None:
                got = self.folder.get(self.name)
                if got is None:
                    continue  # released meanwhile
                data, current = got
                holder = _holder(data)
                if _alive(holder, current):
                    raise OutputLockedError(
                        f"{self.folder.url} is in use by another geoseg job "
                        f"({holder.get('command')}, host {holder.get('host')}, pid "
                        f"{holder.get('pid')}): wait for it, or "
                        f"choose another --out; if that job is gone, delete "
                        f"{self.folder.child(self.name)}")
                log.warning("taking over the stale lock %s (%s)", self.folder.child(self.name),
                            holder)
                meta = self.folder.replace(self.name, me, current)
                if meta is None:
                    continue  # another job took it first: look again
            self.held = meta
            self._beat = threading.Event()
            threading.Thread(target=self._heartbeat, args=(self._beat, me), daemon=True,
                             name="geoseg-lock").start()
            return self
        raise OutputLockedError(f"could not lock {self.folder.url}: another job keeps taking "
                                "it; retry when it has finished")

    def _heartbeat(self, stop: threading.Event, data: bytes) -> None:
        while not stop.wait(HEARTBEAT_S):
            held = self.held
            if held is None:
                return
            try:
                meta = self.folder.replace(self.name, data, held)
            except StorageError as exc:  # transient: try again at the next beat
                log.warning("could not refresh the lock %s: %s", self.folder.url, exc)
                continue
            if meta is None:
                self._lost = True
                log.error("the lock on %s was taken by another job", self.folder.url)
                return
            self.held = meta

    def release(self) -> None:
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        held, self.held = self.held, None
        if held is None or self._lost:
            return
        with contextlib.suppress(StorageError):
            now = self.folder.head(self.name)
            if now is not None and now.e_tag == held.e_tag:
                self.folder.delete([self.name])

    def __enter__(self) -> ObjectLock:
        return self.acquire() if self.held is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(holder: dict[str, Any], meta: Meta) -> bool:
    """Whether the job recorded in a lock object still runs (its heartbeat: the object's
    last-modified time on the server's clock)."""
    try:
        return holder_alive(holder, meta.modified)
    except (TypeError, ValueError):  # not written by geoseg (a pid that is no number)
        return holder_alive({}, meta.modified)


def _holder(data: bytes) -> dict[str, Any]:
    try:
        got = json.loads(data)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


__all__ = ["Meta", "ObjectFolder", "ObjectLock", "bucket_of", "client", "is_object_url", "join",
           "object_errors", "storage_error"]
