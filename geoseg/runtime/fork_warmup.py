"""Imported only by the vector workers' fork server (``vector_procs._PRELOAD``): what every
worker forked from it would otherwise each set up on its own.

numcodecs' Blosc codec creates a ``multiprocessing.Lock`` on first use, in each process; the
lock is registered with the resource tracker and unregistered when the process exits
normally. A worker killed (by the OS for memory, or by the pool that broke when another one
died) never unregisters it, so Python printed "resource_tracker: There appear to be N leaked
semaphore objects" at the job's exit. Created here, in the server, the workers inherit the
one lock and register none of their own; the server exits normally.
"""

from __future__ import annotations

import numcodecs.blosc

import geoseg.runtime.vector_procs  # (what a worker runs)
import geoseg.vector_outputs  # noqa: F401

numcodecs.blosc.get_mutex()
