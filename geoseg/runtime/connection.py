"""Whether this process is connected to Ray, without importing Ray (it may not be installed)."""

from __future__ import annotations

import sys


def ray_connected() -> bool:
    """Whether this process has initialised (or joined) Ray."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shutdown_ray() -> None:
    """Shut down the Ray this process started or joined (its workers and actors go with it)."""
    if ray_connected():
        sys.modules["ray"].shutdown()
