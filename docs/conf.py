"""Sphinx configuration of the torchinvariance documentation.

Build (warnings are errors, as in ``.ci/run``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

Links into the PyTorch / NumPy / Python / captum documentation (intersphinx) need the network, so they are
off by default and the build works offline. Turn them on with ``TORCHINVARIANCE_DOCS_INTERSPHINX=1``. MathJax is
served from the built site (``sphinx-mathjax-offline``), so the pages also read offline.
"""

from __future__ import annotations

import doctest
import inspect
import os
import sys
import typing
from pathlib import Path

import sphinx.ext.autosummary

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the working tree, also without an editable install

import torchinvariance  # noqa: E402

# -- project -------------------------------------------------------------------------------------------------
project = "torchinvariance"
author = "torchinvariance developers"
copyright = "torchinvariance developers"
release = torchinvariance.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    # MathJax 3.2 vendored: sets mathjax_path to the local _static/mathjax/tex-chtml.js and copies MathJax
    # (scripts, extensions, fonts) there, so the math renders without a network; tests/test_docs.py checks it.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_parser",  # only to include the Markdown files the benchmarks write (tables, claims)
]

source_suffix = {".rst": "restructuredtext"}  # Markdown is only ever included, never a page of its own
root_doc = "index"
# Fragments pulled in with ``.. include::`` are not pages of their own.
exclude_patterns = ["_build", "**/_build", "results", "benchmark_results.rst", "performance_results.rst"]
templates_path: list[str] = []

# Every reference must resolve (our own API); references into other projects are checked only when their
# inventories are loaded, see ``nitpick_ignore_regex`` below.
nitpicky = True

# -- autodoc / autosummary / napoleon ------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = False
autodoc_class_signature = "mixed"
autosummary_generate = False  # the API pages are written by hand; autosummary only renders the tables
# Summaries end at the first sentence; "(paper eq. 2)" is not one. Sphinx reads this tuple at call time.
sphinx.ext.autosummary.WELL_KNOWN_ABBREVIATIONS = (*sphinx.ext.autosummary.WELL_KNOWN_ABBREVIATIONS, "eq.")

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so they do not clash with autodoc'ed members
napoleon_use_rtype = False
napoleon_preprocess_types = True
napoleon_attr_annotations = True

# -- doctest -------------------------------------------------------------------------------------------------
# Only the explicit ``.. doctest::`` / ``.. testcode::`` blocks of these pages run here; the ``>>>`` examples
# in the library's docstrings run under ``pytest --doctest-modules`` (with the module's globals).
doctest_test_doctest_blocks = ""
# Exception messages are compared too (Sphinx's default ignores them): the error examples document the messages.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
# One thread: the examples are tiny, and on a shared machine more threads only add contention.
doctest_global_setup = """
import importlib.util
import torch
import torchinvariance as ti
torch.set_num_threads(1)
torch.manual_seed(0)
"""

# -- intersphinx (opt-in: needs the network) -----------------------------------------------------------------
INTERSPHINX_ENV = "TORCHINVARIANCE_DOCS_INTERSPHINX"
_intersphinx_on = os.environ.get(INTERSPHINX_ENV, "").strip().lower() in ("1", "true", "yes")
intersphinx_mapping = (
    {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "captum": ("https://captum.ai/api", None),
    }
    if _intersphinx_on
    else {}
)
intersphinx_timeout = 30
intersphinx_disabled_reftypes = ["std:doc", "std:label"]  # our own page references never leave the site

# References to other projects: resolved by intersphinx when it is on; otherwise (offline) left as plain text
# instead of failing the nitpicky build. References into torchinvariance are never ignored.
_EXTERNAL = (
    r"(torch|numpy|np|captum|pluggy|tqdm|typing|collections|abc|enum|importlib|pathlib|os|threading"
    r"|torchmetrics|lightning|matplotlib|pandas|argparse)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Generator|dtype|device|Callable|Sequence|Iterable|Mapping|Literal|Any)"),
    (r"py:.*", r"(None|int|float|str|bool|bytes|list|dict|tuple|set|object|type|callable|optional|iterable)"),
    (r"py:.*", r"(ValueError|TypeError|KeyError|ImportError|AssertionError|RuntimeError|RuntimeWarning)"),
]

# -- HTML ----------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"torchinvariance {release}"
html_theme_options = {
    "navigation_with_keys": True,
}
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- MyST (Markdown includes) --------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # included result files start at heading level 2


# -- our own checks ------------------------------------------------------------------------------------------
def _evaluate_annotations(app, obj, bound_method):
    """Evaluate string annotations (``from __future__ import annotations``) of our callables.

    autodoc evaluates them for functions but not for a class signature, where ``reduction: Reduction``
    would stay an unresolvable alias name; evaluated, it reads ``Literal['mean', 'sum', 'none']``.
    """
    for fn in (obj, getattr(obj, "__init__", None)):
        if inspect.isfunction(fn) and fn.__module__.startswith("torchinvariance"):
            try:
                fn.__annotations__ = typing.get_type_hints(fn)
            except Exception:  # leave what cannot be evaluated as it is
                pass


_SUBMODULES = ("groups", "losses", "metrics", "models", "registry", "spectral", "testing", "plot")


def _resolve(env, app, node, contnode, target):
    domain = env.domains["py"] if hasattr(env, "domains") else env.get_domain("py")
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], target, node, contnode)


def _resolve_flat_alias(app, env, node, contnode):
    """Resolve ``torchinvariance.<sub>.<Name>`` to the documented flat ``torchinvariance.<Name>``.

    The API reference documents every public name where users find it, ``ti.<Name>``; docstrings and type hints
    may still spell the defining module (``torchinvariance.groups.Group``, ``torchinvariance.groups._base.Group``).
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    public = set(torchinvariance.__all__)
    if target.startswith("torchinvariance."):
        parts = target.split(".")
        # the first component after the package that is a public name (a class may be followed by a member)
        for i in range(2, len(parts)):
            if parts[i] in public:
                alias = ".".join(["torchinvariance", *parts[i:]])
                return None if alias == target else _resolve(env, app, node, contnode, alias)
        return None
    if not (node.get("py:module") or "").startswith("torchinvariance"):
        return None
    # a relative name inside a docstring of ours: a public name ...
    if target.split(".")[0] in public:
        return _resolve(env, app, node, contnode, f"torchinvariance.{target}")
    # ... or a name of a public subpackage that is not re-exported flat (e.g. ``models.describe``) ...
    head = target.split(".")[0]
    for sub in _SUBMODULES:
        module = getattr(torchinvariance, sub, None)
        if module is not None and head in getattr(module, "__all__", ()):
            found = _resolve(env, app, node, contnode, f"torchinvariance.{sub}.{target}")
            if found is not None:
                return found
    # ... or a member inherited from a documented base class (e.g. :meth:`act` in a Group subclass)
    cls = getattr(torchinvariance, node.get("py:class") or "", None)
    if isinstance(cls, type):
        for base in cls.__mro__[1:]:
            if base.__name__ in public and getattr(torchinvariance, base.__name__) is base:
                found = _resolve(env, app, node, contnode, f"torchinvariance.{base.__name__}.{target}")
                if found is not None:
                    return found
    return None


def _check_api_reference(app, env):
    """Warn (so ``-W`` fails the build) for every public name missing from the API reference."""
    from sphinx.util import logging

    logger = logging.getLogger("torchinvariance.docs")
    domain = env.domains["py"] if hasattr(env, "domains") else env.get_domain("py")
    documented = set(domain.objects) | set(domain.modules)
    for name in torchinvariance.__all__:
        if f"torchinvariance.{name}" not in documented:
            logger.warning(
                "public name torchinvariance.%s (in torchinvariance.__all__) is missing from the API reference; "
                "add it to one of the pages in docs/api/",
                name,
            )


def setup(app):
    app.connect("autodoc-before-process-signature", _evaluate_annotations)
    app.connect("missing-reference", _resolve_flat_alias)
    app.connect("env-check-consistency", _check_api_reference)
    return {"parallel_read_safe": True}
