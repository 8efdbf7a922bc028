"""Wall seconds of the parts of one chunk's prediction, per thread: normalize, forward, blend,
classify (softmax, argmax and confidence).

The caller of a model opens :func:`collect` around a prediction; the model wraps each part in
:func:`part`. Outside a :func:`collect` (a model used on its own) :func:`part` counts
nothing. The clock is per thread, so several passes at once (one thread each) keep
their own accounts. On a GPU the kernels run asynchronously: a part's seconds are those the
calling thread spent in it, and the wait for the device falls in the part that copies the
result back (classify, or blend when tiles are blended there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PARTS = ("normalize", "forward", "blend", "classify")
"""The parts, in the order a prediction runs them."""

_local = threading.local()


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Seconds per part of what runs inside, in this thread (nested collects each get their
    own dict; the outer one does not see the inner one's parts)."""
    outer = getattr(_local, "acc", None)
    acc: dict[str, float] = {}
    _local.acc = acc
    try:
        yield acc
    finally:
        _local.acc = outer


@contextmanager
def part(name: str) -> Iterator[None]:
    """Count the block's wall seconds to ``name`` in this thread's open :func:`collect`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - t0)


def add(name: str, seconds: float) -> None:
    """Count ``seconds`` to ``name`` in this thread's open :func:`collect` (if any)."""
    acc: dict[str, float] | None = getattr(_local, "acc", None)
    if acc is not None:
        acc[name] = acc.get(name, 0.0) + seconds


def spent() -> float:
    """Seconds counted so far in this thread's open :func:`collect` (0 outside one)."""
    acc: dict[str, float] | None = getattr(_local, "acc", None)
    return sum(acc.values()) if acc is not None else 0.0
