"""A cluster without a shared disk: a real two-node Ray cluster on this machine (``ray start
--head`` plus ``ray start --address``, each with its own temp dir, bound to 127.0.0.1) reads the
image over HTTP from a loopback server that answers Range requests and writes the run to a real
S3 API on loopback (moto); the result is byte-identical to a local run of the same image.

Nothing is shared between the nodes and the driver but the two loopback servers: the input
comes from the HTTP server, the Zarr chunks go from the workers straight to the bucket (and the
vector tasks read them back from there), the driver builds the GeoPackage, COGs and quicklook in
its own temporary folder and uploads them. The nodes get the S3 endpoint and keys from their own
environment, as nodes on a cloud get them from their IAM role / workload identity.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest
import shapely

from geoseg.config import validate_job
from geoseg.job import run_job
from tests.cluster.conftest import job_dict, write_config
from tests.cluster.test_submit import (  # noqa: F401
    LocalCluster,
    _env,
    _get_json,
    local_cluster,
)
from tests.range_server import RangeServer
from tests.s3_fixtures import apply_env, assert_same_store, body, keys, moto_server, s3_client

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUCKET = "geoseg-cluster"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The S3 server, and its settings in this process's environment *before* the cluster
    starts (its nodes inherit them); no proxy for loopback."""
    with moto_server() as ep, pytest.MonkeyPatch.context() as mp:
        apply_env(mp, ep, tmp_path_factory.mktemp("aws"))
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                    "ALL_PROXY"):
            mp.delenv(var, raising=False)
        s3_client(ep).create_bucket(Bucket=BUCKET)
        yield ep


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeServer]:
    """The image's HTTP server (Range requests, byte counts)."""
    srv = RangeServer(tmp_path_factory.mktemp("www")).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def cluster(http_server: RangeServer, endpoint: str,
            local_cluster: LocalCluster) -> LocalCluster:  # noqa: F811
    return local_cluster


def _job(image: str, out: str, bundles: tuple[str, str]) -> dict[str, object]:
    """The cluster tests' small job (64² chunks, 16 of them) with every output on."""
    job = job_dict(Path(image), Path(out), bundles, workers=2, device="cpu")
    job.update(image=image, output=out, vectors={"enabled": True, "halo": 48},
               outputs={"cog": True, "quicklook": True})
    return job


def test_two_nodes_http_in_s3_out_equals_local(cluster: LocalCluster, endpoint: str,
                                              http_server: RangeServer,
                                              region_tif: Path, tiny_bundles: tuple[str, str],
                                              tmp_path: Path) -> None:
    shutil.copy(region_tif, http_server.root / "region.tif")
    url = http_server.url("region.tif")
    out = f"s3://{BUCKET}/run"
    cfg = write_config(tmp_path / "job.yaml", _job(url, out, tiny_bundles))

    t0 = time.perf_counter()
    local = tmp_path / "local"
    assert run_job(validate_job(_job(str(region_tif), str(local), tiny_bundles))).ok
    t_local = time.perf_counter() - t0

    # the driver: its own process, joining the cluster as `geoseg run --address` does
    env = {**_env(), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "geoseg", "-q", "run", url, "-o", out, "--config", str(cfg),
           "--address", f"127.0.0.1:{cluster.gcs_port}", "--executor", "ray"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    t_cluster = time.perf_counter() - t0
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    print(f"local run {t_local:.1f} s; two-node cluster, HTTP in, S3 out {t_cluster:.1f} s "
          f"(driver start and Ray connection included); {http_server.served} bytes served")
    assert http_server.served.get("region.tif", 0) > 0  # the nodes read the image over HTTP
    nodes = _chunk_tasks_per_node(cluster)
    print(f"chunk tasks per node: {nodes}")
    assert len(nodes) == 2, nodes  # both nodes read, wrote and vectorized chunks

    c = s3_client(endpoint)
    names = keys(c, BUCKET, "run/")
    assert "run/stac-item.json" in names and "run/.geoseg.lock" not in names
    assert json.loads(body(c, BUCKET, "run/manifest.json"))["status"] == "complete"
    summary = json.loads(body(c, BUCKET, "run/summary.json"))
    assert summary["runtime"]["backend"] == "RayBackend" and summary["status"] == "complete"
    # a model actor on each node, each reading its own band of chunks through its node's cache
    assert summary["runtime"]["model_nodes"] == 2
    assert summary["source_blocks"]["decoded"] > 0
    assert_same_store(c, BUCKET, "run", local)  # attributes differ: the image is a URL here
    for name in ("landcover.tif", "buildings.tif", "quicklook.png"):
        assert body(c, BUCKET, f"run/{name}") == (local / name).read_bytes(), name
    gpkg = tmp_path / "features.gpkg"
    gpkg.write_bytes(body(c, BUCKET, "run/features.gpkg"))
    for layer in ("landcover", "buildings"):  # the same features (in another order)
        a, b = (sorted(shapely.to_wkb(shapely.normalize(
            pyogrio.read_dataframe(p, layer=layer).geometry.values)))
            for p in (gpkg, local / "features.gpkg"))
        assert a == b, layer


def _chunk_tasks_per_node(cluster: LocalCluster) -> dict[str, int]:
    """How many read/write/vectorize tasks ran on each node (Ray's state API)."""
    data = _get_json(f"{cluster.url}/api/v0/tasks?limit=10000")
    out: dict[str, int] = {}
    for t in data["data"]["result"]["result"]:
        if t.get("name") in ("_read", "_write", "_vectorize") and t.get("node_id"):
            out[t["node_id"][:8]] = out.get(t["node_id"][:8], 0) + 1
    return out
