"""A real S3 API on loopback (moto's ThreadedMotoServer) and the environment that points
geoseg, GDAL and boto3 at it, with fake credentials; no test ever resolves a real cloud host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

FAKE = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@contextmanager
def moto_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a fresh moto S3 server, stopped on exit."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str, tmp: Path) -> dict[str, str]:
    """Variables for geoseg (obstore), GDAL (``/vsis3/``) and boto3: the loopback endpoint,
    fake keys, and no ~/.aws files; unset them with :data:`UNSET`."""
    return {**FAKE, "AWS_S3_ENDPOINT": endpoint, "AWS_ENDPOINT_URL": f"http://{endpoint}",
            "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
            "CPL_AWS_CREDENTIALS_FILE": str(tmp / "no-credentials")}


UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST")


def apply_env(mp: pytest.MonkeyPatch, endpoint: str, tmp: Path) -> None:
    for key, value in s3_env(endpoint, tmp).items():
        mp.setenv(key, value)
    for key in UNSET:
        mp.delenv(key, raising=False)


def s3_client(endpoint: str) -> Any:
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                        aws_access_key_id=FAKE["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE["AWS_SECRET_ACCESS_KEY"])


def keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def body(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def assert_same_store(client: Any, bucket: str, prefix: str, local: Path,
                      same_job: bool = False) -> None:
    """Every object of the store under ``prefix`` is byte-identical to the file of the same
    name in the local run folder ``local`` (the group's attributes too when ``same_job``: they
    name the job's result key), and every local chunk file has its object."""
    root = local / "predictions.zarr"
    want = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    base = f"{prefix}/predictions.zarr/"
    got = {k.removeprefix(base) for k in keys(client, bucket, base)}
    chunks = {k for k in want if not k.rsplit("/", 1)[-1].startswith(".")}
    assert chunks <= got and got <= want, sorted(want ^ got)[:5]
    compared = got if same_job else got - {".zattrs", ".zmetadata"}
    differ = [k for k in compared if body(client, bucket, base + k) != (root / k).read_bytes()]
    assert not differ, differ[:5]
