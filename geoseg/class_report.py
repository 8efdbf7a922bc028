"""Per-class scores of a confusion matrix (IoU, precision, recall, F1) and its picture.

The confusion matrix has rows = truth and columns = prediction (see :mod:`geoseg.metrics.pixel`).
The PNG is drawn with Pillow (a core dependency), so ``geoseg eval`` needs no plotting library:
each cell is coloured by its share of the truth row (that class's recall along the diagonal) and
labelled with that share and the pixel count.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import LabelError

# white → dark blue (ColorBrewer "Blues" end points)
_LOW = np.array([247, 251, 255], np.float64)
_HIGH = np.array([8, 48, 107], np.float64)


@dataclass(frozen=True)
class ClassScore:
    """Scores of one class; NaN where undefined (the class is in neither truth nor
    prediction, or in only one of them for precision/recall)."""

    id: int
    name: str
    iou: float
    precision: float
    recall: float
    f1: float
    truth_px: int
    predicted_px: int

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 6)

        return {"id": self.id, "iou": num(self.iou), "precision": num(self.precision),
                "recall": num(self.recall), "f1": num(self.f1), "truth_px": self.truth_px,
                "predicted_px": self.predicted_px}


def _names(k: int, names: Sequence[str] | None) -> list[str]:
    out = [str(n) for n in names] if names is not None else [str(i) for i in range(k)]
    if len(out) != k:
        raise LabelError(f"{len(out)} class names for {k} classes")
    return out


def class_scores(cm: np.ndarray, names: Sequence[str] | None = None) -> tuple[ClassScore, ...]:
    """One :class:`ClassScore` per row of the ``(K, K)`` confusion matrix ``cm``."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise LabelError(f"a confusion matrix must be square, got shape {cm.shape}")
    labels = _names(cm.shape[0], names)
    tp = np.diag(cm).astype(np.float64)
    truth = cm.sum(axis=1)
    pred = cm.sum(axis=0)

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    out = []
    for i, name in enumerate(labels):
        fp, fn = float(pred[i]) - tp[i], float(truth[i]) - tp[i]
        out.append(ClassScore(i, name, ratio(tp[i], tp[i] + fp + fn), ratio(tp[i], pred[i]),
                              ratio(tp[i], truth[i]), ratio(2 * tp[i], 2 * tp[i] + fp + fn),
                              int(truth[i]), int(pred[i])))
    return tuple(out)


def class_report(cm: np.ndarray, names: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready ``{class name: {id, iou, precision, recall, f1, truth_px, predicted_px}}``."""
    return {s.name: s.to_dict() for s in class_scores(cm, names)}


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) where Pillow has it
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _count(n: int) -> str:
    """A pixel count short enough for a cell: 987, 12.3k, 4.6M, 789G."""
    if n < 10_000:
        return str(n)
    for scale, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        v = n / scale
        if round(v, 1) < 1000 or unit == "G":
            break
    return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


#: The PNG text chunk ``Software`` of the figures geoseg writes: what it may replace.
SOFTWARE = "geoseg"


def written_by_geoseg(path: str | Path) -> bool:
    """Whether ``path`` is a PNG whose ``Software`` text says geoseg wrote it (not a link)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        with Image.open(p) as im:
            return bool(im.format == "PNG" and im.info.get("Software") == SOFTWARE)
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def confusion_png(cm: np.ndarray, names: Sequence[str] | None, path: str | Path, *,
                  title: str = "") -> Path:
    """Write the confusion matrix ``cm`` as a PNG at ``path`` (atomically) and return it.

    Rows are the truth, columns the prediction; cell colour and the percentage are the cell's
    share of its truth row, the number under it the pixel count."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    from geoseg.outdir import atomic_write_bytes

    cm = np.asarray(cm, dtype=np.int64)
    scores = class_scores(cm, names)
    labels = [s.name for s in scores]
    k = len(labels)
    cell = int(max(40, min(84, 900 // max(k, 1))))
    font, small = _font(max(11, cell // 5)), _font(max(9, cell // 7))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_size(probe, n, font)[0] for n in labels] + [40]) + 12
    line_h = _text_size(probe, "Ag", font)[1] + 6
    top = line_h * (2 if title else 1) + label_w + 8  # title, axis name, rotated column labels
    left = line_h + label_w + 8                        # axis name, row labels
    note = "cells: % of the truth row (recall on the diagonal) and pixel count"
    width = max(left + k * cell + 12, _text_size(probe, note, small)[0] + 16,
                _text_size(probe, title, font)[0] + 16)
    height = top + k * cell + line_h + 12
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 4), title, fill="black", font=font)
    y0 = line_h * (1 if title else 0) + 4
    draw.text((left, y0), "prediction (columns)", fill="black", font=font)
    rows = cm.sum(axis=1, keepdims=True)
    pct_h = _text_size(probe, "100%", font)[1]
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    for j, name in enumerate(labels):  # column labels, written bottom to top
        w, h = _text_size(probe, name, font)
        tile = Image.new("RGB", (w + 4, h + 6), "white")
        ImageDraw.Draw(tile).text((2, 0), name, fill="black", font=font)
        rot = tile.rotate(90, expand=True)
        img.paste(rot, (left + j * cell + (cell - rot.width) // 2, top - rot.height - 4))
    axis = Image.new("RGB", (_text_size(probe, "truth (rows)", font)[0] + 4, line_h), "white")
    ImageDraw.Draw(axis).text((2, 0), "truth (rows)", fill="black", font=font)
    axis = axis.rotate(90, expand=True)
    img.paste(axis, (4, top))
    for i, name in enumerate(labels):
        w, h = _text_size(probe, name, font)
        draw.text((left - w - 8, top + i * cell + (cell - h) // 2), name, fill="black", font=font)
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            frac = float(share[i, j])
            colour = tuple(round(float(c)) for c in _LOW + (_HIGH - _LOW) * frac)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour,
                           outline=(0, 0, 0) if i == j else (200, 200, 200))
            ink = "white" if frac > 0.5 else "black"
            pct = f"{100 * frac:.0f}%" if rows[i, 0] else "-"
            pw, ph = _text_size(probe, pct, font)[0], pct_h
            count = _count(int(cm[i, j]))
            cw, _ = _text_size(probe, count, small)
            draw.text((x + (cell - pw) // 2, y + cell // 2 - ph - 2), pct, fill=ink, font=font)
            draw.text((x + (cell - cw) // 2, y + cell // 2 + 3), count, fill=ink, font=small)
    draw.text((8, top + k * cell + 6), note, fill=(90, 90, 90), font=small)
    buf = io.BytesIO()
    meta = PngInfo()
    meta.add_text("Software", SOFTWARE)
    img.save(buf, format="PNG", pnginfo=meta)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
