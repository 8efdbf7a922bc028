"""Model actors never take the CPUs that the reads and writes beside them need: more actors
than a cluster's CPUs hold (4 CPU actors, or 2 GPU actors, on a 2-CPU Ray) had waited forever
for a reader and write tasks that Ray could not place."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.ray_backend import (
    MIN_ACTOR_CPUS,
    TASK_CPUS,
    RayBackend,
    _actor_cpus,
    _vector_cpus,
)
from tests.cluster.conftest import assert_same_store, job_dict


@pytest.mark.parametrize(("workers", "gpu", "total"),
                         [(1, True, 16.0), (4, True, 16.0), (2, True, 2.0), (4, False, 2.0),
                          (8, True, 4.0), (64, False, 2.0), (1, False, 1.0)])
def test_actors_leave_room_for_a_reader_a_write_and_vectors(workers: int, gpu: bool,
                                                            total: float) -> None:
    want = 1.0 if gpu else 0.5
    actor = _actor_cpus(workers, gpu, total)
    assert MIN_ACTOR_CPUS <= actor <= want
    if workers * want + 3 * TASK_CPUS <= total:  # room for all: what an actor always took
        assert actor == want
    else:  # the actors shrink until a reader, a write and a vectorize task fit beside them
        assert workers * actor + 3 * TASK_CPUS <= total + 1e-9 or actor == MIN_ACTOR_CPUS
    vec = _vector_cpus(workers, actor, total)
    assert TASK_CPUS <= vec <= 1.0


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_more_actors_than_cpus_finish(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                      tiny_bundles: tuple[str, str], clean_run: Path) -> None:
    import ray

    assert ray.cluster_resources()["CPU"] == 2  # the session's Ray (tests/conftest.py)
    out = tmp_path / "w4"
    res = run_job(validate_job(job_dict(region_tif, out, tiny_bundles, workers=4,
                                        device="cpu")), backend=RayBackend())
    assert res.ok and res.summary["runtime"]["workers"] == 4
    assert_same_store(clean_run, out)  # the serial run's bytes (one worker: the same, as
    # tests/cluster/test_failures.py shows)
