"""The documentation's examples run, its API reference is complete, and the README's Python blocks run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torchinvariance as ti

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# Python shown in the docs must be run by the doctest builder (``.. testcode::`` / ``.. doctest::``); only
# literalinclude'd files of the repository (tested where they live) and non-Python blocks are exempt.
UNTESTED_PYTHON = re.compile(r"^\s*\.\. (code-block|code|sourcecode)::\s*(python3?|py|pycon|ipython)\s*$", re.M)
API_DIRECTIVE = re.compile(
    r"^\s*\.\. (?:auto(?:class|function|data|module|exception)|py:(?:class|function|data|module))::\s*(\S+)", re.M
)
PYTHON_FENCE = re.compile(r"^```(?:python|py|python3)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_docs_python_blocks_are_all_tested():
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
        for path in sorted(DOCS.rglob("*.rst"))
        if "_build" not in path.parts
        for m in UNTESTED_PYTHON.finditer(path.read_text())
    ]
    assert not offenders, (
        "Python in the docs must be a `.. testcode::` or `.. doctest::` block so that the doctest builder runs it; "
        f"found untested blocks: {offenders}"
    )


def test_api_reference_documents_every_public_name():
    documented: set[str] = set()
    for path in (DOCS / "api").glob("*.rst"):
        for target in API_DIRECTIVE.findall(path.read_text()):
            documented.add(target.removeprefix("torchinvariance."))
    missing = sorted(name for name in ti.__all__ if name not in documented)
    assert not missing, f"public names missing from docs/api/*.rst: {missing}"


def test_api_reference_check_can_fail():
    # the same regex on a page without the names: the check above is not vacuous
    page = ".. autoclass:: InvarianceLoss\n.. autofunction:: get_group\n"
    found = {t.removeprefix("torchinvariance.") for t in API_DIRECTIVE.findall(page)}
    assert found == {"InvarianceLoss", "get_group"}
    assert "Group" not in found


@pytest.mark.slow
def test_docs_doctest_builder(tmp_path):
    """Every ``.. testcode::`` / ``.. doctest::`` example of the docs runs and prints what the page says."""
    pytest.importorskip("sphinx", reason='the docs tools are an extra: pip install -e ".[docs]"')
    pytest.importorskip("myst_parser", reason='the docs tools are an extra: pip install -e ".[docs]"')
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "doctest", str(DOCS), str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = (tmp_path / "output.txt").read_text() if (tmp_path / "output.txt").exists() else ""
    assert proc.returncode == 0, f"sphinx doctest builder failed:\n{proc.stdout}\n{proc.stderr}\n{report}"
    tests = re.search(r"^\s*(\d+) tests?$", report, re.M)
    assert tests and int(tests.group(1)) > 0, f"the doctest builder ran no example:\n{report}"
    assert re.search(r"^\s*0 failures in tests$", report, re.M), report


def readme_python_blocks() -> list[str]:
    """The fenced ```python blocks of README.md, in order."""
    return PYTHON_FENCE.findall(README.read_text()) if README.exists() else []


def test_readme_block_extraction():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```py\nprint(x)\n```\n"
    assert PYTHON_FENCE.findall(text) == ["x = 1\n", "print(x)\n"]


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    """The README's Python blocks, run in order in one fresh interpreter, as a reader would paste them."""
    blocks = readme_python_blocks()
    if not blocks:
        pytest.skip("README.md has no ```python blocks (yet)")
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(f"# --- README block {i + 1}\n{b}" for i, b in enumerate(blocks)))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"a README ```python block failed:\n{proc.stdout}\n{proc.stderr}"
