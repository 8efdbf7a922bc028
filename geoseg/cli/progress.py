"""The one progress display of every long command (run, demo, change, train, workflows/).

On a terminal: a rich bar on stderr, redrawn as work advances. Otherwise (logs, CI, a Ray job's
log): a plain line on stderr every ``every_s`` seconds, and always the last one. Nothing
goes to stdout, which keeps the commands' results (summaries, JSON reports) clean.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

__all__ = ["ProgressLine", "fmt_duration"]


def fmt_duration(s: float | None, unknown: str = "--:--") -> str:
    """``m:ss`` or ``h:mm:ss`` (``unknown`` for None)."""
    if s is None:
        return unknown
    n = round(s)
    if n >= 3600:
        return f"{n // 3600}:{n % 3600 // 60:02d}:{n % 60:02d}"
    return f"{n // 60}:{n % 60:02d}"


class ProgressLine:
    """``update(done, text)`` as work advances, ``close()`` at the end.

    ``total`` is the bar's length in the caller's units (chunks, steps, seconds); ``every_s``
    spaces the plain lines written when stderr is not a terminal; ``quiet`` shows nothing.
    """

    def __init__(self, label: str, total: float, *, quiet: bool = False,
                 every_s: float = 5.0, stream: Any = None) -> None:
        self.label = label
        self.total = total
        self.quiet = quiet
        self.every_s = every_s
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._task: Any = None
        self._last = time.monotonic()  # the first plain line after every_s: a job that stops
        # at once (bad input, full disk) leaves only its one error line

    def update(self, done: float, text: str, *, total: float | None = None,
               final: bool = False) -> None:
        if total is not None:
            self.total = total
        if self.quiet:
            return
        if not self.tty:
            now = time.monotonic()
            if final or done >= self.total or now - self._last >= self.every_s:
                print(f"{self.label}: {_plain(text)}", file=self.stream, flush=True)
                self._last = now
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(TextColumn(self.label), BarColumn(),
                                 TextColumn("{task.description}"),
                                 console=Console(file=self.stream, highlight=False))
            self._bar.start()
            self._task = self._bar.add_task(text, total=self.total)
        self._bar.update(self._task, completed=done, total=self.total, description=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _plain(text: str) -> str:
    """Rich markup removed (``[red]...[/red]``)."""
    return _TAG.sub("", text)


_TAG = re.compile(r"\[/?[a-z][a-z _]*\]")
