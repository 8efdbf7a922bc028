"""Wall seconds of the parts of one chunk's prediction, per thread: normalize, forward, blend,
classify (softmax, argmax and confidence), and the thread's CPU seconds in each.

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


class Parts(dict[str, float]):
    """Wall seconds per part, and in :attr:`cpu` the CPU seconds of the collecting thread per
    part (``time.thread_time``: the work of other threads a part waits for, such as an
    inference engine's own pool, is not in it; a part :func:`add` counts has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[str, float] = {}


@contextmanager
def collect() -> Iterator[Parts]:
    """Seconds per part of what runs inside, in this thread (nested collects each get their
    own dict; the outer one does not see the inner one's parts)."""
    outer = getattr(_local, "acc", None)
    acc = Parts()
    _local.acc = acc
    try:
        yield acc
    finally:
        _local.acc = outer


@contextmanager
def part(name: str) -> Iterator[None]:
    """Count the block's wall seconds (and this thread's CPU seconds) to ``name`` in this
    thread's open :func:`collect`."""
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        add(name, time.perf_counter() - t0)
        acc: Parts | None = getattr(_local, "acc", None)
        if acc is not None:
            acc.cpu[name] = acc.cpu.get(name, 0.0) + time.thread_time() - c0


def add(name: str, seconds: float) -> None:
    """Count ``seconds`` to ``name`` in this thread's open :func:`collect` (if any)."""
    acc: Parts | None = getattr(_local, "acc", None)
    if acc is not None:
        acc[name] = acc.get(name, 0.0) + seconds


def spent() -> float:
    """Seconds counted so far in this thread's open :func:`collect` (0 outside one)."""
    acc: Parts | None = getattr(_local, "acc", None)
    return sum(acc.values()) if acc is not None else 0.0
