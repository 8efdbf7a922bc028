"""Instances of a building/boundary class map for scoring (training validation): the footprint
vectorizer's own split (:func:`split_buildings`), so only one instance splitter exists."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import InputError
from geoseg.grid import Chunk
from geoseg.vectorize.footprints import extract_buildings, split_buildings
from tests.vectorize.test_buildings import prob_of, scene, utm_grid

MAP = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0],
    [0, 2, 1, 1, 2, 1, 1, 2, 0, 2, 2],
    [0, 2, 1, 1, 2, 1, 1, 2, 0, 2, 2],
    [0, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)


def test_touching_buildings_are_split_and_grown_back() -> None:
    inst = split_buildings(MAP, 1, 2)
    assert inst.dtype == np.int32 and inst.max() == 3
    a, b = inst[2, 2], inst[2, 5]
    assert a != b and a > 0 and b > 0
    assert (inst[1:5, 1:8] > 0).all()          # building ∪ boundary fully covered
    assert (inst[1:5, 1:3] == a).all() and (inst[1:5, 6:8] == b).all()
    assert len(np.unique(inst[2:4, 9:11])) == 1 and inst[2, 9] > 0   # boundary-only cluster


def test_small_instances_are_dropped_and_labels_stay_consecutive() -> None:
    inst = split_buildings(MAP, 1, 2, min_pixels=5)
    assert (inst[2:4, 9:11] == 0).all()        # the 4-px boundary-only cluster
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]


def test_without_boundary_class_clusters_are_instances() -> None:
    inst = split_buildings(MAP, 1, None)
    assert inst.max() == 2 and (inst[1] == 0).all()   # the two cores; boundary is background


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_instances_as_the_footprints_of_a_run(seed: int) -> None:
    classes = scene(seed)
    grid = utm_grid(classes.shape)
    feats = extract_buildings(classes, prob_of(classes), grid.window, Chunk((0, 0), grid.window),
                              grid, building_id=1, boundary_id=2, min_area_m2=0.0,
                              regularize=False)
    inst = split_buildings(classes, 1, 2)
    sizes = np.bincount(inst.ravel())[1:]
    assert sorted(f.pixels for f in feats) == sorted(sizes.tolist())


def test_class_map_must_be_2d_integers() -> None:
    with pytest.raises(InputError, match="2-D"):
        split_buildings(MAP[None], 1, 2)
    with pytest.raises(InputError, match="integer"):
        split_buildings(MAP.astype(np.float32), 1, 2)
