"""Change between two dates: land-cover transitions, change rasters and building changes.

:func:`compare_runs` compares two ``geoseg run`` output directories of one region;
:func:`evaluate_change` scores the result against a generated scene's truth.
"""

from geoseg.change.change_scores import evaluate_change
from geoseg.change.compare import ChangeResult, compare_runs

__all__ = ["ChangeResult", "compare_runs", "evaluate_change"]
