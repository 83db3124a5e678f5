"""The documentation's examples run, its API reference is complete, its pages read offline (MathJax is served
from the built site), and the README's Python blocks run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
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


class _Assets(HTMLParser):
    """The ``<script src>`` and stylesheet ``<link href>`` of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        elif tag == "link" and "stylesheet" in (a.get("rel") or "").split() and a.get("href"):
            self.urls.append(a["href"])


def offline_problems(html_dir: Path) -> tuple[list[str], int]:
    """What keeps the built site from reading offline, and how many pages load MathJax.

    A script or stylesheet from another host (``http(s)://``, ``//``) is a problem, and so is a local one whose
    file is not in the build; for MathJax, also a missing ``output/chtml/fonts`` folder beside its script.
    """
    problems: list[str] = []
    mathjax_pages = 0
    for page in sorted(html_dir.rglob("*.html")):
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8"))
        name = page.relative_to(html_dir)
        for url in parser.urls:
            if re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.I):
                problems.append(f"{name}: remote {url}")
                continue
            target = (page.parent / url.split("?")[0].split("#")[0]).resolve()
            if not target.is_file():
                problems.append(f"{name}: {url} is not in the build")
            elif "mathjax" in url.lower():
                mathjax_pages += 1
                if not any((target.parent / "output" / "chtml" / "fonts").rglob("*.woff*")):
                    problems.append(f"{name}: no MathJax fonts beside {url}")
    return problems, mathjax_pages


def test_offline_check_can_fail(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "here.js").write_text("")
    (tmp_path / "page.html").write_text(
        '<script src="_static/here.js"></script><script src="_static/gone.js"></script>'
        '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.example/x.css"><a href="https://example.org">a link is fine</a>'
    )
    problems, mathjax_pages = offline_problems(tmp_path)
    assert problems == [
        "page.html: _static/gone.js is not in the build",
        "page.html: remote https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js",
        "page.html: remote //fonts.example/x.css",
    ]
    assert mathjax_pages == 0


@pytest.mark.slow
def test_docs_html_reads_offline(tmp_path):
    """The built pages load MathJax (and every script and stylesheet) from the build itself, not from a CDN.

    The static half of the check; the rendering itself was looked at in headless Chromium with the network off
    (see "Building this documentation" in docs/quickstart.rst).
    """
    pytest.importorskip("sphinx", reason='the docs tools are an extra: pip install -e ".[docs]"')
    pytest.importorskip("myst_parser", reason='the docs tools are an extra: pip install -e ".[docs]"')
    # warnings are the business of .ci/run's -W build; this one only needs the pages
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"sphinx html build failed:\n{proc.stdout}\n{proc.stderr}"
    problems, mathjax_pages = offline_problems(tmp_path)
    assert not problems, "the built docs need the network:\n" + "\n".join(problems)
    # the pages with math (the losses page has a display formula) load MathJax: the check is not vacuous
    assert mathjax_pages > 0
    assert "mathjax" in (tmp_path / "losses.html").read_text(encoding="utf-8").lower()


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
