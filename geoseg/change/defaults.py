"""Defaults of the change step, importable without the heavy modules (the CLI shows them)."""

MIN_CHANGE_WIDTH = 3  # px: drops a class boundary drawn 1-2 px apart on the two dates
# chosen on a validation scene (`geoseg sample --size 4096 --seed 7`), never on the test scene.
# Before the image check it was the lowest min confidence whose changed-pixel precision reached
# 0.8 there (bundles 1.1.0: 0.651, precision 0.708 -> 0.802 at recall 0.875 -> 0.849); with the
# image check it is chosen with MIN_SPECTRAL_CHANGE (below; README, DESIGN)
MIN_CHANGE_CONFIDENCE = 0.5
# a class flip where the images differ by less (σ, geoseg.change.spectral) is no_image_change.
# Chosen jointly with MIN_CHANGE_CONFIDENCE on the validation pair (seed 7, bundles 1.1.0) as
# the pair with the best changed-pixel F1 over S 0.1-0.7 x C 0/0.5/0.6/0.651: S 0.2, C 0.5
# (C 0 is the same: --min-confidence 0.5 already makes lower pixels unknown): precision/recall
# 0.804/0.848 (C 0.651, no image check) -> 0.957/0.869
MIN_SPECTRAL_CHANGE = 0.2

# building change (issue 17): a geometric change counts only when the footprints' confidence
# and the pixels back it (geoseg.change.building_evidence.EvidenceRule); chosen on the validation
# scene (seed 7), never on the test (demo) scene
BUILDING_MIN_CONFIDENCE = 0.88  # new / demolished footprint confidence
BUILDING_MAX_OTHER_COVER = 0.3  # ... at most this covered by the other date's building pixels
BUILDING_MIN_CHANGED = 0.0  # ... at least this covered by changed pixels
BUILDING_BREAK_CHANGED = 0.3  # a matched group whose shared area changed this much is broken
MODIFIED_MIN_CHANGED = 0.4  # a modified group's difference area changed at least this much
BUILDING_PART_CHANGED = 0.5  # a lost part changed this much is demolished, a gained one an
# extension (modified)
