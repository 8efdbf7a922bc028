"""Does a U-Net pass get cheaper if its decoder runs only on the core it keeps? (issue 16)

A chunk's pass covers the chunk plus a halo, and only the core's logits are kept. The encoder
needs the halo, but each decoder block needs only a few pixels around the core: its two 3×3
convolutions widen its input by 2 pixels at its own resolution, and the nearest upsampling
between blocks halves what the block before must cover. :class:`CoreUnet` evaluates every
decoder block on the core plus that margin (clipped to the pass, where the whole pass pads
too), so the core's logits are those of the whole pass, with fewer decoder pixels: at chunk
1024 + halo 64 the high-resolution blocks (~55 % of the pass's time in onnxruntime) run on
0.80-0.85 of their pixels. This script exports both graphs of a bundle's U-Net to ONNX, checks
that the core's logits are equal, and times the two passes alternately:

    python -m benchmarks.decoder_crop BUNDLE [--chunk 1024 --halo 64 --repeat 7]

It prints one JSON line. Measured 2026-12-05 (DESIGN.md, "Cropping the decoder to the core"):
the crops' copies and onnxruntime's layout changes around them cost nearly all the saving.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def margins(blocks: int) -> list[int]:
    """The output margin each decoder block keeps around the core, at its own resolution,
    first block first: the head's 3×3 convolution needs 1 pixel around the core; a block whose
    output must reach ``m`` pixels past the core needs ``m + 2`` at its input, which the block
    before covers with ``ceil((m + 2) / 2)`` at half the resolution."""
    out = [1]
    for _ in range(blocks - 1):
        out.append(-(-(out[-1] + 2) // 2))
    return out[::-1]


def _span(start: torch.Tensor, stop: torch.Tensor, pad: int,
          size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[start - pad, stop + pad)`` clipped to ``[0, size)``."""
    return torch.clamp(start - pad, min=0), torch.minimum(stop + pad, size)


class CoreUnet(nn.Module):
    """An smp ``Unet`` evaluated on the core of its input (see the module's notes)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.encoder = unet.encoder  # type: ignore[union-attr]
        self.decoder = unet.decoder  # type: ignore[union-attr]
        self.head = unet.segmentation_head  # type: ignore[union-attr]
        self.margins = margins(len(self.decoder.blocks))

    @property
    def step(self) -> int:
        """The multiple that a core's offsets and size must be."""
        return int(2 ** (len(self.margins) - 1))

    def forward(self, image: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(image)
        sizes = [f.shape[2:] for f in feats][::-1]
        feats = feats[1:][::-1]
        x = self.decoder.center(feats[0])
        skips = feats[1:]
        n = len(self.decoder.blocks)
        top, left, height, width = crop[0], crop[1], crop[2], crop[3]
        r0 = c0 = torch.zeros_like(top)  # the region x covers, at its own resolution
        for i, block in enumerate(self.decoder.blocks):
            scale = 2 ** (n - 1 - i)
            h_s = torch.as_tensor(sizes[i + 1][0], dtype=top.dtype)
            w_s = torch.as_tensor(sizes[i + 1][1], dtype=top.dtype)
            # the block's output region (core ± margin) and its input region (± 2 more)
            ot, ob = _span(top // scale, (top + height) // scale, self.margins[i], h_s)
            ol, orr = _span(left // scale, (left + width) // scale, self.margins[i], w_s)
            it, ib = _span(ot, ob, 2, h_s)
            il, ir = _span(ol, orr, 2, w_s)
            # even bounds: x is cut at its own (half) resolution, before it is upsampled
            it, il = it // 2 * 2, il // 2 * 2
            ib, ir = torch.minimum((ib + 1) // 2 * 2, h_s), torch.minimum((ir + 1) // 2 * 2, w_s)
            x = x[:, :, it // 2 - r0:ib // 2 - r0, il // 2 - c0:ir // 2 - c0]
            x = F.interpolate(x, scale_factor=2.0, mode=block.interpolation_mode)
            if i < len(skips):
                x = torch.cat([x, skips[i][:, :, it:ib, il:ir]], dim=1)
                x = block.attention1(x)
            x = block.attention2(block.conv2(block.conv1(x)))
            x = x[:, :, ot - it:ob - it, ol - il:orr - il]
            r0, c0 = ot, ol
        logits = self.head(x)
        return logits[:, :, top - r0:top - r0 + height, left - c0:left - c0 + width]


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            names: list[str]) -> None:
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "h", 3: "w"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=names,
                          output_names=["logits"], opset_version=17, dynamic_axes=axes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="a U-Net bundle (bundle.yaml + weights)")
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    a = p.parse_args()
    import onnxruntime as ort

    from geoseg.bundle import read_spec
    from geoseg.models.factory import build_model
    from geoseg.models.weights import load_weights, weights_path

    spec = read_spec(a.bundle)
    if spec.architecture.name != "unet":
        raise SystemExit(f"{a.bundle} is {spec.architecture.name}: this measures U-Nets")
    unet = build_model(spec)
    load_weights(unet, weights_path(spec, Path(a.bundle)))
    unet.eval()
    core = CoreUnet(unet).eval()
    size = a.chunk + 2 * a.halo
    crop = np.array([a.halo, a.halo, a.chunk, a.chunk], np.int64)
    if any(int(v) % core.step for v in crop):
        raise SystemExit(f"chunk and halo must be multiples of {core.step}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    with tempfile.TemporaryDirectory() as tmp:
        _export(unet, (torch.zeros(1, len(spec.bands), 64, 64),), Path(tmp) / "whole.onnx",
                ["image"])
        _export(core, (torch.zeros(1, len(spec.bands), 128, 128), torch.tensor([32, 32, 64, 64])),
                Path(tmp) / "core.onnx", ["image", "crop"])
        whole = ort.InferenceSession(str(Path(tmp) / "whole.onnx"), opts,
                                     providers=["CPUExecutionProvider"])
        cut = ort.InferenceSession(str(Path(tmp) / "core.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, len(spec.bands), size, size))
    x = x.astype(np.float32)
    ref = whole.run(None, {"image": x})[0][:, :, a.halo:a.halo + a.chunk, a.halo:a.halo + a.chunk]
    got = cut.run(None, {"image": x, "crop": crop})[0]
    times: dict[str, list[float]] = {"whole": [], "core": []}
    for _ in range(a.repeat):  # alternated, so that a slow minute hits both
        for name, run in (("whole", lambda: whole.run(None, {"image": x})),
                          ("core", lambda: cut.run(None, {"image": x, "crop": crop}))):
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "pass": size, "core": a.chunk, "threads": a.threads, "margins": core.margins,
        "max_abs_diff": float(np.abs(got - ref).max()),
        "classes_equal": float(np.mean(got.argmax(1) == ref.argmax(1))),
        "whole_s": round(best["whole"], 4), "core_s": round(best["core"], 4),
        "core_over_whole": round(best["core"] / best["whole"], 4),
        "median_core_over_whole": round(float(np.median(times["core"]))
                                        / float(np.median(times["whole"])), 4)}))


if __name__ == "__main__":
    main()
