"""A broken or unsafe bundle.yaml is refused in one line that says where (issue 13 B)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.bundle import read_spec
from geoseg.cli import main
from geoseg.errors import BundleError
from tests.conftest import write_raster
from tests.pipeline.conftest import textured

CASES = {
    "unclosed": ("name: x\nversion: [1, 2\ntask: landcover\n", "line 3", "invalid YAML"),
    "indent": ("name: x\n  bad: indent\n", "line 2", "mapping values are not allowed"),
    "tab": ("\tname: x\n", "line 1", "invalid YAML"),
    "python-apply": ('name: !!python/object/apply:os.system ["echo pwned"]\n', "line 1",
                     "!!python/object/apply:os.system is refused"),
    "python-name": ("name: x\nversion: !!python/name:os.system\n", "line 2",
                    "!!python/name:os.system is refused"),
}


def _bundle(tmp_path: Path, text: str) -> Path:
    b = tmp_path / "b"
    b.mkdir()
    (b / "bundle.yaml").write_text(text)
    return b


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_spec_one_line(tmp_path: Path, case: str) -> None:
    text, where, what = CASES[case]
    with pytest.raises(BundleError) as info:
        read_spec(_bundle(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg and where in msg and what in msg, msg
    assert str(tmp_path / "b" / "bundle.yaml") in msg


@pytest.mark.parametrize("case", ["unclosed", "python-apply"])
def test_cli_one_line_exit_2(tmp_path: Path, case: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    tif = write_raster(tmp_path / "a.tif", textured(32, 32))
    b = _bundle(tmp_path, CASES[case][0])
    rc = main(["-q", "run", str(tif), "-o", str(tmp_path / "o"), "-m", str(b)])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert CASES[case][1] in lines[0]
    assert not (tmp_path / "pwned").exists()
