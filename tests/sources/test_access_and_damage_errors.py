"""Remote and damaged-image failures are one clear line with the real
cause. Real servers on 127.0.0.1 only: moto's S3 (with authentication switched on, fake keys:
InvalidAccessKeyId) and the Range server of the remote tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.errors import InputError, NotARasterError, StorageError
from geoseg.io import open_info
from geoseg.objstore import ObjectFolder, storage_error
from geoseg.sources.remote import describe_remote_error
from tests.s3_fixtures import apply_env, moto_server, s3_client
from tests.sources.conftest import _CountingServer, write_cog

BUCKET = "geoseg-denied"
T = Affine(0.5, 0, 500_000.0, 0, -0.5, 5_100_000.0)
INVALID_KEY = "The AWS Access Key Id you provided does not exist in our records."


def _image(h: int = 256, w: int = 256) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(1, 255, size=(4, h, w), dtype=np.uint8)


def _truncated_cog(path: Path, keep: float = 0.6) -> Path:
    """A 4-band COG whose header is intact and whose last tiles are cut off (a failed upload
    or download): it opens, and the reads of its last tiles fail."""
    write_cog(path, _image(), crs="EPSG:32633", transform=T, nodata=0, blocksize=128)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 on loopback with a bucket holding one COG (created before authentication is
    switched on)."""
    tmp = tmp_path_factory.mktemp("denied")
    with moto_server() as ep, pytest.MonkeyPatch.context() as mp:
        apply_env(mp, ep, tmp)
        client = s3_client(ep)
        client.create_bucket(Bucket=BUCKET)
        cog = write_cog(tmp / "a.tif", _image(64, 64), crs="EPSG:32633", transform=T, nodata=0)
        client.upload_file(str(cog), BUCKET, "in/a.tif")
        yield ep


@pytest.fixture
def denied(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Every request to the server is authenticated from now on: the fake keys are unknown
    (InvalidAccessKeyId, 403)."""
    import moto.settings

    apply_env(monkeypatch, endpoint, tmp_path)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0.0)
    return endpoint


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# --- an unknown access key on an input is "access denied", not "not found" ---


@pytest.mark.parametrize("message", [
    INVALID_KEY,
    "The request signature we calculated does not match the signature you provided.",
    "Access Denied",
    "HTTP response code on https://h/b/k.tif: 403",
    "Anonymous caller does not have storage.objects.get access to the Google Cloud Storage "
    "object.",
    "Server failed to authenticate the request.",
])
def test_denials_are_access_denied(message: str) -> None:
    msg = describe_remote_error("s3://b/k.tif", message)
    assert msg.startswith("s3://b/k.tif: access denied") and "AWS_ACCESS_KEY_ID" in msg
    assert "not found" not in msg and "\n" not in msg


@pytest.mark.parametrize("message", ["HTTP response code: 404",
                                     "The specified key does not exist.",
                                     "The specified bucket does not exist"])
def test_missing_objects_are_still_not_found(message: str) -> None:
    assert " not found (" in describe_remote_error("s3://b/k.tif", message)


def test_s3_input_with_an_unknown_key_is_access_denied(denied: str) -> None:
    with pytest.raises(NotARasterError, match="access denied") as err:
        open_info(f"s3://{BUCKET}/in/a.tif")
    text = str(err.value)
    assert "not found" not in text and "AWS_ACCESS_KEY_ID" in text
    assert "testing-secret" not in text and "\n" not in text


def test_cli_s3_input_with_an_unknown_key_is_one_line(
        denied: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    # another key than the test above: GDAL caches what it learnt about a URL
    rc = main(["-q", "run", f"s3://{BUCKET}/in/b.tif", "-o", str(tmp_path / "o"),
               "-m", "landcover"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1 and "access denied" in lines[0], err
    assert "Traceback" not in err and "testing-secret" not in err


# --- a 403 on an output location is "access denied", not "check the network" ---


def test_output_403_on_a_listing_is_access_denied(denied: str) -> None:
    folder = ObjectFolder(f"s3://{BUCKET}/run")
    for op in (folder.check, folder.listing, folder.children, lambda: folder.put("x", b"1")):
        with pytest.raises(StorageError) as err:
            op()
        text = str(err.value)
        assert text.startswith("access denied to s3://"), text
        assert err.value.fatal and "InvalidAccessKeyId" in text
        assert "network" not in text and "\n" not in text and "testing-secret" not in text


def test_generic_error_with_a_denial_in_its_text_is_access_denied() -> None:
    from obstore.exceptions import GenericError

    body = ("Generic S3 error: Error performing list request: Error performing GET "
            "http://h/b?list-type=2&X-Amz-Signature=abc in 3ms - Server returned non-2xx status "
            "code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch"
            "</Code><Message>The request signature we calculated does not match the signature "
            "you provided.</Message></Error>")
    err = storage_error(GenericError(body), "s3://b/run")
    assert err is not None and err.fatal
    assert str(err).startswith("access denied to s3://b/run (SignatureDoesNotMatch: The "
                               "request signature")
    assert "abc" not in str(err) and "\n" not in str(err)
    # a 5xx stays a transient "cannot reach"
    err = storage_error(GenericError("Server returned non-2xx status code: 503 Service "
                                     "Unavailable"), "s3://b/run", "reach")
    assert err is not None and not err.fatal and str(err).startswith("cannot reach")
    assert str(err).endswith("then rerun")  # the job's first request: nothing to resume yet
    err = storage_error(GenericError("Server returned non-2xx status code: 503 Service "
                                     "Unavailable"), "s3://b/run/x", "read")
    assert err is not None and str(err).endswith("rerun with --resume (finished chunks are kept)")


def test_cli_output_with_an_unknown_key_is_one_line(
        denied: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    tif = write_cog(tmp_path / "a.tif", _image(64, 64), crs="EPSG:32633", transform=T,
                    nodata=0)
    rc = main(["-q", "run", str(tif), "-o", f"s3://{BUCKET}/run", "-m", "landcover"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc == StorageError.exit_code and len(lines) == 1, err
    assert lines[0].startswith(f"error: access denied to s3://{BUCKET}/run"), err
    assert "Traceback" not in err and "testing-secret" not in err


# --- a truncated remote COG names GDAL's cause, not only "Read failed" ---


def test_truncated_remote_cog_names_the_cause(
        http_server: _CountingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    _truncated_cog(http_server.root / "cut.tif")
    url = http_server.url("cut.tif") + "?token=SECRET"
    out = tmp_path / "o"
    rc = main(["-q", "run", url, "-o", str(out), "-m", "landcover", "--chunk-size", "128",
               "--halo", "16"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err, err
    failed = json.loads((out / "summary.json").read_text())["chunks"]["failed"]
    assert failed
    for f in failed:
        e = f["error"]
        assert e.startswith("RasterioIOError: cannot read pixels ") and "cut.tif" in e, e
        assert "See previous exception" not in e and "SECRET" not in e
        # GDAL's root cause: libtiff's short read, or the range past the end of the file
        assert "TIFF" in e or "bytes" in e or "range" in e.lower(), e
        assert "truncated" in e and "\n" not in e
        assert f["retryable"]  # a dropped connection looks the same: still retried
    assert "See previous exception" not in err


# --- the spectral check on an image that opens but cannot be read ---


def test_spectral_check_on_a_damaged_image_is_one_line(tmp_path: Path) -> None:
    from geoseg.change.spectral import open_spectral

    good = write_cog(tmp_path / "good.tif", _image(), crs="EPSG:32633", transform=T, nodata=0,
                     blocksize=128)
    bad = _truncated_cog(tmp_path / "bad.tif", keep=0.3)
    with rasterio.open(bad):  # the header is intact: it opens
        pass
    grid = open_info(good).geobox
    with pytest.raises(InputError, match=r"cannot read the pixels of .*bad\.tif") as err:
        open_spectral(str(good), str(bad), grid, grid.window)
    text = str(err.value)
    assert "re-download" in text and "\n" not in text and "See previous" not in text


def test_spectral_window_of_a_damaged_image_is_one_line(tmp_path: Path) -> None:
    """A damage the sample windows missed fails later, in a window read: the same error."""
    from geoseg.change.spectral import SpectralCodes, SpectralInputs

    good = write_cog(tmp_path / "good.tif", _image(), crs="EPSG:32633", transform=T, nodata=0,
                     blocksize=128)
    bad = _truncated_cog(tmp_path / "bad.tif", keep=0.3)
    ia, ib = open_info(good), open_info(bad)
    spec = SpectralInputs(ia, ib, (1, 2, 3, 4), (0.0,) * 4, (1.0,) * 4, (0.0,) * 4,
                          (1.0,) * 4)
    codes = SpectralCodes(spec, ia.geobox)
    with pytest.raises(InputError, match=r"cannot read the pixels of .*bad\.tif"):
        codes.window(ia.geobox.window)
