from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.training import boundary_mask, buildings_target


def test_ring_of_two_pixels_by_hand() -> None:
    inst = np.zeros((11, 11), dtype=np.uint32)
    inst[2:9, 2:9] = 4  # 7 x 7 building
    target = buildings_target(inst, width=2)
    # interior = pixels more than 2 px from outside: rows/cols 4..6 -> 3 x 3
    assert (target == 1).sum() == 9 and (target[4:7, 4:7] == 1).all()
    assert (target == 2).sum() == 49 - 9
    assert (target[inst == 0] == 0).all()


def test_touching_buildings_get_a_ring_on_both_sides() -> None:
    inst = np.zeros((9, 16), dtype=np.int32)
    inst[1:8, 1:8] = 1
    inst[1:8, 8:15] = 2
    ring = boundary_mask(inst, width=1)
    assert ring[4, 7] and ring[4, 8]            # both sides of the contact
    assert not ring[4, 6] and not ring[4, 9]
    assert buildings_target(inst, 1)[4].tolist() == [0, 2, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1,
                                                      1, 2, 0]


def test_array_edge_is_not_a_boundary() -> None:
    inst = np.ones((6, 6), dtype=np.int32)
    assert not boundary_mask(inst, 2).any()


def test_bad_width() -> None:
    with pytest.raises(LabelError):
        boundary_mask(np.zeros((3, 3)), 0)
