"""Execution backends: :mod:`geoseg.runtime.ray_backend` (the engine) and a serial one for tests
and debugging. Only ``ray_backend`` imports Ray."""
