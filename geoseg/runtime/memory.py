"""Give freed heap memory back to the operating system (glibc), so that a process's resident
size falls when a big object goes: the model after the last chunk, before the final merge of the
raster-spanning features that sets a run's peak."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

logger = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Collect garbage, then ``malloc_trim(0)`` where the C library is glibc (a no-op
    elsewhere)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
