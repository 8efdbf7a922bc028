"""One error hierarchy for geoseg.

Every error a user can cause derives from :class:`GeoSegError` and from the matching builtin,
so callers may catch either. Messages say what is wrong *and* what to do; the CLI prints them as
one line and exits non-zero.
"""

from __future__ import annotations


class GeoSegError(Exception):
    """Root of all geoseg errors."""

    exit_code: int = 2


class InputError(GeoSegError, ValueError):
    """Input that geoseg cannot use (a file, a region, a value)."""


class RasterNotFoundError(InputError, FileNotFoundError):
    """A raster path that does not exist."""


class NotARasterError(InputError):
    """A file that GDAL cannot open as a raster."""


class CRSError(InputError):
    """Missing or unusable coordinate reference system."""


class RegionError(InputError):
    """A region that is empty, invalid or outside the image."""


class BandMismatchError(InputError):
    """The model's bands do not match the image's bands."""


class BundleError(InputError):
    """A model bundle that is missing, malformed or unsafe."""


class ConfigError(InputError):
    """A job or stage configuration that does not validate."""


class LabelError(InputError):
    """Training or evaluation labels that cannot be used."""


class MissingDependencyError(GeoSegError, ImportError):
    """An optional dependency the requested feature needs is not installed."""


class OutputExistsError(GeoSegError, FileExistsError):
    """The output directory already holds results."""


class ResumeError(GeoSegError, RuntimeError):
    """A run cannot be resumed into the given outputs."""


class JobFailedError(GeoSegError, RuntimeError):
    """A job finished with failed chunks."""

    exit_code = 3


class IncompleteRunError(JobFailedError):
    """A run's outputs were asked for but the run did not finish (failed chunks, interrupted,
    still running): resume it, or read what exists with ``partial=True``."""


class ClusterError(GeoSegError, ConnectionError):
    """The Ray cluster or its job server cannot be reached, or does not know the job."""


class ClusterAuthError(ClusterError, PermissionError):
    """The Ray job server wants a token (Ray token authentication) that was not sent or does not
    match."""


class GeoSegWarning(UserWarning):
    """Degraded but valid situations (e.g. a raster without declared nodata)."""


class OutputLockedError(GeoSegError, BlockingIOError):
    """Another geoseg job holds the output folder."""


class StorageError(GeoSegError, OSError):
    """Writing an output failed for a reason a retry cannot fix (disk full, permission)."""

    exit_code = 4
    fatal = True  # False: an I/O error of unknown cause (see geoseg.outdir.storage_errors)


class JobInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the job; finished chunks are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
