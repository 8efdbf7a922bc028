"""The README's "Bring your own model" recipes, run as written on generated checkpoints.

Each YAML block of that section is a ``bundle.yaml`` (first line ``# DIR/bundle.yaml``) and each
Python block converts a checkpoint (first line ``# SOURCE -> DIR/weights.safetensors``); the
tests write the blocks out, run them, and load the result with :class:`Predictor`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoseg.bundle import BUNDLE_FILE, read_spec
from geoseg.models import Predictor

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Bring your own model"


def _blocks(lang: str) -> dict[str, str]:
    """``{bundle dir: code}`` for the section's ``lang`` blocks, keyed by their first line."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    out: dict[str, str] = {}
    for code in re.findall(rf"```{lang}\n(.*?)```", text[start:end], flags=re.DOTALL):
        first = code.splitlines()[0]
        m = re.search(r"([\w-]+)/(bundle\.yaml|weights\.safetensors)", first)
        assert first.startswith("# ") and m, f"block without a '# ... DIR/file' line: {first}"
        out[m.group(1)] = code
    return out


def _bundle_yaml(name: str, root: Path) -> Path:
    d = root / name
    d.mkdir(exist_ok=True)
    (d / BUNDLE_FILE).write_text(_blocks("yaml")[name])
    return d


def _raw(c: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (2, c, size, size)).astype(np.float32)


def test_readme_bundle_yamls_are_valid(tmp_path: Path) -> None:
    assert set(_blocks("yaml")) == {"my-unet", "my-maskrcnn", "my-onnx"}
    assert set(_blocks("python")) == {"my-unet", "my-maskrcnn"}
    specs = {n: read_spec(_bundle_yaml(n, tmp_path)) for n in _blocks("yaml")}
    assert specs["my-unet"].architecture.name == "unet" and specs["my-unet"].onnx is None
    assert specs["my-maskrcnn"].architecture.anchor_sizes == (32, 64, 128, 256, 512)
    assert specs["my-onnx"].onnx == "model.onnx"


def test_smp_checkpoint_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    user = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3).eval()
    lightning = {"state_dict": {f"model.{k}": v for k, v in user.state_dict().items()},
                 "epoch": 7}
    torch.save(lightning, "checkpoint.pth")
    exec(_blocks("python")["my-unet"], {})
    bundle = _bundle_yaml("my-unet", tmp_path)
    pred = Predictor(bundle)
    assert pred.engine == "torch"
    x = _raw(3)
    norm = pred.spec.normalization
    mean = np.asarray(norm.mean, np.float32)[None, :, None, None]
    std = np.asarray(norm.std, np.float32)[None, :, None, None]
    with torch.no_grad():
        want = torch.softmax(user(torch.from_numpy((x - mean) / std)), dim=1).numpy()
    np.testing.assert_allclose(pred.predict_proba(x), want, atol=1e-5)


class _SelfNormalising(nn.Module):
    """A stand-in for someone's network: normalises inside the graph, a 1x1 conv to logits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([90.0, 100.0, 80.0, 120.0]).view(1, 4, 1, 1))
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x - self.mean) / 40.0)


def test_onnx_file_recipe(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = _SelfNormalising().eval()
    bundle = _bundle_yaml("my-onnx", tmp_path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 4, 64, 64),), str(bundle / "model.onnx"),
                          dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"},
                                        "logits": {0: "n", 2: "h", 3: "w"}})
    pred = Predictor(bundle)
    assert pred.engine == "onnx"
    x = _raw(4, 96)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(pred.predict_proba(x), want, atol=1e-5)


@pytest.mark.slow
def test_torchvision_maskrcnn_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's maskrcnn_resnet50_fpn layout with a FrozenBatchNorm2d backbone (as built
    for pretrained weights) loads strictly after the README's conversion."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    user = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3),
                    num_classes=2)
    torch.save({"model": user.state_dict(), "epoch": 25}, "maskrcnn.pth")
    exec(_blocks("python")["my-maskrcnn"], {})
    pred = Predictor(_bundle_yaml("my-maskrcnn", tmp_path))
    loaded = pred.model.state_dict()
    for k, v in user.state_dict().items():
        assert torch.equal(loaded[k], v), k
    sizes = pred.model.rpn.anchor_generator.sizes  # type: ignore[union-attr]
    assert sizes == ((32,), (64,), (128,), (256,), (512,))
    proba = pred.predict_proba(_raw(3))
    assert proba.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
