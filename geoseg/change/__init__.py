"""Change between two dates: land-cover transitions, change rasters and building changes.

:func:`compare_runs` compares two ``geoseg run`` output directories of one region;
:func:`evaluate_change` scores the result against a generated scene's truth. (Imported on first
use, so that ``geoseg.change.defaults`` stays cheap to import.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.change.change_scores import evaluate_change
    from geoseg.change.compare import ChangeResult, compare_runs

__all__ = ["ChangeResult", "compare_runs", "evaluate_change"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_change":
        from geoseg.change.change_scores import evaluate_change

        return evaluate_change
    if name in ("ChangeResult", "compare_runs"):
        from geoseg.change import compare

        return getattr(compare, name)
    raise AttributeError(f"module 'geoseg.change' has no attribute {name!r}")
