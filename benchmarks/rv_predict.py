"""The peers' row: Raster Vision 0.31.1 predicting a whole image with a geoseg bundle's model.

    python -m benchmarks.rv_predict IMAGE BUNDLE OUTDIR [--tile 512 --overlap 64 --batch 8
                                                         --num-workers 4]

Writes OUTDIR/labels.tif (one uint8 band of class ids, the image's grid and CRS; GeoTIFF only,
no vectors, no score raster) and prints one JSON line, timed like ``benchmarks.variants naive``:
from loading the model to the class raster written (importing Raster Vision excluded).

Raster Vision is not a geoseg dependency; install it in a separate virtualenv that reuses this
environment's torch (``-c constraints.txt`` keeps torch/torchvision as they are)::

    python -m venv --system-site-packages /tmp/rvenv
    /tmp/rvenv/bin/pip install -c constraints.txt rastervision-pytorch-backend==0.31.1 \\
        rastervision-core==0.31.1 rastervision-pytorch-learner==0.31.1 \\
        rastervision-pipeline==0.31.1
    /tmp/rvenv/bin/python -m benchmarks.rv_predict IMAGE BUNDLE OUTDIR

Without Raster Vision it exits with code 3 and one line on stderr.

What runs is Raster Vision's own scene prediction, the function its pipeline's predict stage
calls (``rastervision.pytorch_learner.utils.prediction.predict_scene_ss``, as in RV's
"ONNX inference" tutorial): a ``Scene`` of a ``RasterioSource`` (the bundle's bands, in the
bundle's order) and a ``SemanticSegmentationLabelStore`` (discrete output only), a
``SemanticSegmentationLearner`` built around the bundle's torch module (``training=False``),
``SemanticSegmentationPredictOptions(chip_sz=tile, stride=tile - overlap, crop_sz=overlap // 2,
batch_sz=batch)``, then ``label_store.save(labels)``.

Tiling, "64 px overlap": RV's sliding windows of 512 px with stride 448 (512 - 64) and
``crop_sz`` 32 (what RV's ``crop_sz="auto"`` picks for that stride): the outer 32 px of every
window's prediction are discarded, so the kept 448-px centres tile the scene without overlap,
and RV pads the scene with zeros on all sides (``pad_direction="both"``,
``calculate_required_padding``) so that the scene's edge pixels fall in kept centres. That is
geoseg's 64-px halo (32 px of context each side), but RV centres its grid on the scene (at
1024² its windows start at -224 px, partly zero padding), so its seams and edge context are
not geoseg's, and classes differ near seams and edges (on the same windows they are equal).

Normalisation: RV feeds a model ``uint8 / 255`` by default. Here the learner's
``DataConfig.base_transform`` (the place RV takes a normalisation) is
``A.Normalize(mean=bundle mean, std=bundle std, max_pixel_value=1)``, which turns the raw band
values into ``(raw - mean) / std`` as float32 before RV's dataset sees them (RV only divides
*unsigned-integer* chips by 255, so it leaves these alone); ``DataConfig.img_sz`` equals the
tile, so RV's base ``A.Resize`` is the identity. The model thus sees what geoseg's ``Predictor``
feeds it (albumentations computes ``(raw - mean) * (1 / std)`` through a lookup table, geoseg
``(raw - mean) / std``: equal to float32 rounding). RV's learner applies softmax and argmax.

Threads and workers: torch runs with 2 intra-op threads (``Predictor(num_threads=2)``, as
``naive``); RV's DataLoader reads chips in ``--num-workers`` processes (RV's default, 4) and
runs batches of ``--batch`` (RV's predict default, 8); RV's environment variable
``RASTERVISION_PREDICT_NUM_WORKERS`` overrides the workers. RV keeps one uint8 vote count per
class (plus the null class) and one hit flag per pixel of the scene: about 7 bytes/px in RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INSTALL = "pip install rastervision-pytorch-backend==0.31.1"


def rv_predict(image: str, bundle: str, out: str, tile: int = 512, overlap: int = 64,
               batch: int = 8, num_workers: int = 4) -> dict[str, float]:
    """Predict ``image`` with ``bundle``'s torch model through Raster Vision; write
    ``out``/labels.tif; return pixels, seconds and pixels per second."""
    import albumentations as A
    from rastervision.core.data import (
        ClassConfig,
        RasterioSource,
        Scene,
        SemanticSegmentationLabelStore,
    )
    from rastervision.core.rv_pipeline import SemanticSegmentationPredictOptions
    from rastervision.pytorch_learner import (
        DataConfig,
        SemanticSegmentationLearner,
        SemanticSegmentationLearnerConfig,
    )
    from rastervision.pytorch_learner.utils.prediction import predict_scene_ss

    from geoseg.models.predictor import Predictor

    if overlap % 2 or not 0 <= overlap < tile:
        raise SystemExit(f"--overlap must be even and in [0, {tile}), got {overlap}")
    outp = Path(out)
    clear_own_labels(outp)

    t0 = time.perf_counter()
    pred = Predictor(bundle, num_threads=2, engine="torch")  # the bundle's weights, as naive
    spec = pred.spec
    norm = spec.normalization
    if norm.clip is not None:
        raise SystemExit("bundles with normalization.clip are not supported here")
    class_config = ClassConfig(names=[c.name for c in spec.classes],
                               colors=[c.color for c in spec.classes])
    class_config.ensure_null_class()  # RV's label store writes the null class where no window
    source = RasterioSource(image, channel_order=[b - 1 for b in spec.bands])
    store = SemanticSegmentationLabelStore(
        uri=str(outp), crs_transformer=source.crs_transformer, class_config=class_config,
        discrete_output=True, smooth_output=False)
    scene = Scene(id="scene", raster_source=source, label_store=store)
    normalize = A.Normalize(mean=tuple(norm.mean), std=tuple(norm.std), max_pixel_value=1.0)
    cfg = SemanticSegmentationLearnerConfig(data=DataConfig(
        class_config=class_config, img_sz=tile, num_workers=num_workers,
        base_transform=A.to_dict(normalize)))
    learner = SemanticSegmentationLearner(cfg=cfg, model=pred.model, training=False)
    opts = SemanticSegmentationPredictOptions(chip_sz=tile, stride=tile - overlap,
                                              crop_sz=overlap // 2 if overlap else None,
                                              batch_sz=batch)
    labels = predict_scene_ss(learner, scene, opts)
    store.save(labels)
    dt = time.perf_counter() - t0
    h, w = source.shape[:2]
    return {"pixels": h * w, "seconds": dt, "px_per_s": h * w / dt}


def clear_own_labels(outp: Path) -> None:
    """Make ``outp`` ready for a new labels.tif (RV's label store would read an old one):
    remove one this script wrote (its folder holds our mark), refuse any other."""
    outp.mkdir(parents=True, exist_ok=True)
    mark = outp / ".written-by-rv_predict"
    if (outp / "labels.tif").exists():
        if not mark.exists():
            raise SystemExit(f"{outp / 'labels.tif'} exists and was not written by this "
                             "script: give another OUTDIR")
        (outp / "labels.tif").unlink()  # ours, from an earlier run
    mark.touch()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("bundle")
    p.add_argument("out")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="RV's predict batch size (default 8)")
    p.add_argument("--num-workers", type=int, default=4,
                   help="RV DataLoader worker processes (RV's default 4; 0: read in-process)")
    a = p.parse_args()
    # RV's config takes $TMPDIR (else /opt/data/tmp) as its scratch root at import and leaves
    # a .can_touch file and a cache/ folder there: give it a private one, removed at the end
    with tempfile.TemporaryDirectory(prefix="rv-tmp-") as scratch:
        os.environ["TMPDIR"] = scratch
        try:
            import rastervision.pytorch_learner  # noqa: F401
        except ImportError:
            print(f"Raster Vision is not installed: {INSTALL}", file=sys.stderr)
            raise SystemExit(3) from None
        res: dict[str, Any] = rv_predict(a.image, a.bundle, a.out, a.tile, a.overlap, a.batch,
                                         a.num_workers)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
