"""Multi-GPU layout: model actors ask Ray for GPU fractions, results do not depend on how many
actors share the GPUs, and back pressure holds. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.ray_backend import RayBackend
from tests.cluster.conftest import job_dict, store_files

pytestmark = [pytest.mark.gpu, pytest.mark.ray]


def test_gpu_actors_share_and_agree(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                    tiny_bundles: tuple[str, str]) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import ray

    assert ray.cluster_resources().get("GPU", 0) >= 1
    outs = {}
    for workers, share in ((1, 1.0), (2, 0.5)):  # 2 actors on one GPU: half a GPU each
        out = tmp_path / f"w{workers}"
        backend = RayBackend()
        res = run_job(validate_job(job_dict(region_tif, out, tiny_bundles, workers=workers,
                                            device="cuda", gpus_per_worker=share,
                                            max_in_flight=3)), backend=backend)
        assert res.ok and res.summary["runtime"]["device"] == "cuda"
        assert backend.peak_in_flight <= 3
        outs[workers] = store_files(out)
    assert outs[1] == outs[2]
