"""The layering rules of docs/architecture.rst, checked on the import statements of every library module.

A module may import only from lower levels (and its own folder); the rules are the page's greps, as a test that
fails when a change breaks them.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchinvariance"

LEVEL0 = {"groups", "_checks", "_mpl", "_io"}
LEVEL1 = {"registry", "orbit", "actions", "divergences"}
LEVEL2A = {"losses", "models", "testing", "spectral", "symmetry", "robustness"}
# what each part of the package may import from torchinvariance besides itself
ALLOWED = {
    "groups": set(),
    "_checks": set(),
    "_mpl": set(),
    "_io": set(),
    "registry": {"groups", "_checks"},
    "divergences": {"groups", "_checks"},
    "actions": {"groups", "_checks"},
    "orbit": {"groups", "_checks", "actions"},
    **{m: LEVEL0 | LEVEL1 for m in LEVEL2A},
    "metrics": LEVEL0 | LEVEL1 | {"symmetry", "robustness"},
}


def imported_parts(source: str) -> set[str]:
    """The top-level parts of torchinvariance (``metrics``, ``orbit``, ...) that ``source`` imports."""
    parts = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if "." in node.module else [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            head, _, rest = name.partition(".")
            if head == "torchinvariance":
                parts.add(rest.split(".")[0] if rest else "*")
    return parts


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_from_lower_levels(path):
    part = _part(path)
    source = path.read_text()
    used = imported_parts(source) - {part}
    outside = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in outside:  # the library never imports the benchmarks or the tests
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        assert not any(n.split(".")[0] in ("benchmarks", "tests") for n in names), ast.unparse(node)
    if part not in ALLOWED:  # level 3 (plot, integrations, audit, __main__) and __init__
        return
    assert used <= ALLOWED[part], f"{path.relative_to(PACKAGE)} imports {sorted(used - ALLOWED[part])}"


def test_the_checker_can_fail():
    assert imported_parts("from torchinvariance.losses import InvarianceLoss") == {"losses"}
    assert imported_parts("import torchinvariance._mpl as _mpl\nfrom torchinvariance import orbit") == {"_mpl", "orbit"}
    assert imported_parts("import torchinvariance as ti") == {"*"}
    assert imported_parts("from .x import y\nimport torch") == set()
    assert not imported_parts("from torchinvariance.metrics import evaluate_invariance") <= ALLOWED["losses"]
    assert not imported_parts("from torchinvariance.robustness import worst_case") <= ALLOWED["symmetry"]
