r"""Figures of the paper for any model: saliency over an orbit (Figure 3), drift (Figure 4), spectral norms (Figure 5),
and of the robustness tools: the LieGG symmetry spectrum and the smallest flips.

Needs matplotlib (``pip install "torchinvariance[plot]"``). Every function returns a
:class:`matplotlib.figure.Figure` made without :mod:`matplotlib.pyplot`: no backend is selected or switched and no
figure is left open in pyplot's figure manager; save it with ``fig.savefig("out.png")`` (Agg) or show it in a
notebook. The functions that draw one panel take ``ax=`` to draw into an axes of a figure of your own.
:meth:`InvarianceReport.plot <torchinvariance.InvarianceReport.plot>` draws a report's per-element bars.

The measurements come from the metrics layer (:func:`~torchinvariance.saliency_map`,
:func:`~torchinvariance.metrics.realign_saliency`, :func:`~torchinvariance.distribution_invariance`,
:func:`~torchinvariance.jacobian_spectral_norm`, :func:`~torchinvariance.discover_symmetries`,
:func:`~torchinvariance.smallest_flip`); this module only draws them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import torchinvariance._mpl as _mpl
from torchinvariance._checks import check_model
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics import (
    InvarianceReport,
    SaliencyConfig,
    distribution_invariance,
    realign_saliency,
    saliency_map,
)
from torchinvariance.metrics._report_type import curve_panel
from torchinvariance.orbit import model_output
from torchinvariance.robustness import FlipResult, draw_flips
from torchinvariance.spectral import jacobian_spectral_norm
from torchinvariance.symmetry import SymmetrySpectrum, draw_spectrum

__all__ = [
    "drift",
    "drift_curve",
    "flip_histogram",
    "metric_vs_element",
    "orbit_saliency_maps",
    "saliency_orbit",
    "spectral",
    "symmetry_spectrum",
]

Model = Callable[[Tensor], Tensor]


def _models(model: Model | Mapping[str, Model]) -> dict[str, Model]:
    models = dict(model) if isinstance(model, Mapping) else {"": model}
    if not models:
        raise ValueError("no model to draw")
    for m in models.values():
        check_model(m)
    return models


def orbit_saliency_maps(
    model: Model,
    group: Group,
    x: Tensor,
    elements: Sequence | None = None,
    *,
    config: SaliencyConfig | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The saliency maps of every orbit element of ``x``, brought back to the frame of ``x``.

    .. math::
        M_{ib} = g_i^{-1}\, m_f(g_i x_b)

    with :math:`m_f` the :func:`~torchinvariance.saliency_map`, every map attributed to the class predicted on
    :math:`x_b` (as in SI), and :math:`g^{-1}` applied by :func:`~torchinvariance.metrics.realign_saliency`. An
    invariant model has :math:`M_{ib} = M_{1b}` for every element. For the built-in exact groups with the default
    ``padding="circular"`` these are the maps SI compares (the blur commutes with their action).

    Args:
        model: classifier returning logits.
        group: a group acting on images.
        x: batch ``(B, C, H, W)``.
        elements: the elements (default every element of a finite group, identity first).
        config: the saliency recipe (default: the paper's).

    Returns:
        ``(images, maps)``: the channel-summed transformed inputs :math:`g_i x_b` and the realigned maps, both
        ``(n, B, H, W)``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> images, maps = ti.plot.orbit_saliency_maps(model, ti.get_group("rotation", order=4),
        ...                                            torch.randn(2, 1, 6, 6), config=ti.SaliencyConfig(n_steps=8))
        >>> images.shape, maps.shape
        (torch.Size([4, 2, 6, 6]), torch.Size([4, 2, 6, 6]))
    """
    check_model(model)
    ensure_group(group)
    cfg = config or SaliencyConfig()
    if elements is None:
        if not group.is_finite:
            raise ValueError(f"{group!r} is continuous: pass elements= (e.g. a list of angles)")
        els = list(group.elements())
    else:
        els = [group.check_element(g) for g in elements]
    with torch.no_grad():
        target = model_output(model(x), x.shape[0]).argmax(1)
    orbit = group.orbit(x, els)  # (n, B, C, H, W)
    n, b = orbit.shape[:2]
    maps = saliency_map(model, orbit.reshape(n * b, *x.shape[1:]), target=target.repeat(n), config=cfg)
    maps = realign_saliency(group, maps.reshape(n, b, *maps.shape[1:]), els)
    images = orbit.reshape(n, b, -1, *x.shape[-2:]).sum(2)
    return images.detach(), maps.detach()


def saliency_orbit(
    model: Model | Mapping[str, Model],
    group: Group,
    x: Tensor,
    elements: Sequence | None = None,
    *,
    config: SaliencyConfig | None = None,
    title: str | None = None,
    cmap: str = "inferno",
) -> Any:
    r"""The paper's Figure 3 for any model: the realigned saliency maps :math:`g^{-1} m_f(g x)` over the orbit.

    One row per sample (and per model, when ``model`` is a mapping ``{label: model}``), the input in the first
    column, then one column per group element (:func:`orbit_saliency_maps`). A model whose decisions are genuinely
    invariant shows the same map in every column; one that learned invariance from augmented data shows different
    evidence per orientation.

    Args:
        model: a classifier, or ``{label: classifier}`` to stack several.
        group: a group acting on images.
        x: a few samples ``(B, C, H, W)``.
        elements: the elements (default every element of a finite group).
        config: the saliency recipe (default: the paper's).
        title: the figure's title.
        cmap: matplotlib colormap of the maps.

    Returns:
        A :class:`matplotlib.figure.Figure`.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> fig = ti.plot.saliency_orbit(model, ti.get_group("rotation", order=4), torch.randn(2, 1, 6, 6),
        ...                              config=ti.SaliencyConfig(n_steps=8))
        >>> len(fig.axes)  # 2 samples x (input + 4 elements)
        10
    """
    models = _models(model)
    els = list(group.elements()) if elements is None and group.is_finite else elements
    drawn = {label: orbit_saliency_maps(m, group, x, els, config=config) for label, m in models.items()}
    n, b = next(iter(drawn.values()))[1].shape[:2]
    names = [group.element_name(g) for g in (els if els is not None else [])]
    fig, axes = _mpl.new_figure(b * len(models), n + 1, figsize=(1.5 * (n + 1), 1.5 * b * len(models)))
    for mi, (label, (images, maps)) in enumerate(drawn.items()):
        for s in range(b):
            row = mi * b + s
            background = images[0, s].cpu().numpy()
            axes[row, 0].imshow(background, cmap="gray")
            axes[row, 0].set_ylabel(f"{label}\nsample {s}" if label else f"sample {s}", fontsize=8)
            for i in range(n):
                # the realigned map lies over x itself: draw x in grey, the salient pixels as a heat map over it
                m = maps[i, s].cpu().numpy()
                axes[row, i + 1].imshow(background, cmap="gray", alpha=0.45)
                axes[row, i + 1].imshow(np.ma.masked_where(m <= 0, m), cmap=cmap, interpolation="nearest")
                if row == 0:
                    axes[row, i + 1].set_title(f"$g^{{-1}} m(gx)$\n{names[i]}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input x", fontsize=7)
    fig.suptitle(title or f"saliency over the {group!r} orbit, realigned")
    return fig


def drift_curve(
    model: Model,
    group: Group,
    inputs: Mapping[float, Tensor | tuple[Tensor, Tensor]],
    *,
    include_identity: bool = False,
) -> list[dict[str, float]]:
    r"""Measure DI (and accuracy where labels are given) on inputs drawn from drifting distributions.

    For every drift level :math:`\beta` with inputs :math:`X_\beta` (paper §4.3: MNIST blended into Fashion-MNIST),

    .. math::
        \text{point}_\beta = \big(\beta,\; DI_f(X_\beta),\; \text{Acc}(X_\beta),\;
        \text{Acc}(X_\beta) / \text{Acc}(X_{\beta_0})\big)

    with :math:`\beta_0` the first level. A genuinely invariant model keeps DI at 0 whatever the drift; one whose
    invariance was learned from the training distribution does not.

    Args:
        model: classifier returning logits.
        group: the group.
        inputs: ``{beta: x}`` or ``{beta: (x, y)}``, in the order to draw.
        include_identity: the element averaging of DI.

    Returns:
        ``[{"beta", "di"}, ...]``, plus ``"acc"`` and ``"acc_ratio"`` where labels were given.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.randn(8, 1, 4, 4)
        >>> curve = ti.plot.drift_curve(model, ti.get_group("flip"), {0.0: x, 0.5: 2 * x})
        >>> [sorted(p) for p in curve][0]
        ['beta', 'di']
    """
    check_model(model)
    points: list[dict[str, float]] = []
    base = None
    for beta, data in inputs.items():
        x, y = data if isinstance(data, (tuple, list)) else (data, None)
        with torch.no_grad():
            point = {
                "beta": float(beta),
                "di": float(distribution_invariance(model, group, x, include_identity=include_identity)),
            }
            if y is not None:
                point["acc"] = float((model_output(model(x), x.shape[0]).argmax(1) == y.to(x.device)).double().mean())
        if "acc" in point:
            base = point["acc"] if base is None else base
            point["acc_ratio"] = point["acc"] / base if base else math.nan
        points.append(point)
    return points


def drift(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    x: str = "beta",
    y: str = "di",
    y2: str | None = "acc_ratio",
    colors: Mapping[str, str] | None = None,
    ax: Any = None,
    title: str | None = None,
    xlabel: str = r"drift $\beta$",
    ylabel: str = "DI (KL)",
    y2label: str = r"Acc$(D(\beta))$ / Acc$(D(0))$",
) -> Any:
    r"""The paper's Figure 4: an invariance metric (solid, left axis) and the accuracy ratio (dashed, right axis)
    against the drift of the input distribution.

    Args:
        curves: ``{label: [{"beta": ..., "di": ..., "acc_ratio": ...}, ...]}``, e.g. from :func:`drift_curve`.
        x: the key of the horizontal axis.
        y: the key of the solid curves.
        y2: the key of the dashed curves on the right axis (``None``: no right axis); points without it are
            skipped.
        colors: ``{label: matplotlib color}``.
        ax: an axes to draw into (default: a new figure).
        title: the panel's title.
        xlabel: label of the horizontal axis.
        ylabel: label of the left axis.
        y2label: label of the right axis.

    Returns:
        The :class:`matplotlib.figure.Figure` that holds the axes.

    Example:
        >>> import torchinvariance as ti
        >>> curves = {"DA": [{"beta": 0.0, "di": 0.1, "acc_ratio": 1.0}, {"beta": 0.5, "di": 0.9, "acc_ratio": 0.5}],
        ...           "WT": [{"beta": 0.0, "di": 0.0, "acc_ratio": 1.0}, {"beta": 0.5, "di": 0.0, "acc_ratio": 0.6}]}
        >>> fig = ti.plot.drift(curves)
        >>> len(fig.axes)  # the DI axis and its twin for the accuracy ratio
        2
    """
    if ax is None:
        _, axes = _mpl.new_figure(1, 1, figsize=(5.5, 3.8))
        ax = axes[0, 0]
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:olive", "tab:orange", "tab:gray"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    ax2 = ax.twinx() if y2 is not None else None
    for k, (label, points) in enumerate(curves.items()):
        color = (colors or {}).get(label, palette[k % len(palette)])
        pts = [p for p in points if y in p]
        # curves that coincide (two exactly invariant models at 0) stay visible: each later curve is drawn thinner
        # and smaller, on top, with its own marker
        ax.plot(
            [p[x] for p in pts],
            [p[y] for p in pts],
            "-",
            marker=markers[k % len(markers)],
            ms=max(2.5, 6.5 - 1.5 * k),
            lw=max(1.0, 3.0 - 0.8 * k),
            zorder=2 + k,
            color=color,
            label=f"{label} {y.upper()}",
        )
        if ax2 is not None:
            pts2 = [p for p in points if y2 in p and math.isfinite(p[y2])]
            if pts2:
                ax2.plot([p[x] for p in pts2], [p[y2] for p in pts2], "--", color=color, label=f"{label} acc")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel(y2label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:  # below the panel, outside the data
        ax.legend(
            handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=max(1, len(curves))
        )
    if title:
        ax.set_title(title)
    return ax.figure


def metric_vs_element(
    reports: InvarianceReport | Mapping[str, InvarianceReport],
    metric: str = "li",
    *,
    floor: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    r"""A metric against the group element of a continuous group: the curve of LI (or DI, SI...) over the angle.

    .. math::
        g \mapsto \frac1N \sum_{b=1}^N d_g(x_b)

    the ``per_element`` values of :func:`~torchinvariance.evaluate_invariance` reports measured with ``elements=``
    (a list of angles, or ``k`` drawn with a seed) on ``so2`` or ``scale``. Each report is one curve (a mapping
    ``{label: report}`` puts several models on one axes: regularized against not, a checkpoint against another);
    the first report's interpolation floor, the same metric on the round trip :math:`g^{-1} (g x_b)`, is the dashed
    grey curve (``floor=False`` hides it), and its mean the dotted line. An invariant model sits on its floor at
    every angle; a model that learned the rotations of a square grid only dips at multiples of 90 degrees.

    Args:
        reports: one report, or ``{label: report}``.
        metric: the metric to draw (``"li"``, ``"di"``, ``"si"``, ``"accuracy"``, ``"consistency"``).
        floor: draw the interpolation floor where the report has one.
        ax: a matplotlib axes to draw into; default a new figure.
        title: the axes title (default the metric's name).

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        ValueError: a report of a finite group (no element values: use ``report.plot()``), or without ``metric``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> data = [torch.randn(4, 1, 8, 8)]
        >>> report = ti.evaluate_invariance(model, ti.get_group("so2"), data, metrics=("li",), elements=8,
        ...                                 progress=False)
        >>> fig = ti.plot.metric_vs_element(report, "li")  # save it with fig.savefig("li_vs_angle.png")
        >>> ax = fig.axes[0]
        >>> ax.get_xlabel(), [line.get_label() for line in ax.get_lines()]  # doctest: +ELLIPSIS
        ('rotation angle (degrees)', ['model', 'mean ...', 'interpolation floor'])
    """
    named = dict(reports) if isinstance(reports, Mapping) else {"model": reports}
    for label, report in named.items():
        if not isinstance(report, InvarianceReport):
            raise TypeError(f"metric_vs_element draws InvarianceReports; {label!r} is a {type(report).__name__}")
    if ax is None:
        _, axes = _mpl.new_figure(1, 1, figsize=(5.2, 3.6))
        ax = axes[0, 0]
    curve_panel(ax, named, metric, floor=floor)
    if title:
        ax.set_title(title)
    return ax.figure


def _mean_std(value: Any, x: Tensor | None) -> tuple[float, float]:
    if isinstance(value, Mapping):
        return float(value["mean"]), float(value.get("std", 0.0))
    if isinstance(value, torch.nn.Module) or (callable(value) and not isinstance(value, Tensor)):
        if x is None:
            raise ValueError("spectral() got a model: pass x= to measure its input-Jacobian spectral norm on")
        value = jacobian_spectral_norm(value, x)
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("spectral() got an empty sequence of values")
    return float(t.mean()), float(t.std(unbiased=False)) if t.numel() > 1 else 0.0


def spectral(
    values: Mapping[str, Any],
    x: Tensor | None = None,
    *,
    colors: Mapping[str, str] | None = None,
    ax: Any = None,
    title: str | None = None,
    ylabel: str = r"$\sigma_{\max}(J)$",
) -> Any:
    r"""The paper's Figure 5: the spectral norm of the input Jacobian per model, mean and std over samples.

    .. math::
        \sigma_{\max}\big(\partial f(x) / \partial x\big)

    measured by :func:`~torchinvariance.jacobian_spectral_norm`. Invariance regularization lowers it (the paper's
    invariance-induced spectral decay).

    Args:
        values: ``{label: v}`` with ``v`` a model (measured on ``x``), per-sample values (a tensor or sequence), a
            single number, or ``{"mean": ..., "std": ...}``.
        x: the inputs to measure models on.
        colors: ``{label: matplotlib color}``.
        ax: an axes to draw into (default: a new figure).
        title: the panel's title.
        ylabel: label of the vertical axis.

    Returns:
        The :class:`matplotlib.figure.Figure` that holds the axes.

    Example:
        >>> import torch, torchinvariance as ti
        >>> small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> fig = ti.plot.spectral({"model": small, "reported": {"mean": 1.0, "std": 0.1}}, x=torch.randn(4, 1, 4, 4))
        >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ['model', 'reported']
    """
    if not values:
        raise ValueError("spectral() needs at least one value to draw")
    stats = {label: _mean_std(v, x) for label, v in values.items()}
    if ax is None:
        _, axes = _mpl.new_figure(1, 1, figsize=(max(3.5, 1.1 * len(stats) + 1), 3.5))
        ax = axes[0, 0]
    palette = ["tab:red", "tab:purple", "tab:green", "tab:olive", "tab:blue", "tab:orange"]
    labels = list(stats)
    stds = [stats[k][1] for k in labels]
    ax.bar(
        range(len(labels)),
        [stats[k][0] for k in labels],
        # error bars only where there is a spread: a single value (one seed) has none to draw
        yerr=stds if any(v > 0 for v in stds) else None,
        color=[(colors or {}).get(k, palette[i % len(palette)]) for i, k in enumerate(labels)],
        capsize=3,
    )
    ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax.figure


def symmetry_spectrum(
    spectra: SymmetrySpectrum | Mapping[str, SymmetrySpectrum],
    *,
    relative: bool = False,
    log: bool | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    r"""A bar chart of the LieGG symmetry spectrum: the six singular values, the most invariant generator first.

    .. math::
        s_i = \sigma_i\big(C / \sqrt{BK}\big), \qquad s_1 \le \dots \le s_6

    the root mean square Lie derivative of the model along each candidate generator (its "symmetry variance",
    :func:`~torchinvariance.discover_symmetries`): a small bar is a direction the model is nearly invariant along.
    One spectrum gets one bar per generator, labelled by the nearest of rotation, scaling and shift
    (:meth:`~torchinvariance.SymmetrySpectrum.nearest`) and its distance ``d`` (0: that generator exactly, at most
    :math:`\sqrt 2`); ``{label: spectrum}`` puts several models side by side per generator, the legend (below the
    panel) naming each model's most invariant generator.

    Args:
        spectra: a :class:`~torchinvariance.SymmetrySpectrum`, or ``{label: spectrum}``.
        relative: divide each spectrum by its largest singular value (compares models whose outputs differ in
            scale).
        log: a logarithmic axis; ``None`` (default): when every value is positive (an exact invariance is 0).
        ax: an axes to draw into (default: a new figure, 600 pixels wide at 100 dpi).
        title: the panel's title.

    Returns:
        The :class:`matplotlib.figure.Figure` that holds the axes.

    Raises:
        TypeError: ``spectra`` is not a spectrum or a non-empty mapping of them; ``relative``/``log`` not bools.
        ValueError: ``log=True`` with a zero singular value.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> spectrum = ti.discover_symmetries(model, torch.randn(4, 1, 8, 8))
        >>> fig = ti.plot.symmetry_spectrum(spectrum)  # or spectrum.plot(); fig.savefig("spectrum.png")
        >>> ax = fig.axes[0]
        >>> len(ax.patches), ax.get_xticklabels()[0].get_text().split("\n")[0]
        (6, 's1')
        >>> fig = ti.plot.symmetry_spectrum({"A": spectrum, "B": spectrum}, relative=True)
        >>> len(fig.axes[0].patches), len(fig.axes[0].get_legend().get_texts())
        (12, 2)
    """
    return draw_spectrum(spectra, relative=relative, log=log, ax=ax, title=title)


def flip_histogram(
    flips: FlipResult | Mapping[str, FlipResult],
    *,
    bins: int | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    r"""A histogram of the smallest change of each sample's prediction (:func:`~torchinvariance.smallest_flip`).

    .. math::
        t^*_b = \pm \min \bigl\{ |t| \le t_{\max} : \arg\max f(g(t) \cdot x_b) \ne \arg\max f(x_b) \bigr\}

    drawn as :attr:`~torchinvariance.FlipResult.signed`: the signed angle in degrees for ``so2`` (``bins`` bins
    over :math:`[-t_{\max}, t_{\max}]`, default 36), the scale factor on a logarithmic axis for ``scale``
    (default 32 bins), and one bar per signed step :math:`\pm k` (the element :math:`g^{\pm k}`) for a cyclic
    group. The samples whose prediction never changes within the searched range are not in the histogram: the
    legend (below the panel) counts them, ``"12 of 16 flip, 4 never"``. ``{label: result}`` overlays several
    models (translucent, outlined; bars side by side for a cyclic group); all must be of one unit.

    Args:
        flips: a :class:`~torchinvariance.FlipResult`, or ``{label: result}``.
        bins: the number of bins of a continuous group (ignored for a cyclic one).
        ax: an axes to draw into (default: a new figure, 600 pixels wide at 100 dpi).
        title: the panel's title (default: the range searched).

    Returns:
        The :class:`matplotlib.figure.Figure` that holds the axes.

    Raises:
        TypeError: ``flips`` is not a result or a non-empty mapping of them.
        ValueError: results of different units, a bad ``bins``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> flips = ti.smallest_flip(model, ti.get_group("rotation", order=4), torch.randn(16, 1, 8, 8))
        >>> fig = ti.plot.flip_histogram(flips)  # or flips.plot(); fig.savefig("flips.png")
        >>> ax = fig.axes[0]
        >>> len(ax.patches), [t.get_text() for t in ax.get_xticklabels()]  # steps -2, -1, +1, +2
        (4, ['-2', '-1', '+1', '+2'])
        >>> int(sum(p.get_height() for p in ax.patches)) == int(flips.flipped.sum())
        True
    """
    return draw_flips(flips, bins=bins, ax=ax, title=title)
