"""One set of Azure variables serves a job's ``az://`` inputs (GDAL) and outputs (obstore).

GDAL reads ``AZURE_STORAGE_CONNECTION_STRING`` and ``AZURE_STORAGE_ACCOUNT``; obstore reads
neither, so a run whose inputs opened fine stopped at its ``az://`` output with "Account must be
specified ... check the network ... rerun with --resume". The end-to-end tests use a real HTTP
server on 127.0.0.1 that answers every request as Azure does a wrong key (403
AuthenticationFailed), so both clients are seen to reach the endpoint of the connection string,
signed with its account; no test resolves a real cloud host."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from affine import Affine

from geoseg.errors import NotARasterError, StorageError
from geoseg.objstore import azure_config, storage_error
from geoseg.sources.remote import describe_remote_error
from tests.sources.conftest import write_cog

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IrwIMXOA3Q1ngGMRG1cJ0Dgsi1yYrsVHvGmCKzR51Q=="
T = Affine(0.5, 0, 500_000.0, 0, -0.5, 5_100_000.0)


# --- the settings obstore gets ---

def test_a_connection_string_gives_account_key_and_endpoint() -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY};"
           "BlobEndpoint=http://127.0.0.1:10000/acct/;"}
    assert azure_config(env) == {"account_name": "acct", "account_key": KEY,
                                 "endpoint": "http://127.0.0.1:10000/acct"}


def test_a_sas_connection_string_and_an_endpoint_suffix() -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           "accountname=acct;SharedAccessSignature=?sv=2024&sig=abc%3D;"
           "EndpointSuffix=core.chinacloudapi.cn"}
    assert azure_config(env) == {"account_name": "acct", "sas_key": "sv=2024&sig=abc%3D",
                                 "endpoint": "https://acct.blob.core.chinacloudapi.cn"}


def test_gdal_s_account_variable_and_the_emulator() -> None:
    assert azure_config({"AZURE_STORAGE_ACCOUNT": "acct",
                         "AZURE_STORAGE_ACCESS_KEY": KEY}) == {"account_name": "acct"}
    assert azure_config({"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
                        ) == {"use_emulator": True}
    assert azure_config({}) == {}


def test_obstore_s_own_variables_win() -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           f"AccountName=a;AccountKey={KEY};SharedAccessSignature=sv=1;BlobEndpoint=http://h/a",
           "AZURE_STORAGE_ACCOUNT_NAME": "b", "AZURE_STORAGE_ACCOUNT_KEY": "k",
           "AZURE_STORAGE_SAS_TOKEN": "sv=2", "AZURE_STORAGE_ENDPOINT": "http://other/b"}
    assert azure_config(env) == {}


# --- end to end, against a server that denies every request ---

class _Denying(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str]]] = []

    def _deny(self) -> None:
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed'
                b'</Code><Message>Server failed to authenticate the request.</Message></Error>')
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _deny

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, str]]]:
    """The denying server, and the environment of a user who set only the connection string."""
    import os

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                       f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{server.server_port}"
                       "/devstoreaccount1;")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    _Denying.seen = []
    try:
        yield _Denying.seen
    finally:
        server.shutdown()
        server.server_close()


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from geoseg.cli import main

    rc = main(["-q", "run", *args, "-m", "landcover"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and KEY not in err, err
    return rc, [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_an_az_output_uses_the_connection_string(
        azure: list[tuple[str, str, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    img = np.random.default_rng(3).integers(1, 255, size=(4, 64, 64), dtype=np.uint8)
    tif = write_cog(tmp_path / "a.tif", img, crs="EPSG:32633", transform=T, nodata=0)
    rc, lines = _run([str(tif), "-o", "az://cont/run"], capsys)
    assert rc == StorageError.exit_code and len(lines) == 1, lines
    assert lines[0].startswith("error: access denied to az://cont/run (AuthenticationFailed"), \
        lines
    # the client listed the container at the string's endpoint, signed with its account
    method, path, auth = azure[0]
    assert method == "GET" and path.startswith("/devstoreaccount1/cont?"), azure
    assert auth.startswith("SharedKey devstoreaccount1:"), auth


def test_an_az_input_with_the_same_variable_is_denied_too(
        azure: list[tuple[str, str, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = _run(["az://cont/in/a.tif", "-o", str(tmp_path / "o")], capsys)
    assert rc == NotARasterError.exit_code and len(lines) == 1, lines
    assert lines[0].startswith("error: az://cont/in/a.tif: access denied"), lines
    assert any(p.startswith("/devstoreaccount1/cont/in/a.tif") for _m, p, _a in azure), azure
    assert not (tmp_path / "o").exists()


def test_no_azure_account_at_all_is_one_line_that_says_what_to_set(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    img = np.random.default_rng(3).integers(1, 255, size=(4, 64, 64), dtype=np.uint8)
    tif = write_cog(tmp_path / "a.tif", img, crs="EPSG:32633", transform=T, nodata=0)
    rc, lines = _run([str(tif), "-o", "az://cont/run"], capsys)
    assert rc == StorageError.exit_code and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot use az://cont/run (") and \
        "AZURE_STORAGE_CONNECTION_STRING" in lines[0], lines
    assert "--resume" not in lines[0] and "network" not in lines[0], lines


# --- no credentials anywhere: the client's last resort, the metadata service, gave none ---

@pytest.mark.parametrize(("url", "text", "hint"), [
    ("gs://b/run", "Generic GCS error: Error performing token request: Error performing GET "
     "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token?"
     "recursive=true", "GOOGLE_APPLICATION_CREDENTIALS"),
    ("s3://b/run", "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/"
     "token in 1ms - Server returned non-2xx status code: 403 Forbidden", "AWS_PROFILE"),
    ("az://c/run", "Generic MicrosoftAzure error: Error performing token request: Error "
     "performing GET http://169.254.169.254/metadata/identity/oauth2/token",
     "AZURE_STORAGE_CONNECTION_STRING")])
def test_no_credentials_found_says_what_to_set(url: str, text: str, hint: str) -> None:
    from obstore.exceptions import GenericError

    err = storage_error(GenericError(text), url, "reach")
    assert err is not None and err.fatal
    assert str(err).startswith(f"no credentials for {url}: none in the environment"), err
    assert hint in str(err) and "access denied" not in str(err) and "--resume" not in str(err)


# --- inputs: GDAL found no credentials at all ---

GS_UNSET = ("GS_SECRET_ACCESS_KEY+GS_ACCESS_KEY_ID, GS_OAUTH2_REFRESH_TOKEN or "
            "GOOGLE_APPLICATION_CREDENTIALS or GS_OAUTH2_PRIVATE_KEY+GS_OAUTH2_CLIENT_EMAIL and "
            "/root/.boto, or GS_NO_SIGN_REQUEST=YES configuration options not defined")


def test_gdal_without_google_credentials_says_what_to_set() -> None:
    msg = describe_remote_error("gs://b/k.tif", GS_UNSET)
    assert msg.startswith("gs://b/k.tif: no credentials (GS_SECRET_ACCESS_KEY"), msg
    assert msg.endswith("or GS_NO_SIGN_REQUEST=YES for a public bucket"), msg
    assert "AWS" not in msg and "network" not in msg


def test_an_az_input_without_azure_credentials_says_what_to_set(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """GDAL's own message (it fails before any request) and the variables to set."""
    import os

    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no Azure CLI configuration either
    rc, lines = _run(["az://cont/in/a.tif", "-o", str(tmp_path / "o")], capsys)
    assert rc == NotARasterError.exit_code and len(lines) == 1, lines
    assert lines[0].startswith("error: az://cont/in/a.tif: no credentials (Missing "
                               "AZURE_STORAGE_ACCOUNT"), lines
    assert lines[0].endswith("AZURE_NO_SIGN_REQUEST=YES for a public container"), lines
