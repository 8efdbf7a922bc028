"""geoseg.objstore against moto's S3 on loopback: conditional writes, the lock object (live lock
refused, stale lock taken over by one job only, a lost lock noticed), one-line errors."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import geoseg.objstore as objstore
from geoseg.errors import InputError, OutputLockedError, StorageError
from geoseg.objstore import ObjectFolder, ObjectLock, is_object_url
from tests.s3_fixtures import apply_env, moto_server, s3_client

BUCKET = "geoseg-lock"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server() as ep, pytest.MonkeyPatch.context() as mp:
        apply_env(mp, ep, tmp_path_factory.mktemp("aws"))
        s3_client(ep).create_bucket(Bucket=BUCKET)
        yield ep


@pytest.fixture
def folder(endpoint: str, request: pytest.FixtureRequest) -> ObjectFolder:
    return ObjectFolder(f"s3://{BUCKET}/{request.node.name}/")


def test_urls() -> None:
    assert is_object_url("s3://b/k") and is_object_url("gs://b") and is_object_url("az://c/p")
    assert not is_object_url("/data/out") and not is_object_url("https://host/out")
    assert objstore.join("s3://b/run/", "predictions.zarr") == "s3://b/run/predictions.zarr"


def test_put_get_create_replace_list(folder: ObjectFolder) -> None:
    assert folder.get("a.json") is None and folder.head("a.json") is None
    first = folder.create("a.json", b"1")
    assert first is not None and folder.create("a.json", b"2") is None  # If-None-Match
    assert folder.read("a.json") == b"1"
    second = folder.replace("a.json", b"3", first)
    assert second is not None and folder.replace("a.json", b"4", first) is None  # If-Match
    folder.put("d/x", b"xx")
    folder.put("d/y/z", b"zzz")
    assert folder.children() == ["a.json", "d"]
    assert {k: m.size for k, m in folder.listing("d").items()} == {"d/x": 2, "d/y/z": 3}
    assert folder.delete_tree("d") == 2 and folder.children() == ["a.json"]
    # one object by its name (a listing of "a.json" is that of a folder "a.json/")
    folder.put("a.json2", b"5")
    assert folder.delete_tree("a.json") == 1 and folder.children() == ["a.json2"]


@pytest.mark.parametrize("url", ["s3://b/runs/h#1", "s3://b/runs/p%20q", "s3://b/r?x=1"])
def test_url_syntax_in_a_folder_name_is_refused(url: str) -> None:
    """obstore reads these as a fragment, an escape or a query: ``s3://b/runs/h#1`` would
    be written (and wiped by a store's mode "w") at ``s3://b/runs/h``."""
    for make in (ObjectFolder, objstore.client):
        with pytest.raises(InputError, match="cannot be part of an object-storage folder name"):
            make(url)


def test_live_lock_refused_in_one_line(folder: ObjectFolder) -> None:
    with ObjectLock(folder):
        with pytest.raises(OutputLockedError, match="in use by another geoseg job") as err:
            ObjectLock(folder).acquire()
        assert "\n" not in str(err.value)
    assert folder.head(".geoseg.lock") is None  # released
    with ObjectLock(folder):  # and free again
        pass


def test_stale_locks_are_taken_over(folder: ObjectFolder,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.outdir as outdir

    # a driver of this host that died: taken over at once
    dead = {"host": socket.gethostname(), "pid": 2**22 + 17, "command": "geoseg run"}
    assert folder.create(".geoseg.lock", json.dumps(dead).encode()) is not None
    with ObjectLock(folder).acquire("second") as held:
        assert json.loads(folder.read(".geoseg.lock") or b"{}")["command"] == "second"
        assert held.held is not None
    # a job of another host: live while it refreshes the object, stale after STALE_AFTER_S
    other = {"host": "elsewhere", "pid": 1, "command": "geoseg run (a pod)"}
    stale = folder.create(".geoseg.lock", json.dumps(other).encode())
    assert stale is not None
    with pytest.raises(OutputLockedError, match=r"a pod\), host elsewhere"):
        ObjectLock(folder).acquire()
    monkeypatch.setattr(outdir, "STALE_AFTER_S", -1.0)
    lock = ObjectLock(folder).acquire("third")
    # the stale holder's conditional refresh now fails: it cannot take the lock back
    assert folder.replace(".geoseg.lock", json.dumps(other).encode(), stale) is None
    lock.release()
    assert folder.head(".geoseg.lock") is None


def test_heartbeat_detects_a_lost_lock(folder: ObjectFolder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objstore, "HEARTBEAT_S", 0.05)
    lock = ObjectLock(folder).acquire()
    folder.put(".geoseg.lock", b'{"command": "someone else"}')  # taken by another job
    deadline = time.monotonic() + 10
    while not lock._lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock._lost
    lock.release()
    assert folder.read(".geoseg.lock") == b'{"command": "someone else"}'


def test_missing_bucket_and_dead_endpoint_are_one_line(endpoint: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match=r"bucket s3://no-such-bucket does not exist") as err:
        ObjectFolder("s3://no-such-bucket/run").check()
    assert err.value.fatal and "\n" not in str(err.value)
    with socket.socket() as s:  # a port nobody listens on: connection refused, retried, reported
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot write s3://") as err:
        ObjectFolder(f"s3://{BUCKET}/down").put("x", b"1")
    assert not err.value.fatal and "--resume" in str(err.value) and "\n" not in str(err.value)
    assert "testing-secret" not in str(err.value)
    print(f"gave up after {time.monotonic() - t0:.1f} s")


def test_fetch_keeps_unchanged_objects(folder: ObjectFolder, tmp_path: Path) -> None:
    from geoseg.errors import InputError
    from geoseg.runfolder import fetch_run

    with pytest.raises(InputError, match="not a geoseg run"):
        fetch_run(folder.url, tmp_path / "x")
    folder.put("manifest.json", json.dumps({"result_key": "k"}).encode())
    folder.put("summary.json", b"{}")
    folder.put("_geoseg/chunks/0_0.json", b"{}")
    dest = fetch_run(folder.url, tmp_path / "copy")
    assert sorted(p.name for p in dest.iterdir()) == [".geoseg-fetched.json", "manifest.json",
                                                       "summary.json"]
    fetched = (dest / "summary.json").stat().st_mtime_ns
    (dest / "summary.json").write_text("a truncated or edited copy")
    folder.put("quicklook.png", b"png")
    fetch_run(folder.url, dest)  # fetches what is new or differs from the bucket's object
    assert (dest / "summary.json").read_text() == "{}" and (dest / "quicklook.png").exists()
    assert (dest / "summary.json").stat().st_mtime_ns != fetched
    again = (dest / "quicklook.png").stat().st_mtime_ns
    fetch_run(folder.url, dest)  # nothing changed: nothing fetched
    assert (dest / "quicklook.png").stat().st_mtime_ns == again
    folder.delete(["quicklook.png"])  # what the bucket no longer has goes
    fetch_run(folder.url, dest)
    assert not (dest / "quicklook.png").exists()
    # a name that would land outside the copy (here in a damaged fetch index, whose stale
    # entries are deleted) is refused before anything is written or deleted
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file")
    index = dest / ".geoseg-fetched.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "../outside.txt": [1, "e"]}))
    with pytest.raises(InputError, match="would land outside"):
        fetch_run(folder.url, dest)
    assert outside.read_text() == "the user's file" and (dest / "summary.json").exists()


def test_aws_profile_from_the_credentials_file(folder: ObjectFolder, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    creds = tmp_path / "credentials"
    creds.write_text("[geoseg]\naws_access_key_id = profile-key\n"
                     "aws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "geoseg")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    found = objstore._profile_credentials(folder.url)
    assert found is not None
    folder.put("from-profile", b"1")  # signed with the profile's keys, through boto3's chain
    assert folder.read("from-profile") == b"1"


def test_denied_access_is_fatal_and_names_no_secret() -> None:
    from obstore.exceptions import PermissionDeniedError

    from geoseg.objstore import storage_error

    for exc in (PermissionError("Forbidden: SignatureDoesNotMatch"),
                PermissionDeniedError("Error performing PUT https://u:p@host/b/k?X-Amz-"
                                      "Signature=abc: 403 Forbidden")):
        err = storage_error(exc, "s3://bucket/run/x")
        assert err is not None and err.fatal
        assert str(err).startswith("access denied to s3://bucket/run/x")
        assert "X-Amz-Signature=abc" not in str(err) and "u:p@" not in str(err)
    assert storage_error(ValueError("not ours"), "s3://bucket/run") is None
