"""The ``geoseg`` command line (``geoseg --help``); :func:`main` is its entry point."""

from geoseg.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
