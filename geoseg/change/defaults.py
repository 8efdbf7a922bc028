"""Defaults of the change step, importable without the heavy modules (the CLI shows them)."""

MIN_CHANGE_WIDTH = 3  # px: drops a class boundary drawn 1-2 px apart on the two dates
# chosen on a validation scene (`geoseg sample --size 4096 --seed 7`), never on the test scene:
# the lowest min confidence whose changed-pixel precision reaches 0.8 there. Bundles 1.1.0:
# 166/255, precision 0.708 -> 0.802 at recall 0.875 -> 0.849 on that scene (bundles 1.0.0 had
# needed 155/255: 0.736 -> 0.804 at 0.854 -> 0.823; README, DESIGN)
MIN_CHANGE_CONFIDENCE = 0.651

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
