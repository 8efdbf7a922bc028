"""geoseg's warnings reach the user in one style, ``warning: ...``, whether the library warns
(``warnings.warn``) or logs (``log.warning``): `geoseg change` printed both styles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_logged_warning_reads_as_the_cli_s_warning_lines(tmp_path: Path) -> None:
    script = (
        "import logging, sys, warnings\n"
        "from geoseg.cli import app\n"
        "from geoseg.errors import GeoSegWarning\n"
        "def fn(a):\n"
        "    warnings.warn('from warnings', GeoSegWarning)\n"
        "    logging.getLogger('geoseg.change.x').warning('from %s', 'logging')\n"
        "    logging.getLogger('geoseg.change.x').info('not shown without -v')\n"
        "    logging.getLogger('other.lib').warning('a library of its own')\n"
        "    return 0\n"
        "app._dispatch = lambda args, exit_code: fn(args)  # main's set-up, then this\n"
        "sys.exit(app.main(['status', 'x']))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == ["warning: from warnings", "warning: from logging",
                     "WARNING other.lib: a library of its own"], lines
