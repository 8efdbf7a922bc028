"""s3:// COGs through GDAL's /vsis3/ against moto's S3 server on 127.0.0.1 (fake credentials
from the standard environment variables; no real host is ever resolved)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.errors import NotARasterError
from geoseg.grid import Window
from geoseg.io import RasterInfo, open_info, read_window
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic
from tests.sources.conftest import UTM33, Scene, write_cog

BUCKET = "geoseg-test"
FAKE = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture(scope="module")
def moto_endpoint(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a moto S3 server holding the scene's A and C as COGs."""
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id=FAKE["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=FAKE["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    tmp = tmp_path_factory.mktemp("s3src")
    for name in ("a", "c"):
        with rasterio.open(getattr(scene, name)) as src:
            cog = write_cog(tmp / f"{name}.tif", src.read(), crs=UTM33,
                            transform=src.transform, nodata=0, tags=src.tags())
        client.upload_file(str(cog), BUCKET, f"scenes/{name}.tif")
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    for key, value in FAKE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{moto_endpoint}")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST"):
        monkeypatch.delenv(key, raising=False)
    # no ~/.aws files of the machine: only the variables above
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("CPL_AWS_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return moto_endpoint


def test_s3_cog_reads_like_the_local_file(s3_env: str, scene: Scene) -> None:
    url = f"s3://{BUCKET}/scenes/a.tif"
    info = open_source([url])
    assert isinstance(info, RasterInfo) and info.path == url
    local = open_info(scene.a)
    assert info.geobox == local.geobox and info.nodata == 0
    win = Window(-3, 5, 30, 70)
    for got, want in zip(read_window(info, win, (1, 2)), read_window(local, win, (1, 2)),
                         strict=True):
        assert np.array_equal(got, want)


def test_s3_mosaic(s3_env: str, scene: Scene) -> None:
    urls = [f"s3://{BUCKET}/scenes/a.tif", f"s3://{BUCKET}/scenes/c.tif"]
    m = open_source(urls, mosaic="latest")
    local = open_source([str(scene.a), str(scene.c)], mosaic="latest")
    assert isinstance(m, Mosaic) and isinstance(local, Mosaic) and m.geobox == local.geobox
    for got, want in zip(read_window(m, m.geobox.window, (1, 2)),
                         read_window(local, local.geobox.window, (1, 2)), strict=True):
        assert np.array_equal(got, want)


def test_missing_s3_key_is_one_clear_line(s3_env: str) -> None:
    with pytest.raises(NotARasterError, match=r"not found|cannot read") as err:
        open_info(f"s3://{BUCKET}/scenes/missing.tif")
    assert "testing-secret" not in str(err.value) and "\n" not in str(err.value)
