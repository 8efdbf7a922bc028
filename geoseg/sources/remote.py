"""Remote rasters: every GDAL network setting in one place, URL → GDAL path mapping, redaction.

geoseg reads cloud-optimised GeoTIFFs (COGs) over HTTP(S), S3, Google Cloud Storage and Azure
Blob Storage with GDAL's ``/vsicurl/``, ``/vsis3/``, ``/vsigs/`` and ``/vsiaz/`` file systems:
only the byte ranges of the tiles a window needs are fetched.

Credentials come only from the standard places GDAL itself reads: environment variables
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the
``~/.aws`` files, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_CONNECTION_STRING`` ...) or
a signed URL. geoseg never copies them into its own settings, never passes them to GDAL itself
and never logs them: use :func:`redact` for any URL that goes into a log line, an error or an
output file.

Each default in :data:`GDAL_DEFAULTS` applies only when the same-named environment variable is
not set, so a user tunes or overrides any of them the usual GDAL way (``export
GDAL_HTTP_MAX_RETRY=10``), also on Ray workers (through the job's ``runtime_env``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geoseg.errors import InputError

#: URL scheme → GDAL virtual file system prefix.
SCHEMES: dict[str, str] = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}

_VSI_NETWORK = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
                "/vsiwebhdfs")

#: GDAL configuration applied around every remote open and read (see the module docstring).
GDAL_DEFAULTS: dict[str, str] = {
    # transient failures (429, 5xx, connection resets): GDAL retries with a growing delay
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",  # seconds before the first retry
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_TIMEOUT": "120",  # whole request, seconds
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1024",  # bytes/s ...
    "GDAL_HTTP_LOW_SPEED_TIME": "60",  # ... for this many seconds: abort, then retry
    # opening a file must not list its "directory" nor probe for .aux.xml/.ovr/.msk sidecars
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.img,{noext}",
    # COG headers (and tile offsets of small files) in one request
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    # the tiles of one window: one request after another, adjacent ranges merged. Parallel
    # ("YES") bypassed the /vsicurl/ cache, so every chunk's halo re-downloaded its neighbours'
    # tiles and the quicklook the whole image: a 4096² run served 218 MB of a 72.7 MB COG;
    # "SERIAL" 57.5 MB in the same wall time on loopback (benchmarks/bench_sources.py). On a
    # high-latency link set GDAL_HTTP_MULTIRANGE=YES in the environment to trade bytes for
    # round trips.
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 where the server offers it
    # caches: per open file (VSI_CACHE) and process-wide across opens (blocks already fetched)
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 1024 * 1024),
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
}

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]*@)?"
                  r"(?P<rest>[^\s?#'\"]*)(?P<query>[?#][^\s'\"]*)?")


def is_local_path(path: str | Path) -> bool:
    """Whether ``path`` is a plain file-system path (no URL scheme, no GDAL ``/vsi`` path)."""
    p = str(path)
    return "://" not in p and not p.startswith("/vsi")


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is read over the network (a URL geoseg maps, or a GDAL network path)."""
    p = str(path)
    if p.startswith(_VSI_NETWORK):
        return True
    scheme, sep, _ = p.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def gdal_path(path: str | Path) -> str:
    """The path GDAL opens for ``path``: ``https://h/a.tif`` → ``/vsicurl/https://h/a.tif``,
    ``s3://b/k.tif`` → ``/vsis3/b/k.tif``, ``gs://``/``az://`` likewise; ``file://`` URLs
    become local paths; anything else (local paths, ``/vsi...`` paths) is returned unchanged."""
    p = str(path)
    scheme, sep, rest = p.partition("://")
    if not sep:
        return p
    scheme = scheme.lower()
    if scheme == "file":
        return rest
    prefix = SCHEMES.get(scheme)
    if prefix is None:
        return p  # zip://, tar:// ...: rasterio understands them
    if prefix == "/vsicurl/":
        return prefix + p
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise InputError(f"{redact(p)} names no object: give {scheme}://BUCKET/KEY")
    return f"{prefix}{bucket}/{key}"


def redact(text: str | Path) -> str:
    """``text`` with every URL's user info and query string (signatures, tokens, SAS keys)
    removed: safe for logs, errors and output metadata. Local paths are returned unchanged."""
    def strip(m: re.Match[str]) -> str:
        return m["scheme"] + m["rest"] + ("?…" if m["query"] else "")

    s = str(text)
    s = _URL.sub(strip, s)
    # /vsicurl?url=...&key=... (GDAL's option syntax) may hold anything after the '?'
    return re.sub(r"(/vsi[a-z0-9_]+)\?\S*", r"\1?…", s)


def shown_name(path: str | Path) -> str:
    """The file name of ``path`` as outputs show it: without a URL's query or user info."""
    return Path(redact(path).removesuffix("?…")).name


def gdal_options() -> dict[str, str]:
    """:data:`GDAL_DEFAULTS` minus the options the environment sets itself."""
    return {k: v for k, v in GDAL_DEFAULTS.items() if k not in os.environ}


@contextmanager
def remote_env(path: str | Path) -> Iterator[None]:
    """GDAL settings for reading ``path``: :func:`gdal_options` when it is remote, nothing for
    a local file. Credentials are left to GDAL (a ``DummySession``: rasterio copies none)."""
    if not is_remote(path):
        yield
        return
    import rasterio
    from rasterio.session import DummySession

    with rasterio.Env(session=DummySession(), **gdal_options()):
        yield


def describe_remote_error(path: str, message: str) -> str:
    """A one-line, redacted explanation of a failed remote open, with what to do."""
    msg = redact(message.strip().splitlines()[0] if message.strip() else "read failed")
    shown = redact(path)
    hint = _CREDENTIALS.get(str(path).split("://", 1)[0].lower(), _CREDENTIALS["https"])
    if _UNSET.search(msg):  # GDAL found no credentials at all for the URL's store
        return f"{shown}: no credentials ({msg}): {hint}"
    # denied before missing: S3's InvalidAccessKeyId says "... does not exist in our records"
    if _DENIED.search(msg):
        return f"{shown}: access denied ({msg}): check the credentials; {hint}"
    if re.search(r"\b404\b|does not exist|No such file|NoSuchKey|NoSuchBucket", msg):
        return f"{shown} not found ({msg}): check the URL"
    if re.search(r"Range downloading not supported", msg, re.I):  # no rerun can help
        return (f"cannot read {shown} ({msg}): the server sends whole files only (no HTTP "
                "Range requests); download the file and pass its local path")
    return f"cannot read {shown} ({msg}): check the URL and the network, then rerun"


#: Where each store's credentials go, the standard way (the variables GDAL reads).
_CREDENTIALS = {
    "s3": "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or run where an IAM role "
          "is attached), or AWS_NO_SIGN_REQUEST=YES for a public bucket",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run where a "
          "workload identity is attached), or GS_NO_SIGN_REQUEST=YES for a public bucket",
    "az": "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with "
          "AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN, or AZURE_NO_SIGN_REQUEST=YES for "
          "a public container",
    "https": "a signed URL may have expired (sign it again), or the server needs credentials",
}

#: GDAL's messages when no credentials are configured for /vsis3/, /vsigs/ or /vsiaz/.
_UNSET = re.compile(r"configuration options? not defined|Missing AZURE_\S+.*configuration "
                    r"options", re.I)

#: What S3, GCS, Azure and GDAL say when the credentials are missing, wrong or not allowed
#: (status 401/403, the providers' error codes and their messages).
_DENIED = re.compile(
    r"\b40[13]\b|Access ?Denied|Forbidden|Unauthori[sz]ed|credential|InvalidAccessKeyId"
    r"|Access Key Id you provided|SignatureDoesNotMatch|signature we calculated"
    r"|(Expired|Invalid)Token|security token|token (has|is) expired|AuthenticationFailed"
    r"|Authorization(Failure|PermissionMismatch)|failed to authenticate"
    r"|does not have \S+ access|permission denied", re.I)
