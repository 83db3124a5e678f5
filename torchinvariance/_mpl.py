"""matplotlib for the optional ``plot`` extra, without global state.

Figures are :class:`matplotlib.figure.Figure` objects made directly, never through :mod:`matplotlib.pyplot`: no
backend is selected or switched, no figure is registered in pyplot's figure manager (nothing to close, nothing
leaks), and ``fig.savefig(...)`` renders with Agg. In a notebook a returned figure still displays itself. This
module imports nothing of the package (level 0, like ``_checks.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

__all__ = ["curve", "grouped_bars", "new_figure", "plain_log_ticks", "require"]

EXTRA_HINT = 'pip install "torchinvariance[plot]"'


def require(module: str, what: str, extra: str = "plot") -> Any:
    """Import ``module`` or raise an :class:`ImportError` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f'{what} needs {module.split(".")[0]}, an optional dependency: pip install "torchinvariance[{extra}]"'
        ) from exc


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplot_kw: Any) -> tuple:
    """A new ``Figure`` (constrained layout) and its axes array ``(nrows, ncols)``, without pyplot."""
    require("matplotlib", "plotting")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, subplot_kw=subplot_kw or None)
    return fig, axes


def grouped_bars(
    ax: Any,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    colors: Sequence[str] | None = None,
    hatched: Sequence[bool] | None = None,
) -> list:
    """Bars of several series side by side per category; ``hatched[i]`` marks category ``i`` (e.g. left out).

    Returns legend handles, one plain patch per series (so a hatched first bar does not hatch the legend).
    """
    from matplotlib.patches import Patch

    n = max(len(series), 1)
    width = 0.8 / n
    palette = colors or ["tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:purple"]
    handles = []
    for k, (label, values) in enumerate(series.items()):
        color = palette[k % len(palette)]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(categories))]
        bars = ax.bar(xs, list(values), width=width, color=color)
        for bar, mark in zip(bars, hatched or []):
            if mark:
                bar.set_hatch("//")
                bar.set_alpha(0.45)
        handles.append(Patch(facecolor=color, label=label))
    ax.set_xticks(range(len(categories)), list(categories), rotation=45 if len(categories) > 6 else 0)
    return handles


def curve(
    ax: Any,
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    label: str,
    color: str,
    linestyle: str = "-",
    marker: str = "o",
    hollow: Sequence[bool] | None = None,
) -> list:
    """One line through the points ``(xs[i], ys[i])`` in increasing ``x``; ``hollow[i]`` draws point ``i`` hollow.

    Returns the legend handle (the line) in a list.
    """
    order = sorted(range(len(xs)), key=lambda i: float(xs[i]))
    (line,) = ax.plot(
        [float(xs[i]) for i in order],
        [float(ys[i]) for i in order],
        color=color,
        linestyle=linestyle,
        marker=marker,
        markersize=4,
        linewidth=1.4,
        label=label,
    )
    marks = [i for i in order if hollow is not None and hollow[i]]
    if marks:
        ax.scatter(
            [float(xs[i]) for i in marks],
            [float(ys[i]) for i in marks],
            s=30,
            facecolors="white",
            edgecolors=color,
            zorder=3,
        )
    return [line]


def plain_log_ticks(axis: Any) -> None:
    """Label a logarithmic axis with plain numbers (``0.5``, ``2``, ``1e-05``) instead of ``5 x 10^-1``.

    The minor ticks are labelled too while the axis spans less than two decades (decided when drawn).
    """
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: Any) -> str:
        lo, hi = sorted(axis.get_view_interval())
        return f"{v:.2g}" if lo > 0 and hi / lo < 100 else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(FuncFormatter(minor))
