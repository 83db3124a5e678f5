"""Packaging metadata and the install texts (issue 21 item 5): no deprecated fields, texts agree with pyproject."""

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTALL_TEXTS = [ROOT / "README.md", ROOT / "docs" / "quickstart.rst"]


def _requirement_name(req):
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    """A TOML table (``{ text = "MIT" }``) makes pip warn that it is deprecated; the string needs setuptools>=77."""
    assert PYPROJECT["project"]["license"] == "MIT"
    (setuptools_req,) = [r for r in PYPROJECT["build-system"]["requires"] if _requirement_name(r) == "setuptools"]
    minimum = re.search(r">=\s*([\d.]+)", setuptools_req)
    assert minimum is not None and int(minimum.group(1).split(".")[0]) >= 77, setuptools_req


@pytest.mark.parametrize("path", INSTALL_TEXTS, ids=lambda p: p.name)
def test_install_text_agrees_with_pyproject(path):
    text = path.read_text()
    core = re.search(r"pip install -e \.\s+# core: (.+)", text)
    assert core is not None, f"{path.name}: no 'pip install -e .  # core: ...' line"
    listed = {name.strip().lower() for name in core.group(1).split(",")}
    assert listed == {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = set(re.findall(r'pip install -e "\.\[(\w+)\]"', text))
    assert extras, f"{path.name}: no extras listed"
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert "pip install torchinvariance" not in text, f"{path.name}: installs from PyPI, the README installs the clone"
