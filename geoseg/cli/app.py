"""The ``geoseg`` command: parse, validate, call the library, print a short summary.

Each sub-command lives in a module of this package (``run_cmds``, ``model_cmds``,
``change_cmd``, ``cluster_cmds``); this one builds the parser and turns errors into exit codes.

Errors a user can cause print as one line on stderr with a non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from geoseg.cli.change_cmd import add_change_command
from geoseg.cli.cluster_cmds import add_cluster_commands
from geoseg.cli.model_cmds import add_model_commands
from geoseg.cli.run_cmds import add_run_commands
from geoseg.errors import ConfigError, GeoSegError, GeoSegWarning
from geoseg.layout import MANIFEST
from geoseg.runtime.connection import shutdown_ray


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where the parser sets one (options left to the job config,
    whose argparse default is None, say theirs in their help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: ``--help`` shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from geoseg import __version__

    p = argparse.ArgumentParser(
        prog="geoseg", description="Segment huge georeferenced images into maps: land cover "
        "and building footprints as georeferenced Zarr, COG and GeoPackage, change between "
        "dates, training and evaluation; on this machine or a Ray cluster.")
    p.add_argument("--version", action="version", version=f"geoseg {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v info, -vv debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_CommandParser)

    add_run_commands(sub)
    add_model_commands(sub)
    add_change_command(sub)
    add_cluster_commands(sub)
    return p


# options whose value may start with "-" (a bbox west of Greenwich or south of the equator)
_NEGATIVE_VALUE_OPTIONS = ("--bbox",)


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -101.2,41.4,...`` → ``--bbox=-101.2,41.4,...`` (argparse would take the value for
    an option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in _NEGATIVE_VALUE_OPTIONS and nxt is not None and nxt.startswith("-") \
                and len(nxt) > 1 and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


class _CliFormatter(logging.Formatter):
    """geoseg's own warnings logged by the library read as the CLI's ``warning:`` lines (one
    style for both ways a warning reaches the user); other loggers keep level and name."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.WARNING and record.name.split(".")[0] == "geoseg":
            return f"warning: {record.getMessage()}"
        return super().format(record)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_join_negative_values(raw))
    fresh = not logging.getLogger().handlers  # (a host program's or pytest's stay as they are)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers if fresh else ():
        handler.setFormatter(_CliFormatter("%(levelname)s %(name)s: %(message)s"))
    warnings.simplefilter("default", GeoSegWarning)
    # rasterio reads the transform of each fresh in-memory dataset (features.shapes builds one
    # per call) before setting it, and warns about it in worker threads: not about user data
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs")
    warnings.showwarning = lambda m, c, *_a, **_k: print(f"warning: {m}", file=sys.stderr)
    from geoseg.runtime.signals import StopOnSignals, exit_code

    # SIGTERM (Kubernetes, systemd, timeout, `ray job stop`) stops a job as Ctrl-C does
    with StopOnSignals():
        return _dispatch(args, exit_code)


# What an interrupted command leaves, and how to go on (run, demo and train resume)
INTERRUPTED = {
    "run": "finished chunks are kept; rerun with --resume to continue",
    "demo": "finished chunks are kept; rerun with --resume to continue",
    "submit": "stopped waiting; a submitted job goes on (geoseg status / logs / cancel JOB)",
    "logs": "stopped following; the job goes on (geoseg status / cancel JOB)",
    "train": "the last checkpoint (OUT/checkpoints/last.pt) is kept; rerun with --resume to "
             "continue",
    "change": "finished work is kept (no change_summary.json yet): rerun the same command to "
              "continue (the dates' runs resume, the change outputs are redone)",
}
INTERRUPTED_OTHER = "nothing was finished; rerun the command"


def _left(args: argparse.Namespace) -> str:
    """What an interrupted command left: a run stopped before its folder had a manifest
    (connecting to a cluster, planning) left nothing to resume."""
    out = getattr(args, "out", None) if args.cmd == "run" else None
    if out and "://" not in str(out) and not (Path(out) / MANIFEST).is_file():
        return INTERRUPTED_OTHER
    return INTERRUPTED.get(args.cmd, INTERRUPTED_OTHER)


def _dispatch(args: argparse.Namespace, exit_code: Callable[[BaseException], int]) -> int:
    """Run the sub-command; user errors and interruptions become one line and an exit code."""
    try:
        return int(args.fn(args))
    except KeyboardInterrupt as exc:  # JobInterrupted too
        shutdown_ray()
        print(f"interrupted: {_left(args)}", file=sys.stderr)
        return exit_code(exc)
    except GeoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:  # settings passed on the command line, checked by pydantic
        from geoseg.setting_errors import explain

        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or exc.title
        if hasattr(args, where):  # a flag of this command (train's --chip-size, --steps, ...)
            where = "--" + where.replace("_", "-")
        print(f"error: {where}: {explain([first])}", file=sys.stderr)
        return ConfigError.exit_code

if __name__ == "__main__":
    sys.exit(main())
