"""The local executor (threads of one process) and the fast paths it relies on give the same
results as the serial reference: byte-identical stores and features, classes from logits equal
to classes from blended probabilities, and a seam merge that is a coverage union."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import Polygon

from geoseg.config import validate_job
from geoseg.job import executor, run_job
from geoseg.runtime.local import LocalBackend
from geoseg.runtime.serial import SerialBackend
from geoseg.stitch import classify, classify_logits
from geoseg.vectorize import landcover as lc
from geoseg.vectorize.features import drop_collinear
from tests.cluster.conftest import assert_same_store


def _cfg(image: Path, out: Path, bundles: tuple[str, ...], split_px: int = 4096,
         **runtime: Any) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"halo": 48, "landcover_split_px": split_px},
                         "runtime": {"threads_per_worker": 1, **runtime}})


def _features(out: Path, layer: str) -> Any:
    df = pyogrio.read_dataframe(out / "features.gpkg", layer=layer)
    return df.sort_values("id").reset_index(drop=True)


def test_local_equals_serial(tmp_path: Path, scene_tif: Path,
                             tiny_bundles: tuple[str, str]) -> None:
    ref = run_job(_cfg(scene_tif, tmp_path / "serial", tiny_bundles), backend=SerialBackend())
    backend = LocalBackend(io_threads=3)
    res = run_job(_cfg(scene_tif, tmp_path / "local", tiny_bundles, max_in_flight=4),
                  backend=backend)
    assert res.ok and ref.ok
    assert backend.peak_in_flight <= 4
    assert_same_store(tmp_path / "serial", tmp_path / "local")
    for layer in ("landcover", "buildings"):
        a, b = _features(tmp_path / "serial", layer), _features(tmp_path / "local", layer)
        assert len(a) == len(b) > 0
        assert (a.geometry.to_wkb() == b.geometry.to_wkb()).all()
        assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert res.summary["class_pixels"] == ref.summary["class_pixels"]
    assert res.summary["runtime"]["backend"] == "LocalBackend"


def test_split_regions_dissolve_to_the_uncut_ones(tmp_path: Path, scene_tif: Path,
                                                  tiny_bundles: tuple[str, str]) -> None:
    """Land cover cut at 128-px split lines (2x2 chunks): pieces carry their region's id, set
    in the GeoPackage after the pieces were written; dissolving by it gives the uncut layer,
    and GDAL still reads the file and its spatial index."""
    import sqlite3

    uncut, cut = tmp_path / "uncut", tmp_path / "cut"
    assert run_job(_cfg(scene_tif, uncut, tiny_bundles[:1], split_px=0)).ok
    assert run_job(_cfg(scene_tif, cut, tiny_bundles[:1], split_px=128)).ok
    a, b = _features(uncut, "landcover"), _features(cut, "landcover")
    assert (a.id == a.region_id).all()
    pieces = b[b.id != b.region_id]
    assert len(pieces) > 0 and len(b) > len(a)
    d = b.dissolve(by="region_id", aggfunc={"class_id": "first", "pixels": "sum"})
    a = a.set_index("id")
    assert sorted(d.index) == sorted(a.index)
    assert (d.pixels == a.pixels[d.index]).all() and (d.class_id == a.class_id[d.index]).all()
    assert all(d.geometry[i].equals(a.geometry[i]) for i in d.index)
    with sqlite3.connect(cut / "features.gpkg") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    x0, y0, x1, y1 = b.total_bounds
    box = (x0, y0, (x0 + x1) / 2, (y0 + y1) / 2)
    inside = pyogrio.read_dataframe(cut / "features.gpkg", layer="landcover", bbox=box)
    expected = b[b.intersects(shapely.box(*box))]
    assert 0 < len(inside) == len(expected)


def test_executor_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"image": "a.tif", "output": str(tmp_path)}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pytest.importorskip("ray")
    assert executor(validate_job(base)) == "local"  # no Ray in this test (tests/conftest.py)
    assert executor(validate_job({**base, "runtime": {"address": "127.0.0.1:6379"}})) == "ray"
    assert executor(validate_job({**base, "runtime": {"executor": "ray"}})) == "ray"
    assert executor(validate_job({**base, "runtime": {"executor": "local"}})) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert executor(validate_job(base)) == "ray"


@given(st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_classes_from_logits_equal_classes_from_probabilities(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4, size=(k, 17, 23)).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0))
    probs = e / e.sum(axis=0)
    cls_a, conf_a = classify_logits(logits)
    cls_b, conf_b = classify(probs, np.ones((17, 23), bool))
    assert np.array_equal(cls_a, cls_b)
    assert np.abs(conf_a.astype(int) - conf_b.astype(int)).max() <= 1  # float rounding


def _old_drop_collinear(poly: Polygon) -> Polygon:
    """The per-ring implementation the vectorized one replaced."""
    def ring(coords: np.ndarray) -> np.ndarray:
        pts = coords[:-1]
        if len(pts) <= 4:
            return coords
        d_in = pts - np.roll(pts, 1, axis=0)
        d_out = np.roll(pts, -1, axis=0) - pts
        cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
        keep = ~((cross == 0) & ((d_in * d_out).sum(axis=1) > 0))
        kept = pts[keep]
        return np.vstack([kept, kept[:1]])

    return Polygon(ring(np.asarray(poly.exterior.coords)),
                   [ring(np.asarray(h.coords)) for h in poly.interiors])


@given(st.integers(0, 2**31 - 1), st.integers(4, 40))
def test_seam_merge_is_an_exact_coverage_union(seed: int, chunk: int) -> None:
    """Pixel regions cut by a chunk lattice: the coverage union of the pieces (no fallback to
    the overlay union) equals the overlay union and the uncut region, vertex for vertex."""
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    blob = rng.random((3 * chunk, 3 * chunk)) < 0.6
    labels = label(blob, connectivity=1)
    big = np.bincount(labels.ravel())[1:].argmax() + 1
    region = labels == big
    whole = next(iter(_polygons(region, 0, 0)))
    pieces = [p for r in range(0, 3 * chunk, chunk) for c in range(0, 3 * chunk, chunk)
              for p in _polygons(region[r:r + chunk, c:c + chunk], r, c)]
    union = lc._coverage_union(pieces, chunk)
    assert isinstance(union, Polygon)  # the coverage path, not the fallback
    merged = drop_collinear(union)
    assert shapely.normalize(merged).equals_exact(shapely.normalize(drop_collinear(whole)), 0)
    overlay = drop_collinear(shapely.union_all(pieces))
    assert shapely.normalize(merged).equals_exact(shapely.normalize(overlay), 0)
    assert shapely.normalize(drop_collinear(whole)).equals_exact(
        shapely.normalize(_old_drop_collinear(whole)), 0)


def _polygons(mask: np.ndarray, row: int, col: int) -> list[Polygon]:
    from geoseg.vectorize.features import trace_labels

    return [p for _v, p in trace_labels(mask.astype(np.int32), row, col)]


def test_background_sink_reports_a_writer_error() -> None:
    from geoseg.vector_outputs import BackgroundSink

    class Broken:
        def add(self, _result: Any) -> None:
            raise OSError(28, "No space left on device")

        def finish(self) -> dict[str, int]:
            return {}

    sink = BackgroundSink(Broken(), depth=2)  # type: ignore[arg-type]
    sink.add(object())  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space"):
        sink.finish()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_predict_core_matches_the_probability_path(tiny_bundles: tuple[str, str],
                                                   device: str) -> None:
    """The single-pass fast path (classes and confidence from logits, on the model's device)
    gives the classes of softmax + argmax over the cropped core."""
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from geoseg.models.predictor import Predictor

    pred = Predictor(tiny_bundles[0], device=device, engine="torch")
    x = (np.random.default_rng(3).random((1, 4, 160, 192)) * 200).astype(np.float32)
    crop = (slice(16, 144), slice(32, 160))
    cls, conf = pred.predict_core(x, crop)
    probs = pred.predict_proba(x)[0][:, crop[0], crop[1]]
    ref_cls, ref_conf = classify(probs, np.ones(probs.shape[1:], bool))
    if device == "cpu":
        assert np.array_equal(cls, ref_cls)
    else:  # bf16/fp16 autocast on the GPU: near-ties may flip
        assert np.mean(cls == ref_cls) > 0.99
    assert np.abs(conf.astype(int) - ref_conf.astype(int)).max() <= (1 if device == "cpu" else 8)


def test_a_failing_vector_task_fails_its_chunk_only(tmp_path: Path, scene_tif: Path,
                                                   tiny_bundles: tuple[str, str]) -> None:
    from geoseg.plan import make_plan
    from geoseg.store import init_store

    plan = make_plan(_cfg(scene_tif, tmp_path / "o", tiny_bundles))
    store = str(tmp_path / "s.zarr")
    init_store(store, plan.grid, plan.chunks.chunk, plan.layers, {})

    def flaky(_plan: Any, _store: str, chunk: Any) -> Any:
        if chunk.id == "1_1":
            raise ValueError("a GEOS error, say")
        return chunk.id

    class Record:
        def __init__(self) -> None:
            self.done: list[str] = []
            self.failed: list[Any] = []
            self.vectors: list[str] = []

        def chunk_done(self, chunk: Any, _stats: Any) -> None:
            self.done.append(chunk.id)

        def chunk_failed(self, failure: Any) -> None:
            self.failed.append(failure)

        def vectors_done(self, _chunk: Any, result: Any) -> None:
            self.vectors.append(result)

    cb = Record()
    report = LocalBackend().run(plan, store, list(plan.chunks), list(plan.chunks), flaky, cb)
    assert len(cb.done) == 20 and len(cb.vectors) == 19
    assert [f.chunk_id for f in cb.failed] == ["1_1"]
    assert "vectorize: ValueError" in cb.failed[0].error and report.failed == cb.failed


def test_a_chunk_error_is_one_line_without_secrets() -> None:
    """An object store's error is its request dumped over dozens of lines (URL and signature
    included): a retry warning and the summary keep the first line, redacted."""
    from geoseg.runtime.base import short_error

    dump = OSError("Generic S3 error: Error after 10 retries in 2.3s, max_retries:10\n"
                   "  source: reqwest::Error {\n    kind: Request,\n"
                   "    url: \"http://127.0.0.1:5910/b/run/x?X-Amz-Signature=SECRET\",\n  }")
    assert short_error(dump) == ("OSError: Generic S3 error: Error after 10 retries in 2.3s, "
                                 "max_retries:10")
    assert short_error(ValueError("see https://h/x.tif?sig=SECRET")) == \
        "ValueError: see https://h/x.tif?…"


def test_a_ray_chunk_error_is_one_line_without_secrets() -> None:
    """On Ray too: the task's own exception, first line, redacted (it kept the signature and,
    of an object store's dump, only its last line "}")."""
    import ray

    from geoseg.runtime.ray_backend import _short

    wrapped = ray.exceptions.RayTaskError("predict", "traceback ...", ValueError(
        "cannot read https://h/x.tif?sig=SECRET\n  details {\n  }"))
    assert _short(wrapped) == "ValueError: cannot read https://h/x.tif?…"
