from __future__ import annotations

import numpy as np

from geoseg.metrics import instances_from_classes

MAP = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0],
    [0, 2, 1, 1, 2, 1, 1, 2, 0, 2, 2],
    [0, 2, 1, 1, 2, 1, 1, 2, 0, 2, 2],
    [0, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)


def test_touching_buildings_are_split_and_grown_back() -> None:
    inst = instances_from_classes(MAP, building=1, boundary=2, orphan_boundary=False)
    assert inst.dtype == np.int32
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    a, b = inst[2, 2], inst[2, 5]
    assert a != b and a > 0 and b > 0
    assert (inst[1:5, 1:8] > 0).all()          # building ∪ boundary fully covered
    assert (inst[1:5, 1:4] == a).all() and (inst[1:5, 5:8] == b).all()
    assert (inst[2:4, 9:11] == 0).all()        # boundary-only blob dropped


def test_orphan_boundary_becomes_an_instance() -> None:
    inst = instances_from_classes(MAP, building=1, boundary=2)
    assert inst.max() == 3 and len(np.unique(inst[2:4, 9:11])) == 1 and inst[2, 9] > 0


def test_without_boundary_class_cores_are_instances() -> None:
    inst = instances_from_classes(MAP, building=1, boundary=None)
    assert inst.max() == 2 and (inst[1] == 0).all()
