"""SIGINT and SIGTERM stop a job the same way: a :class:`~geoseg.errors.JobInterrupted` in the
main thread, finished chunks kept, the manifest saying why.

Ray turns an exception raised by a signal handler during ``ray.wait``/``ray.get`` into a plain
``KeyboardInterrupt``, so the signal that arrived is also remembered here (:func:`received`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from geoseg.errors import JobInterrupted

_received: list[int] = []  # filled only by the handler below, while it is installed


def _handler(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    raise JobInterrupted(signum)


def received() -> int | None:
    """The last stop signal delivered while :class:`StopOnSignals` was active."""
    return _received[-1] if _received else None


def exit_code(exc: BaseException) -> int:
    """128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    signum = getattr(exc, "signum", None) or received() or signal.SIGINT
    return 128 + int(signum)


class StopOnSignals:
    """Context: SIGINT and SIGTERM raise JobInterrupted (main thread only; no-op elsewhere)."""

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            _received.clear()
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, _handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, h in self._saved.items():
            signal.signal(sig, h)
        self._saved.clear()
