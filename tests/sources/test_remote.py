"""Remote rasters: URL mapping, redaction, GDAL settings, and COGs and a STAC catalog read over
HTTP from a local server (127.0.0.1, Range requests, bytes counted)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window as RioWindow

from geoseg.errors import NotARasterError
from geoseg.grid import Window
from geoseg.io import open_info, read_window
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic
from geoseg.sources.remote import (
    GDAL_DEFAULTS,
    describe_remote_error,
    gdal_options,
    gdal_path,
    is_remote,
    redact,
    remote_env,
)
from tests.sources.conftest import UTM33, Scene, _CountingServer, write_cog
from tests.sources.stac_fixtures import make_stac

BIG, TILE = 16384, 512


def test_gdal_paths() -> None:
    assert gdal_path("https://h.example/a/b.tif") == "/vsicurl/https://h.example/a/b.tif"
    assert gdal_path("http://h:8080/b.tif?x=1") == "/vsicurl/http://h:8080/b.tif?x=1"
    assert gdal_path("s3://bucket/k/e/y.tif") == "/vsis3/bucket/k/e/y.tif"
    assert gdal_path("gs://bucket/key.tif") == "/vsigs/bucket/key.tif"
    assert gdal_path("az://container/blob.tif") == "/vsiaz/container/blob.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    assert gdal_path("/data/x.tif") == "/data/x.tif" == gdal_path(Path("/data/x.tif"))
    assert gdal_path("/vsis3/b/k.tif") == "/vsis3/b/k.tif"
    with pytest.raises(ValueError, match="names no object"):
        gdal_path("s3://bucket-only")
    assert all(is_remote(u) for u in ("https://h/a.tif", "S3://b/k", "/vsicurl/http://h/a",
                                      "gs://b/k", "az://c/k", "/vsis3/b/k"))
    assert not any(is_remote(p) for p in ("/data/a.tif", "a.tif", "file:///a.tif",
                                          "zip://a.zip!b.tif"))


def test_redact_strips_secrets_only() -> None:
    url = "https://user:pw@h.example/a/b.tif?X-Amz-Signature=SECRET&token=T0K"
    assert redact(url) == "https://h.example/a/b.tif?…"
    assert "SECRET" not in redact(f"cannot open /vsicurl/{url}: HTTP 403")
    assert redact("/vsicurl?url=https%3A%2F%2Fh%2Fa.tif&sig=SECRET") == "/vsicurl?…"
    assert redact("/data/a b/c.tif") == "/data/a b/c.tif"
    assert redact("s3://bucket/key.tif") == "s3://bucket/key.tif"
    msg = describe_remote_error("https://h/a.tif?sig=S", "HTTP response code: 404 for "
                                "https://h/a.tif?sig=S")
    assert "not found" in msg and "sig=S" not in msg
    msg = describe_remote_error("s3://b/k.tif", "HTTP response code: 403\nmore")
    assert "access denied" in msg and "AWS_PROFILE" in msg and "\n" not in msg


def test_settings_apply_to_remote_paths_only_and_yield_to_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from rasterio.env import getenv, hasenv

    def current() -> dict[str, object]:
        return dict(getenv()) if hasenv() else {}  # (a library may hold a default env)

    before = current()
    with remote_env("/data/a.tif"):
        assert current() == before  # local reads: untouched
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    opts = gdal_options()
    assert "GDAL_HTTP_MAX_RETRY" not in opts  # the user's environment wins
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert not any("SECRET" in k or "KEY" in k or "TOKEN" in k for k in GDAL_DEFAULTS)
    with remote_env("s3://b/k.tif"):
        env = getenv()
        assert env["GDAL_HTTP_RETRY_DELAY"] == "1" and "AWS_SECRET_ACCESS_KEY" not in env


@pytest.fixture(scope="module")
def served(scene: Scene, http_server: _CountingServer) -> dict[str, Path]:
    """COGs in the server's root: the scene's A, and a 16384² one (1 band, uint8, 512 tiles)."""
    root = http_server.root
    with rasterio.open(scene.a) as src:
        a = write_cog(root / "a.tif", src.read(), crs=UTM33, transform=src.transform, nodata=0)
    return {"a": a, "big": _big_cog(root / "big.tif")}


def _big_cog(path: Path) -> Path:
    """A cheap 16384² COG: a 512² pattern (rolled per tile), deflate, ~4 MB, no overviews."""
    import rasterio.shutil

    yy, xx = np.mgrid[0:TILE, 0:TILE]
    base = ((xx // 8 + yy // 8) % 2 * 100 + (xx * 7 + yy * 3) % 50 + 1).astype(np.uint8)
    tmp = path.with_suffix(".tmp.tif")
    profile = {"driver": "GTiff", "width": BIG, "height": BIG, "count": 1, "dtype": "uint8",
               "crs": UTM33, "transform": Affine(1, 0, 500_000, 0, -1, 5_100_000),
               "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": "deflate",
               "nodata": 0}
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, BIG, TILE):
            for c in range(0, BIG, TILE):
                block = np.roll(base, (r // TILE * 5 + c // TILE) % TILE, axis=1)
                dst.write(block[None], window=RioWindow(c, r, TILE, TILE))
    rasterio.shutil.copy(tmp, path, driver="COG", BLOCKSIZE=TILE, COMPRESS="DEFLATE",
                         OVERVIEWS="NONE")
    tmp.unlink()
    return path


def test_http_cog_reads_like_the_local_file(served: dict[str, Path],
                                            http_server: _CountingServer) -> None:
    url = http_server.url("a.tif")
    remote, local = open_info(url), open_info(served["a"])
    assert remote.path == url and remote.geobox == local.geobox
    assert (remote.count, remote.dtype, remote.nodata) == (local.count, local.dtype, local.nodata)
    win = Window(-4, 10, 40, 60)  # boundless
    for got, want in zip(read_window(remote, win, (2, 1), fill=-1),
                         read_window(local, win, (2, 1), fill=-1), strict=True):
        assert np.array_equal(got, want)


def test_window_of_a_huge_cog_fetches_a_few_percent(served: dict[str, Path],
                                                    http_server: _CountingServer) -> None:
    size = served["big"].stat().st_size
    t0 = time.perf_counter()
    info = open_info(http_server.url("big.tif"))
    win = Window(5000, 7000, 512, 512)  # straddles 4 tiles
    data, valid = read_window(info, win, (1,))
    elapsed = time.perf_counter() - t0
    fetched = http_server.served["big.tif"]
    print(f"\n512² window of a {BIG}² COG ({size / 1e6:.1f} MB): {fetched} bytes fetched "
          f"({100 * fetched / size:.2f} %) in {http_server.requests['big.tif']} requests, "
          f"{elapsed:.2f} s")
    assert fetched < 0.05 * size
    local, _ = read_window(open_info(served["big"]), win, (1,))
    assert valid.all() and np.array_equal(data, local)


def test_missing_url_is_one_clear_line(http_server: _CountingServer) -> None:
    with pytest.raises(NotARasterError, match="not found") as err:
        open_info(http_server.url("nope.tif") + "?token=SECRET")
    assert "SECRET" not in str(err.value) and "\n" not in str(err.value)


def test_stac_catalog_over_http(scene: Scene, http_server: _CountingServer,
                                tmp_path_factory: pytest.TempPathFactory) -> None:
    src = make_stac(scene, tmp_path_factory.mktemp("stac_src"))
    shutil.copytree(src.root, http_server.root / "stac")
    m = open_source([http_server.url("stac/catalog.json")], bands=("red", "nir"))
    assert isinstance(m, Mosaic)
    assert m.items[0].hrefs == (http_server.url("stac/items/a/B04.tif"),
                                http_server.url("stac/items/a/B08.tif"))
    local = open_source([str(src.catalog)], bands=("red", "nir"))
    assert isinstance(local, Mosaic) and local.geobox == m.geobox
    win = Window(-2, -2, 70, 90)
    for got, want in zip(read_window(m, win, (1, 2)), read_window(local, win, (1, 2)),
                         strict=True):
        assert np.array_equal(got, want)


def test_signed_and_extensionless_urls_open(served: dict[str, Path],
                                            http_server: _CountingServer) -> None:
    """CPL_VSIL_CURL_ALLOWED_EXTENSIONS must not lock out signed URLs or object-store keys
    without an extension."""
    shutil.copy(served["a"], http_server.root / "blob")
    local = open_info(served["a"])
    for url in (http_server.url("a.tif") + "?X-Amz-Signature=abc&x=1", http_server.url("blob")):
        info = open_info(url)
        assert info.geobox == local.geobox
        assert np.array_equal(read_window(info, Window(0, 0, 8, 8), (1,))[0],
                              read_window(local, Window(0, 0, 8, 8), (1,))[0])


def test_a_signed_urls_secret_stays_out_of_the_outputs_and_a_resigned_url_resumes(
        http_server: _CountingServer, tmp_path: Path) -> None:
    """A presigned URL's signature is a credential: no output file keeps it (manifest, STAC
    item, summary, store), and the same object signed again resumes the run (the README's
    advice for an expired signature)."""
    import geoseg
    from tests.conftest import write_raster
    from tests.pipeline.conftest import textured, tiny_bundle

    write_raster(http_server.root / "signed.tif", textured(128, 128),
                 descriptions=["red", "green", "blue", "nir"])
    bundle = str(tiny_bundle(tmp_path / "bundles", "landcover", 1))
    url, out = http_server.url("signed.tif"), tmp_path / "out"
    common: dict[str, object] = {"models": [bundle], "chunk_size": 64, "vectors": False,
                                 "workers": 1, "threads": 1}

    def stop_after_one(p: object) -> None:
        if getattr(p, "done", 0) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        geoseg.run(url + "?X-Amz-Signature=FIRSTSECRET", out, progress=stop_after_one,
                   **common)
    run = geoseg.run(url + "?X-Amz-Signature=SECONDSECRET&X-Amz-Expires=60", out,
                     resume=True, **common)
    assert run.complete and run.summary.chunks.computed_this_run == 3
    kept = [p for p in out.rglob("*") if p.is_file() and b"SECRET" in p.read_bytes()]
    assert kept == []


def test_a_server_without_range_requests_says_to_download(tmp_path: Path) -> None:
    """Python's own http.server answers every Range request with the whole file: no rerun can
    read it window by window, so the advice is to download it (it was "check the network,
    then rerun")."""
    import functools
    import http.server
    import threading

    from tests.conftest import write_raster
    from tests.pipeline.conftest import textured

    write_raster(tmp_path / "a.tif", textured(512, 512))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Quiet, directory=str(tmp_path)))
    srv.handle_error = lambda *args: None  # type: ignore[method-assign]  # (GDAL hangs up)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(NotARasterError, match=r"no HTTP Range requests.*download the file"):
            open_info(f"http://127.0.0.1:{srv.server_address[1]}/a.tif")
    finally:
        srv.shutdown()
        srv.server_close()
