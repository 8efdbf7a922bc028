"""Defaults of the change step, importable without the heavy modules (the CLI shows them)."""

MIN_CHANGE_WIDTH = 3  # px: drops a class boundary drawn 1-2 px apart on the two dates
# chosen on a validation scene (`geoseg sample --size 4096 --seed 7`), never on the test scene:
# the lowest min confidence whose changed-pixel precision reaches 0.8 there: 155/255, precision
# 0.736 -> 0.804 at recall 0.854 -> 0.823 on that scene (README, DESIGN)
MIN_CHANGE_CONFIDENCE = 0.605
