"""Sub-commands that wrap training, evaluation and export (kept apart to keep cli.py small)."""

from __future__ import annotations

import argparse


def add_extra_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    return None
