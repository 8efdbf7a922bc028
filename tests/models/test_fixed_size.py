"""Models that take one input size only (an ONNX graph with a static ``1 x C x 96 x 96`` input),
and the bundle's ``padding`` of image edges.

The graph's size is the tile size, whatever the window: a small image, a small region or a chunk
at the image edge with ``--halo 0`` is padded up to one tile, predicted, and cropped back. Each
result is checked against onnxruntime run directly on the tile geoseg should have built.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from geoseg.bundle import BundleSpec, read_spec, write_spec
from geoseg.cli import main
from geoseg.config import validate_job
from geoseg.errors import ConfigError, GeoSegWarning, InputError
from geoseg.stitch import classify_logits, pad_window, predict_window
from tests.conftest import write_raster
from tests.pipeline.conftest import textured

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TILE = 96
MEAN = (100.0, 110.0, 90.0, 120.0)
STD = (30.0, 25.0, 20.0, 40.0)


class _Net(nn.Module):
    """Two 3x3 convolutions: every output pixel sees 5x5 input pixels, so the padding at the
    image edge shows in the edge pixels' probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _spec(padding: str = "constant", tile_size: int | None = None) -> BundleSpec:
    data: dict[str, object] = {
        "name": "fixed96", "version": "0.0.1", "task": "landcover",
        "architecture": {"name": "unet"}, "bands": [1, 2, 3, 4],
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "classes": [{"id": i, "name": n, "color": "#123456"}
                    for i, n in enumerate(("bare", "building", "water"))],
        "padding": padding, "onnx": "model.onnx"}
    if tile_size is not None:
        data["tile_size"] = tile_size
    return BundleSpec.model_validate(data)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixed-size graph: exported without dynamic axes (batch 1, 96x96)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Net().eval(), (torch.zeros(1, 4, TILE, TILE),), str(path),
                          dynamo=False, input_names=["image"], output_names=["logits"])
    return path


def _bundle(root: Path, graph: Path, padding: str = "constant",
            tile_size: int | None = TILE) -> Path:
    """An ONNX-only bundle (bundle.yaml + graph) around ``graph``."""
    d = root / f"bundle-{padding}-{tile_size}"
    write_spec(_spec(padding, tile_size), d)
    (d / "model.onnx").write_bytes(graph.read_bytes())
    return d


def _logits(graph: Path, tile: np.ndarray) -> np.ndarray:
    """onnxruntime on one raw tile (C, 96, 96), normalised as the bundle says → (K, 96, 96)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(graph), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    assert tile.shape == (4, TILE, TILE)
    mean = np.asarray(MEAN, np.float32).reshape(1, 4, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, 4, 1, 1)
    normed = (tile[None].astype(np.float32) - mean) / std
    return np.asarray(sess.run(None, {"image": normed})[0][0], np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _filled(img: np.ndarray, top: int, left: int) -> np.ndarray:
    """A 96x96 tile of band means with ``img`` at (top, left): the constant padding."""
    tile = np.empty((4, TILE, TILE), np.float32)
    tile[...] = np.asarray(MEAN, np.float32).reshape(4, 1, 1)
    h, w = img.shape[1:]
    tile[:, top:top + h, left:left + w] = img
    return tile


def _run(image: Path, out: Path, bundle: Path, *extra: str) -> int:
    return main(["-q", "run", str(image), "-o", str(out), "-m", str(bundle), "--no-vectors",
                 "--threads", "1", "--executor", "local", *extra])


def _store(out: Path, name: str = "landcover") -> np.ndarray:
    group: Any = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    return np.asarray(group[name][:])


def _summary(out: Path) -> dict[str, object]:
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


def _plan_and_input(image: Path, bundle: Path, chunk: tuple[int, int],
                    **inference: object) -> tuple[Any, Any]:
    from geoseg.chunks import read_chunk
    from geoseg.plan import make_plan

    cfg = validate_job({"image": str(image), "output": str(image.parent / "unused"),
                        "models": [str(bundle)], "inference": {"engine": "onnx", **inference},
                        "runtime": {"device": "cpu"}})
    plan = make_plan(cfg)
    return plan, read_chunk(plan, plan.chunks.get(*chunk))


def _predictor(bundle: Path) -> Any:
    from geoseg.models.onnx_predictor import OnnxPredictor

    return OnnxPredictor(bundle, num_threads=1)


def test_static_input_sets_the_tile_size(tmp_path: Path, graph: Path) -> None:
    from geoseg.plan import make_plan

    img = write_raster(tmp_path / "img.tif", textured(40, 50))
    bundle = _bundle(tmp_path, graph)
    cfg = validate_job({"image": str(img), "output": str(tmp_path / "o"),
                        "models": [str(bundle)]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeoSegWarning)  # tile_size: 96 agrees with the graph
        plan = make_plan(cfg)
    assert plan.models[0].fixed_tile == TILE and plan.tile == TILE
    assert plan.tiling(plan.models[0]) == (TILE, TILE // 2, True)
    assert make_plan(cfg.with_overrides(tile_size=TILE)).tile == TILE
    with pytest.raises(ConfigError, match=r"tile size 128 .* contradicts model fixed96@0\.0\.1, "
                                          r"which takes only 96x96 px tiles") as e:
        make_plan(cfg.with_overrides(tile_size=128))
    assert "\n" not in str(e.value)
    rc = _run(img, tmp_path / "cli", bundle, "--tile-size", "128")
    assert rc == 2 and not (tmp_path / "cli").exists()
    # bundle.yaml's tile_size (written out as 512 when left out) gives way to the graph's
    wrong = _bundle(tmp_path, graph, tile_size=128)
    with pytest.warns(GeoSegWarning, match=r"model\.onnx takes only 96x96 px tiles, so tiles "
                                           r"are 96 px, not the tile_size 128"):
        plan = make_plan(cfg.model_copy(update={"models": (str(wrong),)}))
    assert plan.tile == TILE


def test_image_smaller_than_a_tile(tmp_path: Path, graph: Path) -> None:
    """(a) a 40x50 image: one 96x96 tile, the image at the halo's offset, band means around."""
    data = textured(40, 50, seed=1)
    img = write_raster(tmp_path / "img.tif", data)
    bundle = _bundle(tmp_path, graph)
    assert _run(img, tmp_path / "default", bundle) == 0  # halo 64: a 168x178 window, 2x2 tiles
    assert _store(tmp_path / "default").shape == (40, 50)
    assert np.all(_store(tmp_path / "default") != 255)
    assert _summary(tmp_path / "default")["tiling"]["tile"] == TILE  # type: ignore[index]

    assert _run(img, tmp_path / "h8", bundle, "--halo", "8") == 0  # a 56x66 window
    want = classify_logits(_logits(graph, _filled(data, 8, 8))[:, 8:48, 8:58])
    np.testing.assert_array_equal(_store(tmp_path / "h8"), want[0])
    np.testing.assert_array_equal(_store(tmp_path / "h8", "landcover_confidence"), want[1])

    # the probabilities geoseg blends are onnxruntime's on that tile
    plan, inp = _plan_and_input(img, bundle, (0, 0), halo=8)
    from geoseg.chunks import model_input

    x, tile, overlap, exact = model_input(plan, plan.models[0], inp)
    assert (tile, exact) == (TILE, True) and x.shape == (4, TILE, TILE)
    np.testing.assert_array_equal(x, _filled(data, 8, 8))
    probs = predict_window(x, _predictor(bundle).predict_proba, 3, tile=tile, overlap=overlap,
                           batch_size=4, exact=exact)
    np.testing.assert_allclose(probs, _softmax(_logits(graph, x)), atol=1e-6)


def test_region_smaller_than_a_tile(tmp_path: Path, graph: Path) -> None:
    """(b) a 15 m x 12 m bbox (30x24 px) inside a 200x200 image: the context around it is real
    image, the rest of the tile band means."""
    data = textured(200, 200, seed=2)
    img = write_raster(tmp_path / "img.tif", data)
    bundle = _bundle(tmp_path, graph)
    r0, c0 = 80, 60  # the bbox's first row and column in the image
    x0, y1 = 500000.0 + c0 * 0.5, 5100000.0 - r0 * 0.5
    bbox = f"{x0},{y1 - 12},{x0 + 15},{y1}"
    out = tmp_path / "bbox"
    assert _run(img, out, bundle, "--bbox", bbox, "--bbox-crs", "EPSG:32633",
                "--halo", "16") == 0
    got = _store(out)
    assert got.shape == (24, 30) and np.all(got != 255)
    context = data[:, r0 - 16:r0 + 24 + 16, c0 - 16:c0 + 30 + 16].astype(np.float32)
    tile = _filled(context, 0, 0)  # padded at the far edges, up to 96x96
    want = classify_logits(_logits(graph, tile)[:, 16:40, 16:46])
    np.testing.assert_array_equal(got, want[0])
    np.testing.assert_array_equal(_store(out, "landcover_confidence"), want[1])


def test_halo_zero_chunks_at_the_image_edge(tmp_path: Path, graph: Path) -> None:
    """(c) --halo 0 with 128 px chunks on a 150x200 image: the edge chunks (22 and 72 px) are
    padded up to a tile; a 22x128 chunk runs two blended 96x96 tiles."""
    data = textured(150, 200, seed=3)
    img = write_raster(tmp_path / "img.tif", data)
    bundle = _bundle(tmp_path, graph)
    out = tmp_path / "h0"
    assert _run(img, out, bundle, "--halo", "0", "--chunk-size", "128") == 0
    got = _store(out)
    assert got.shape == (150, 200) and np.all(got != 255)
    assert _summary(out)["chunks"]["total"] == 4  # type: ignore[index]
    corner = data[:, 128:150, 128:200].astype(np.float32)  # a 22x72 chunk: one tile
    want = classify_logits(_logits(graph, _filled(corner, 0, 0))[:, :22, :72])
    np.testing.assert_array_equal(got[128:, 128:], want[0])
    np.testing.assert_array_equal(_store(out, "landcover_confidence")[128:, 128:], want[1])

    from geoseg.chunks import model_input

    plan, inp = _plan_and_input(img, bundle, (1, 0), halo=0, chunk_size=128)
    x, tile, overlap, exact = model_input(plan, plan.models[0], inp)
    assert x.shape == (4, TILE, 128) and (tile, overlap, exact) == (TILE, 48, True)
    probs = predict_window(x, _predictor(bundle).predict_proba, 3, tile=tile, overlap=overlap,
                           batch_size=4, exact=exact)
    assert probs.shape == (3, TILE, 128)
    first, second = _softmax(_logits(graph, x[:, :, :TILE])), _softmax(_logits(graph, x[:, :, 32:]))
    # columns 0..31 lie in the first tile only, 96..127 in the second only
    np.testing.assert_allclose(probs[:, :, :32], first[:, :, :32], atol=1e-6)
    np.testing.assert_allclose(probs[:, :, TILE:], second[:, :, TILE - 32:], atol=1e-6)
    # in between, the blend of the two
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_reflect_padding_mirrors_the_image_edge(tmp_path: Path, graph: Path) -> None:
    data = textured(40, 50, seed=4)
    img = write_raster(tmp_path / "img.tif", data)
    reflect = _bundle(tmp_path, graph, "reflect")
    assert read_spec(reflect).padding == "reflect"
    assert read_spec(_bundle(tmp_path, graph)).padding == "constant"  # the default
    out = tmp_path / "reflect"
    assert _run(img, out, reflect, "--halo", "8") == 0
    mirrored = np.pad(data.astype(np.float32), ((0, 0), (8, TILE - 48), (8, TILE - 58)),
                      mode="reflect")
    want = classify_logits(_logits(graph, mirrored)[:, 8:48, 8:58])
    np.testing.assert_array_equal(_store(out), want[0])
    np.testing.assert_array_equal(_store(out, "landcover_confidence"), want[1])
    # the constant run differs at the edge (the model sees band means there)
    const = tmp_path / "const"
    assert _run(img, const, _bundle(tmp_path, graph), "--halo", "8") == 0
    a, b = _store(out, "landcover_confidence"), _store(const, "landcover_confidence")
    assert np.any(a[0] != b[0]) and np.array_equal(a[4:-4, 4:-4], b[4:-4, 4:-4])

    from geoseg.chunks import model_input

    plan, inp = _plan_and_input(img, reflect, (0, 0), halo=8)
    x = model_input(plan, plan.models[0], inp)[0]
    np.testing.assert_array_equal(x, mirrored)


def test_reflect_padding_of_an_any_size_model(tmp_path: Path) -> None:
    """A graph with dynamic axes keeps its tiling (no padding up to a tile); ``reflect``
    mirrors the image into the halo outside it instead of the band means."""
    from geoseg.chunks import model_input
    from geoseg.stitch import pad_to_multiple

    torch.manual_seed(0)
    bundle = tmp_path / "dynamic"
    write_spec(_spec("reflect", 512), bundle)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Net().eval(), (torch.zeros(1, 4, 64, 64),), str(bundle / "model.onnx"),
                          dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"},
                                        "logits": {0: "n", 2: "h", 3: "w"}})
    data = textured(40, 50, seed=5)
    img = write_raster(tmp_path / "img.tif", data)
    plan, inp = _plan_and_input(img, bundle, (0, 0), halo=8)
    assert plan.models[0].fixed_tile is None and plan.tile == 1056  # 'auto': 1024 + 2 x 8
    x, tile, _, exact = model_input(plan, plan.models[0], inp)
    assert (tile, exact) == (1056, False)
    mirrored = np.pad(data.astype(np.float32), ((0, 0), (8, 8), (8, 8)), mode="reflect")
    np.testing.assert_array_equal(x, mirrored)
    out = tmp_path / "o"
    assert _run(img, out, bundle, "--halo", "8") == 0
    logits = _predictor(bundle).logits(pad_to_multiple(x, tile)[None])[0]  # a 64x96 pass
    want = classify_logits(logits[:, 8:48, 8:58])
    np.testing.assert_array_equal(_store(out), want[0])
    np.testing.assert_array_equal(_store(out, "landcover_confidence"), want[1])


def test_pad_window_modes() -> None:
    img = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    fill = np.array([-1.0, -2.0], np.float32)[:, None, None]
    # constant: the window as it is, the fill beyond it
    c = pad_window(img, (5, 6), (slice(1, 3), slice(0, 4)), "constant", fill)
    assert c.shape == (2, 5, 6)
    np.testing.assert_array_equal(c[:, :3, :4], img)
    assert np.all(c[0, 3:] == -1) and np.all(c[1, :, 4:] == -2)
    # reflect: rows 1..2 are in the image, row 0 and the padding mirror them
    r = pad_window(img, (5, 6), (slice(1, 3), slice(0, 4)), "reflect", fill)
    np.testing.assert_array_equal(
        r, np.pad(img[:, 1:3], ((0, 0), (1, 2), (0, 2)), mode="reflect"))
    assert pad_window(img, (3, 4), (slice(0, 3), slice(0, 4)), "reflect", fill) is img
    # nothing of the window in the image: the constant
    e = pad_window(img, (4, 4), (slice(0, 0), slice(0, 0)), "reflect", fill)
    assert np.all(e[0, 3:] == -1)
    with pytest.raises(ValueError, match="smaller than the 96 px tile"):
        predict_window(img, lambda t: t, 2, tile=96, overlap=0, batch_size=1, exact=True)


def _reshape_graph(path: Path) -> Path:
    """A graph that declares a dynamic input but reshapes it to 1x4x96x96 (a hidden fixed
    size): onnxruntime fails on any other tile."""
    from onnx import TensorProto, helper, numpy_helper, save

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 4, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, "h", "w"])
    shape = numpy_helper.from_array(np.array([1, 4, TILE, TILE], np.int64), "shape")
    weight = numpy_helper.from_array(np.ones((3, 4, 1, 1), np.float32), "weight")
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["r"]),
             helper.make_node("Conv", ["r", "weight"], ["logits"])]
    graph = helper.make_graph(nodes, "hidden", [x], [y], [shape, weight])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                           ir_version=8), str(path))
    return path


def test_shape_error_is_not_retried(tmp_path: Path) -> None:
    bundle = tmp_path / "hidden"
    write_spec(_spec(), bundle)
    _reshape_graph(bundle / "model.onnx")
    pred = _predictor(bundle)
    with pytest.raises(InputError, match=r"cannot run a 64x64 px tile .*make_dynamic_shape_fixed"
                       ) as e:
        pred.predict_proba(np.zeros((1, 4, 64, 64), np.float32))
    assert "\n" not in str(e.value)
    assert pred.predict_proba(np.zeros((1, 4, TILE, TILE), np.float32)).shape == (1, 3, TILE,
                                                                                  TILE)
    img = write_raster(tmp_path / "img.tif", textured(40, 50))
    out = tmp_path / "o"
    assert _run(img, out, bundle) == 3
    failed = _summary(out)["chunks"]["failed"]  # type: ignore[index]
    assert len(failed) == 1 and failed[0]["attempts"] == 1 and not failed[0]["retryable"]
    assert "cannot run a 192x192 px tile" in failed[0]["error"]


def test_logits_written_into_a_kept_buffer(tmp_path: Path, graph: Path) -> None:
    """With ``out``, onnxruntime writes the logits into that array (bound to the graph's
    output) and it is returned: the same values as a plain run, pass after pass. The
    predictor keeps one such buffer per thread: its class ids and confidence equal those
    of the plain logits for every tile, so a kept buffer never carries one tile's values
    into the next."""
    pred = _predictor(_bundle(tmp_path, graph))
    rng = np.random.default_rng(3)
    tiles = [rng.integers(0, 255, (1, 4, TILE, TILE)).astype(np.float32) for _ in range(3)]
    buf = np.empty((1, 3, TILE, TILE), np.float32)
    for tile in tiles:
        normed = np.ascontiguousarray(pred.spec.normalization.apply(tile))
        plain = pred.session.run(normed)
        got = pred.session.run(normed, out=buf)
        assert got is buf and np.array_equal(got, plain)
        want = classify_logits(plain[0][:, 8:88, 8:88])
        cls, conf = pred.predict_core(tile, (slice(8, 88), slice(8, 88)))
        assert np.array_equal(cls, want[0]) and np.array_equal(conf, want[1])
    # the graph's batch is fixed to 1: a batch of two runs tile by tile into out's rows
    batch = np.ascontiguousarray(pred.spec.normalization.apply(np.concatenate(tiles[:2])))
    two = np.empty((2, 3, TILE, TILE), np.float32)
    assert pred.session.run(batch, out=two) is two
    assert np.array_equal(two, pred.session.run(batch))
    with pytest.raises(InputError, match="takes 96x96 px tiles, got 64x64"):  # fixed size
        pred.session.run(np.zeros((1, 4, 64, 64), np.float32), out=buf)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        pred.session.run(np.zeros((1, 4, TILE, TILE), np.float32),
                         out=np.empty((1, 3, TILE, TILE), np.float64))


def test_logits_at_another_resolution_are_one_clear_error(tmp_path: Path) -> None:
    """A graph whose logits are not at its input's resolution (a stride-2 head): one
    InputError that says so, with a bound output buffer as without one."""
    path = tmp_path / "half.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(nn.Conv2d(4, 3, 3, stride=2, padding=1).eval(),
                          (torch.zeros(1, 4, TILE, TILE),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"])
    pred = _predictor(_bundle(tmp_path, path))
    x = np.zeros((1, 4, TILE, TILE), np.float32)
    for out in (None, np.empty((1, 3, TILE, TILE), np.float32)):
        with pytest.raises(InputError, match="at the input resolution"):
            pred.session.run(x, out=out)
