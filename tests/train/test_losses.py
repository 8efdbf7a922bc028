"""Loss terms against values computed by hand on 1x3-pixel batches."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from geoseg.errors import ConfigError
from geoseg.training.losses import (
    LossConfig,
    SegLoss,
    boundary_weights,
    cross_entropy,
    focal,
    parse_loss,
    soft_dice,
)
from geoseg.training.targets import IGNORE

LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


def _batch(third_logits: tuple[float, float] = (0.0, 0.0),
           third_label: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """1x3 pixels, 2 classes: pixel 0 softmax (1/4, 3/4) label 1; pixel 1 (1/2, 1/2) label 0;
    pixel 2 as given (IGNORE by default)."""
    logits = torch.tensor([[0.0, 0.0, third_logits[0]],
                           [math.log(3.0), 0.0, third_logits[1]]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, third_label]]])
    return logits, target


def test_cross_entropy_by_hand() -> None:
    logits, target = _batch()
    # -ln(3/4) and -ln(1/2), pixel 2 ignored: mean (ln 4/3 + ln 2) / 2
    assert float(cross_entropy(logits, target)) == pytest.approx((LN43 + LN2) / 2)
    # class weights (1, 3): (3 ln 4/3 + 1 ln 2) / (3 + 1), as torch's weighted mean
    w = torch.tensor([1.0, 3.0])
    assert float(cross_entropy(logits, target, w)) == pytest.approx((3 * LN43 + LN2) / 4)
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
    assert float(cross_entropy(logits, target, w)) == pytest.approx(float(ref))


def test_soft_dice_by_hand() -> None:
    logits, target = _batch()
    # class 0: 2 * 1/2 / (3/4 + 1) = 4/7; class 1: 2 * 3/4 / (5/4 + 1) = 2/3
    # loss 1 - (4/7 + 2/3) / 2 = 8/21
    assert float(soft_dice(logits, target)) == pytest.approx(8 / 21, abs=1e-6)
    smp_dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)(logits, target)
    assert float(smp_dice) == pytest.approx(8 / 21, abs=1e-6)   # every class present: same
    # a third class absent from the target (and ~never predicted) leaves the mean unchanged
    three = torch.cat([logits, torch.full((1, 1, 1, 3), -100.0)], dim=1)
    assert float(soft_dice(three, target)) == pytest.approx(8 / 21, abs=1e-6)


def test_focal_by_hand() -> None:
    logits, target = _batch()
    # gamma 2: (1 - 3/4)² ln 4/3 and (1 - 1/2)² ln 2, mean over the 2 labelled pixels
    expect = (LN43 / 16 + LN2 / 4) / 2
    assert float(focal(logits, target, 2.0)) == pytest.approx(expect)
    # alpha (0.25, 0.75) scales each pixel by its class's alpha
    alpha = torch.tensor([0.25, 0.75])
    assert float(focal(logits, target, 2.0, alpha)) == pytest.approx(
        (0.75 * LN43 / 16 + 0.25 * LN2 / 4) / 2)
    # gamma 0, no alpha: cross-entropy
    assert float(focal(logits, target, 0.0)) == pytest.approx((LN43 + LN2) / 2)


def test_boundary_weights_by_hand() -> None:
    # labels 0 0 1: pixels 1 and 2 are edge pixels (d = 0), pixel 0 is 1 px away
    w = boundary_weights(np.array([[0, 0, 1]]), weight=2.0, sigma=1.0)
    assert w == pytest.approx(np.array([[1 + 2 * math.exp(-0.5), 3.0, 3.0]]))
    # IGNORE is not a class: 0 | 255 | 1 has no class edge, the chip border is none either
    assert (boundary_weights(np.array([[0, IGNORE, 1]]), 2.0, 1.0) == 1.0).all()
    # 2x2 [[0, 1], [0, 1]]: every pixel touches the other class
    assert (boundary_weights(np.array([[[0, 1], [0, 1]]]), 2.0, 1.0) == 3.0).all()


def test_boundary_weighted_cross_entropy_by_hand() -> None:
    # pixels: logits (0, 0) label 0, (0, 0) label 0, (0, ln 3) label 1 -> ln 2, ln 2, ln 4/3;
    # weights a = 1 + 2 e^-1/2, 3, 3 (as above): (a ln 2 + 3 ln 2 + 3 ln 4/3) / (a + 6)
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(3.0)]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 0, 1]]])
    a = 1 + 2 * math.exp(-0.5)
    expect = (a * LN2 + 3 * LN2 + 3 * LN43) / (a + 6)
    loss = SegLoss(LossConfig(ce=1.0, dice=0.0, boundary_weight=2.0, boundary_sigma=1.0), 2)
    assert float(loss(logits, target)) == pytest.approx(expect)


@pytest.mark.parametrize("term", ["ce", "dice", "focal"])
def test_ignored_pixels_do_not_count(term: str) -> None:
    fns: dict[str, Callable[..., torch.Tensor]] = {
        "ce": cross_entropy, "dice": soft_dice, "focal": focal}
    fn = fns[term]
    a = fn(*_batch(third_logits=(0.0, 0.0)))
    b = fn(*_batch(third_logits=(9.0, -9.0)))      # whatever the model says on IGNORE
    assert float(a) == float(b)
    # no labelled pixel at all: 0, finite, and backward works
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    loss = fn(logits, torch.full((1, 2, 2), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_weighted_sum_and_description() -> None:
    logits, target = _batch(third_logits=(0.0, 1.0), third_label=1)
    cfg = LossConfig(ce=1.0, dice=0.5, focal=2.0, focal_gamma=1.0)
    loss = SegLoss(cfg, 2, class_weights=(1.0, 2.0))
    expect = (cross_entropy(logits, target, torch.tensor([1.0, 2.0]))
              + 0.5 * soft_dice(logits, target) + 2.0 * focal(logits, target, 1.0))
    assert float(loss(logits, target)) == pytest.approx(float(expect))
    text = loss.describe()
    assert "1 x cross-entropy (class weights)" in text and "0.5 x soft Dice" in text
    assert "2 x focal (gamma 1)" in text and "ignore 255" in text
    assert SegLoss(LossConfig(ce=0.0, dice=0.0, focal=1.0), 2).describe().startswith("1 x focal")


def test_parse_loss() -> None:
    assert parse_loss("ce+dice") == {"ce": 1.0, "dice": 1.0, "focal": 0.0}
    assert parse_loss("focal") == {"ce": 0.0, "dice": 0.0, "focal": 1.0}
    assert parse_loss("ce:1,dice:0.5,focal:1") == {"ce": 1.0, "dice": 0.5, "focal": 1.0}
    for bad in ("lovasz", "ce:x", "ce:0", "ce:-1"):
        with pytest.raises(ConfigError, match="--loss"):
            parse_loss(bad)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="one per class"):
        SegLoss(LossConfig(focal_alpha=(1.0,)), 2)
    with pytest.raises(ConfigError, match="weight 0"):
        SegLoss(LossConfig(ce=0.0, dice=0.0), 2)


def test_contact_pixels_are_the_walls_between_touching_buildings() -> None:
    from geoseg.training.losses import contact_mask
    from geoseg.training.targets import buildings_target

    inst = np.zeros((30, 40), dtype=np.int32)
    inst[5:25, 5:20] = 1
    inst[5:25, 20:35] = 2                 # touches building 1 along column 20
    inst[5:25, 37:40] = 3                 # alone, 2 px of background away from building 2
    target = torch.from_numpy(buildings_target(inst, 2).astype(np.int64))[None]
    contact = contact_mask(target, 3)[0].numpy()
    rows, cols = np.nonzero(contact)
    # the shared wall (2 px each side of the meeting line), away from the outer background
    assert set(cols) == {18, 19, 20, 21} and rows.min() == 8 and rows.max() == 21
    assert not contact[:, 30:].any()      # no outer ring is a contact
    # a wrong wall costs more with a contact weight; elsewhere the loss is unchanged
    logits = torch.zeros((1, 3, 30, 40))
    logits[:, 1] = 4.0                    # "building" everywhere: every boundary pixel wrong
    plain = SegLoss(LossConfig(dice=0.0), 3)(logits, target)
    walls = SegLoss(LossConfig(dice=0.0, contact_weight=5.0), 3)(logits, target)
    assert float(walls) > float(plain)
    # buildings that touch nothing: no contact pixel, the same loss
    alone = torch.from_numpy(buildings_target(np.where(inst == 2, 0, inst), 2)
                             .astype(np.int64))[None]
    assert not contact_mask(alone, 3).any()
    assert float(SegLoss(LossConfig(dice=0.0, contact_weight=5.0), 3)(logits, alone)) == \
        pytest.approx(float(SegLoss(LossConfig(dice=0.0), 3)(logits, alone)))
