r"""How far can a transformation push the model? The worst element of a group, and the smallest flipping one.

:func:`worst_case` is the worst-of-k evaluation of spatial attacks: a sample counts as correct only if the model
classifies every transformed copy of it correctly (every element of a finite group, or a grid of a continuous one).
:func:`smallest_flip` finds, per sample, the smallest rotation angle, scale change or cyclic shift that changes the
top-1 prediction (in the spirit of captum's ``MinParamPerturbation``), by a grid scan and then bisection.

Both send the orbits through :func:`~torchinvariance.orbit_forward` and measure in eval mode
(:func:`~torchinvariance.orbit.measuring`); they know nothing of losses or metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import torchinvariance._mpl as _mpl
from torchinvariance._checks import check_model
from torchinvariance.groups import SO2, CyclicGroup, Group, Scale, ensure_group
from torchinvariance.orbit import check_batch, measuring, model_output, orbit_forward, resolve_elements

__all__ = ["FlipResult", "WorstCaseResult", "smallest_flip", "worst_case"]


def _margins(logits: Tensor, y: Tensor) -> Tensor:
    """``logits[..., y] - max_{c != y} logits[..., c]`` in float64, for logits ``(..., B, C)``."""
    out = logits.to(torch.float64)
    idx = y.expand(out.shape[:-1]).unsqueeze(-1)
    true = out.gather(-1, idx).squeeze(-1)
    other = out.scatter(-1, idx, -math.inf).amax(-1)
    return true - other


@dataclass(frozen=True)
class WorstCaseResult:
    """What :func:`worst_case` measured on a batch of ``B`` samples and ``n`` elements.

    Attributes:
        elements: the ``n`` elements, checked, in the order of the rows below.
        correct: ``(n, B)`` bool, the top-1 prediction on ``g_i · x_b`` is ``y_b``.
        margins: ``(n, B)`` float64, the output of the true class minus the largest other one (negative: wrong).
        clean_correct: ``(B,)`` bool, the prediction on the untransformed ``x_b`` is ``y_b``.
        robust: ``(B,)`` bool, correct under every element (worst-of-k correct).
        worst_index: ``(B,)`` long, the row of the element with the smallest margin (the first one on ties).
        worst_element: the element ``elements[worst_index[b]]`` for each sample.
    """

    elements: list
    correct: Tensor
    margins: Tensor
    clean_correct: Tensor
    robust: Tensor
    worst_index: Tensor
    worst_element: list

    @property
    def accuracy(self) -> float:
        """The clean accuracy, on the untransformed inputs."""
        return self.clean_correct.double().mean().item()

    @property
    def worst_case_accuracy(self) -> float:
        """The fraction of samples correct under every element."""
        return self.robust.double().mean().item()

    @property
    def element_accuracy(self) -> Tensor:
        """``(n,)`` float64, the accuracy under each element."""
        return self.correct.double().mean(1)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (for JSON reports)."""
        return {
            "accuracy": self.accuracy,
            "worst_case_accuracy": self.worst_case_accuracy,
            "elements": list(self.elements),
            "element_accuracy": self.element_accuracy.tolist(),
        }

    @classmethod
    def cat(cls, results: Sequence[WorstCaseResult]) -> WorstCaseResult:
        """The results of several batches measured on the same elements, as one result over all their samples.

        Example:
            >>> import torch, torchinvariance as ti
            >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
            >>> rot, x, y = ti.get_group("rotation", order=4), torch.randn(6, 1, 4, 4), torch.randint(3, (6,))
            >>> parts = [ti.worst_case(model, rot, x[:4], y[:4]), ti.worst_case(model, rot, x[4:], y[4:])]
            >>> ti.WorstCaseResult.cat(parts).robust.equal(ti.worst_case(model, rot, x, y).robust)
            True
        """
        parts = list(results)
        if not parts or not all(isinstance(r, WorstCaseResult) for r in parts):
            raise TypeError(
                f"cat needs a non-empty sequence of WorstCaseResult; got {[type(r).__name__ for r in parts]}"
            )
        if any(len(r.elements) != len(parts[0].elements) or r.elements != parts[0].elements for r in parts):
            raise ValueError("cat needs results measured on the same elements")
        return cls(
            elements=list(parts[0].elements),
            correct=torch.cat([r.correct for r in parts], 1),
            margins=torch.cat([r.margins for r in parts], 1),
            clean_correct=torch.cat([r.clean_correct for r in parts]),
            robust=torch.cat([r.robust for r in parts]),
            worst_index=torch.cat([r.worst_index for r in parts]),
            worst_element=[e for r in parts for e in r.worst_element],
        )


def _check_labels(y: Any, x: Tensor) -> Tensor:
    if not isinstance(y, Tensor) or y.dtype in (torch.bool,) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must be a tensor of integer class labels (B,), got {getattr(y, 'dtype', type(y))}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), one label per sample; got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def _logits(out: Tensor, rows: int) -> Tensor:
    if out.dim() != 2:
        raise ValueError(f"the model must return class scores (B, C); got an output of shape {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ValueError(f"need at least 2 classes to change a prediction; got an output of shape {tuple(out.shape)}")
    return out


def _check_finite(out: Tensor, what: str) -> None:
    """Raise where the scores hold NaN or +inf: their argmax is no prediction (``-inf``, a masked class, is fine)."""
    if not out.is_floating_point():
        return
    bad = torch.isnan(out) | (out == math.inf)
    if bool(bad.any()):
        n = int(bad.flatten(0, -2).any(-1).sum()) if out.dim() > 1 else int(bad.sum())
        raise ValueError(
            f"the model returned NaN or +inf scores on {what} ({n} of {out.flatten(0, -2).shape[0]} rows): a "
            "prediction, a margin or a flip cannot be read from them. Check the model and the inputs"
        )


def _check_label_range(y: Tensor, classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = y[(y < 0) | (y >= classes)].unique().tolist()
        raise ValueError(
            f"y must hold class labels in 0..{classes - 1} (the model returns {classes} scores per sample); "
            f"got labels {bad}"
        )


def worst_case(
    model: Callable[[Tensor], Any],
    group: Group,
    x: Tensor,
    y: Tensor,
    elements: Sequence | None = None,
    *,
    chunk_size: int | None = None,
    eval_mode: bool = True,
) -> WorstCaseResult:
    r"""Worst-of-k accuracy: is each sample classified correctly under every element?

    With the margins :math:`m_{ib} = f(g_i x_b)_{y_b} - \max_{c \ne y_b} f(g_i x_b)_c`,

    .. math::
        \text{robust}_b = \bigwedge_i \bigl[\arg\max_c f(g_i x_b)_c = y_b\bigr], \qquad
        \text{worst}_b = \arg\min_i m_{ib}, \qquad
        \text{worst-case accuracy} = \frac1B \sum_b \text{robust}_b .

    Args:
        model: a classifier mapping ``(N, ...)`` to scores ``(N, C)`` (logits or probabilities).
        group: the group acting on ``x``.
        x: a non-empty batch ``(B, ...)``.
        y: ``(B,)`` integer labels.
        elements: the elements to try; default every element of a finite group (identity first). A continuous
            group needs a grid, e.g. ``range(0, 360, 5)`` for ``so2`` or ``[0.8, 0.9, 1.1, 1.25]`` for ``scale``.
            The clean accuracy is measured on ``x`` itself whether or not the identity is listed (for ``so2`` with
            ``mask="circle"``, give inputs that are zero outside the disk, as every non-identity angle masks them).
        chunk_size: at most this many elements per forward (:func:`~torchinvariance.orbit_forward`).
        eval_mode: measure in eval mode (default); ``False`` keeps the model's modes.

    Returns:
        A :class:`WorstCaseResult`: per element and sample correctness and margins, per sample robustness and
        worst element, and ``accuracy`` / ``worst_case_accuracy`` overall.

    Raises:
        TypeError: ``y`` is not an integer tensor, ``model`` is not callable.
        ValueError: bad shapes, no elements for a continuous group, an output that is not ``(B, C)`` scores,
            scores with NaN or ``+inf``, labels outside ``0..C-1``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.randn(64, 1, 4, 4)
        >>> y = model(x).argmax(1)  # every clean prediction is right
        >>> result = ti.worst_case(model, rot, x, y)
        >>> result.accuracy, result.worst_case_accuracy < 1.0
        (1.0, True)
        >>> ti.worst_case(ti.GroupAveraged(model, rot), rot, x, ti.GroupAveraged(model, rot)(x).argmax(1)).robust.all()
        tensor(True)
    """
    check_model(model)
    group = ensure_group(group)
    check_batch(group, x)
    y = _check_labels(y, x)
    els = resolve_elements(group, elements)
    with measuring(model, eval_mode), torch.no_grad():
        clean = model_output(model(x), x.shape[0])
        out = orbit_forward(model, group, x, els, chunk_size=chunk_size)
    return worst_of_outputs(els, clean, out, y)


def worst_of_outputs(elements: list, clean: Tensor, out: Tensor, y: Tensor) -> WorstCaseResult:
    """:func:`worst_case` from outputs measured before: ``clean`` ``(B, C)`` on ``x``, ``out`` ``(n, B, C)`` on
    the ``n`` elements (e.g. one orbit forward shared with other metrics).
    """
    els = list(elements)
    clean = _logits(clean, clean.shape[0])
    if out.dim() != 3 or out.shape[0] != len(els) or out.shape[1:] != clean.shape:
        raise ValueError(
            f"orbit outputs must be ({len(els)}, {', '.join(map(str, clean.shape))}); got {tuple(out.shape)}"
        )
    _check_finite(clean, "x")
    _check_finite(out, "the transformed inputs")
    _check_label_range(y, clean.shape[1])
    correct = out.argmax(-1) == y
    margins = _margins(out, y)
    worst = margins.argmin(0)
    robust = correct.all(0)
    return WorstCaseResult(
        elements=els,
        correct=correct,
        margins=margins,
        clean_correct=clean.argmax(-1) == y,
        robust=robust,
        worst_index=worst,
        worst_element=[els[int(i)] for i in worst],
    )


@dataclass(frozen=True)
class FlipResult:
    r"""What :func:`smallest_flip` found for a batch of ``B`` samples.

    Attributes:
        magnitude: ``(B,)`` float64, the smallest change that flips the top-1 prediction: degrees for ``so2``,
            :math:`|\ln s|` for ``scale``, steps ``k`` for a cyclic group; ``inf`` where nothing within
            ``max_magnitude`` flips it.
        element: ``(B,)`` float64, the flipping element (an angle in :math:`[0, 360)`, a factor, an index);
            ``nan`` where nothing flips.
        direction: ``(B,)`` long, ``+1`` (angle, factor or index up), ``-1`` (down), ``0`` where nothing flips.
        prediction: ``(B,)`` long, the top-1 prediction on ``x``.
        new_prediction: ``(B,)`` long, the prediction at ``element``; ``-1`` where nothing flips.
        unit: ``"degrees"``, ``"log-scale"`` or ``"steps"``.
        max_magnitude: the range that was searched, in ``unit``, in both directions.
        tol: the bisection tolerance, in ``unit`` (0 for a cyclic group: the scan is exact).
    """

    magnitude: Tensor
    element: Tensor
    direction: Tensor
    prediction: Tensor
    new_prediction: Tensor
    unit: str
    max_magnitude: float
    tol: float

    @property
    def flipped(self) -> Tensor:
        """``(B,)`` bool, some element within the range flips the prediction."""
        return torch.isfinite(self.magnitude)

    @property
    def signed(self) -> Tensor:
        r"""``(B,)`` float64, the flip as a signed parameter: ``direction * magnitude`` in degrees for ``so2``, the
        factor :math:`e^{\pm|\ln s|}` for ``scale``, ``±k`` steps for a cyclic group; ``nan`` where nothing flips.
        """
        t = self.direction.to(torch.float64) * self.magnitude
        if self.unit == "log-scale":
            t = t.exp()
        return torch.where(self.flipped, t, torch.full_like(t, math.nan))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary: the unit and range searched, how many samples flip, and the magnitudes' quantiles.

        ``{"unit", "max_magnitude", "tol", "n_samples", "flipped"`` (the share of samples that flip),
        ``"never"`` (how many do not), ``"median", "q10", "q90"`` (of the flipping samples' magnitudes; ``None``
        where none flips)``}``, plus ``"steps": {"1": share, ...}`` for a cyclic group.

        Example:
            >>> import math, torch, torchinvariance as ti
            >>> flips = ti.FlipResult(torch.tensor([1.0, 2.0, math.inf], dtype=torch.float64),
            ...                       torch.tensor([1.0, 6.0, math.nan], dtype=torch.float64),
            ...                       torch.tensor([1, -1, 0]), torch.tensor([0, 0, 1]), torch.tensor([1, 2, -1]),
            ...                       "steps", 4.0, 0.0)
            >>> d = flips.to_dict()
            >>> d["never"], round(d["flipped"], 3), d["steps"]
            (1, 0.667, {'1': 0.3333333333333333, '2': 0.3333333333333333, '3': 0.0, '4': 0.0})
        """
        mag = self.magnitude.to(torch.float64)
        hit = mag[torch.isfinite(mag)]
        n = int(mag.numel())

        def q(p: float) -> float | None:
            return float(torch.quantile(hit, p)) if hit.numel() else None

        out: dict[str, Any] = {
            "unit": self.unit,
            "max_magnitude": float(self.max_magnitude),
            "tol": float(self.tol),
            "n_samples": n,
            "flipped": float(hit.numel() / n) if n else 0.0,
            "never": n - int(hit.numel()),
            "median": q(0.5),
            "q10": q(0.1),
            "q90": q(0.9),
        }
        if self.unit == "steps":
            out["steps"] = {str(k): float((mag == k).sum()) / n for k in range(1, int(self.max_magnitude) + 1)}
        return out

    @classmethod
    def cat(cls, results: Sequence[FlipResult]) -> FlipResult:
        """The results of several batches searched alike, as one result over all their samples.

        Example:
            >>> import torch, torchinvariance as ti
            >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
            >>> rot, x = ti.get_group("rotation", order=4), torch.randn(6, 1, 4, 4)
            >>> parts = [ti.smallest_flip(model, rot, x[:4]), ti.smallest_flip(model, rot, x[4:])]
            >>> ti.FlipResult.cat(parts).magnitude.equal(ti.smallest_flip(model, rot, x).magnitude)
            True
        """
        parts = list(results)
        if not parts or not all(isinstance(r, FlipResult) for r in parts):
            raise TypeError(f"cat needs a non-empty sequence of FlipResult; got {[type(r).__name__ for r in parts]}")
        first = parts[0]
        if any((r.unit, r.max_magnitude, r.tol) != (first.unit, first.max_magnitude, first.tol) for r in parts):
            raise ValueError("cat needs results searched alike (the same unit, max_magnitude and tol)")
        fields = ("magnitude", "element", "direction", "prediction", "new_prediction")
        cols = {f: torch.cat([getattr(r, f) for r in parts]) for f in fields}
        return cls(**cols, unit=first.unit, max_magnitude=first.max_magnitude, tol=first.tol)

    def plot(self, *, bins: int | None = None, ax: Any = None, title: str | None = None) -> Any:
        """A histogram of the smallest flipping parameter; the samples that never flip are counted in the legend.

        The same as :func:`torchinvariance.plot.flip_histogram` of this result (see there for the options); needs
        matplotlib (``pip install "torchinvariance[plot]"``).

        Returns:
            A :class:`matplotlib.figure.Figure`.
        """
        return draw_flips(self, bins=bins, ax=ax, title=title)


def check_flip_group(group: Group) -> None:
    """Raise the :class:`TypeError` of :func:`smallest_flip` for a group it cannot search."""
    _Path(group)


_AXES = {
    "degrees": "signed angle of the smallest flip (degrees)",
    "log-scale": "scale factor of the smallest flip",
    "steps": "signed steps k of the smallest flip (element g^k)",
}


def _nice_span(found: float, t_max: float, unit: str) -> float:
    """The smallest round range (degrees: 5, 10, 15, 30, 45, ...; log-scale: of a round factor) holding ``found``."""
    if unit == "degrees":
        for v in (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 135, 150, 180):
            if found <= v <= t_max:
                return float(v)
        return t_max
    for factor in (1.01, 1.02, 1.05, 1.1, 1.2, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0):
        if found <= math.log(factor) <= t_max:
            return math.log(factor)
    return t_max


def draw_flips(flips: Any, *, bins: int | None = None, ax: Any = None, title: str | None = None) -> Any:
    """Histograms of ``FlipResult.signed`` of one result or ``{label: result}`` (see ``plot.flip_histogram``)."""
    if isinstance(flips, FlipResult):
        named, single = {"model": flips}, True
    elif isinstance(flips, Mapping) and flips:
        named, single = dict(flips), False
        bad = {str(k): type(v).__name__ for k, v in named.items() if not isinstance(v, FlipResult)}
        if bad:
            raise TypeError(
                f"flip_histogram draws FlipResult results (ti.smallest_flip), one or {{label: result}}; got {bad}"
            )
    else:
        what = "an empty mapping" if isinstance(flips, Mapping) else type(flips).__name__
        raise TypeError(
            f"flip_histogram draws a FlipResult (ti.smallest_flip) or a non-empty {{label: FlipResult}}; got {what}"
        )
    units = {label: r.unit for label, r in named.items()}
    if len(set(units.values())) > 1:
        raise ValueError(f"flip_histogram overlays results of one unit (one kind of group); got {units}")
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 1):
        raise ValueError(f"bins must be a positive int or None; got {bins!r}")
    unit = next(iter(units.values()))
    t_max = max(float(r.max_magnitude) for r in named.values())
    if ax is None:
        _, axes = _mpl.new_figure(1, 1, figsize=(6.0, 3.6 + 0.18 * len(named)))
        ax = axes[0, 0]
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray", "tab:olive"]
    if unit == "steps":
        ks = [k for k in range(-int(t_max), int(t_max) + 1) if k != 0]
        width = 0.8 / len(named)
    else:
        import numpy as np

        nb = bins or (36 if unit == "degrees" else 32)
        # the bins span the flips found (a nice round range), not the whole search: the legend says what never flips
        found = [float(r.magnitude[r.flipped].max()) for r in named.values() if bool(r.flipped.any())]
        span = _nice_span(max(found), t_max, unit) if found else t_max
        edges = (
            np.linspace(-span, span, nb + 1)
            if unit == "degrees"
            else np.geomspace(math.exp(-span), math.exp(span), nb + 1)
        )
    most = 0  # the highest bar
    for i, (label, r) in enumerate(named.items()):
        color = palette[i % len(palette)]
        values = r.signed[r.flipped]
        never = int((~r.flipped).sum())
        text = f"{'' if single else label + ': '}{int(r.flipped.sum())} of {r.magnitude.numel()} flip, {never} never"
        if unit == "steps":
            counts = [int((values == k).sum()) for k in ks]
            most = max([most, *counts])
            ax.bar([j - 0.4 + width * (i + 0.5) for j in range(len(ks))], counts, width=width, color=color, label=text)
        else:
            counts, _ = np.histogram(values.numpy(), bins=edges)
            most = max(most, int(counts.max()))
            ax.stairs(counts, edges, fill=True, alpha=0.35 if len(named) > 1 else 0.8, color=color, label=text)
            if len(named) > 1:
                ax.stairs(counts, edges, color=color, linewidth=1.5)
    if unit == "steps":
        ax.set_xticks(range(len(ks)), [f"{k:+d}" for k in ks])
    elif unit == "degrees":
        step = 45 if span > 90 else 15 if span > 30 else 5 if span > 10 else 1 if span > 2 else span / 2
        n_ticks = round(span / step)
        ax.set_xticks([k * step for k in range(-n_ticks, n_ticks + 1)])
        ax.set_xlim(-span, span)
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle=":")
    else:
        ax.set_xscale("log")
        ax.set_xlim(math.exp(-span), math.exp(span))
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
        _mpl.plain_log_ticks(ax.xaxis)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of samples
    ax.set_ylim(0, max(most, 1) * 1.05)  # counts from 0; nothing flips: 0 to 1, not -0.05 to 0.05
    ax.set_xlabel(_AXES[unit])
    ax.set_ylabel("samples")
    reach = {
        "degrees": f"±{t_max:g} degrees",
        "log-scale": f"factors {math.exp(-t_max):.3g} to {math.exp(t_max):.3g}",
        "steps": f"±{int(t_max)} steps",
    }[unit]
    ax.set_title(title or f"smallest change of the prediction (searched {reach})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(named), 2), frameon=False)
    return ax.figure


class _Path:
    """A one-parameter path through a group: the element at signed magnitude ``t`` (``t = 0`` the identity)."""

    def __init__(self, group: Group) -> None:
        self.group = group
        if isinstance(group, SO2):
            self.unit, self.default_max, self.default_steps, self.default_tol = "degrees", 180.0, 36, 1e-3
        elif isinstance(group, Scale):
            self.unit, self.default_max, self.default_steps, self.default_tol = "log-scale", math.log(2.0), 32, 1e-4
        elif isinstance(group, CyclicGroup):
            self.unit, self.default_max, self.default_steps, self.default_tol = "steps", group.order // 2, 0, 0.0
        else:
            raise TypeError(
                f"smallest_flip needs a one-parameter group (so2, scale, or a cyclic group such as rotation or "
                f"translation); got {group!r}: use worst_case for its elements"
            )

    def element(self, t: float) -> Any:
        if self.unit == "degrees":
            return self.group.check_element(t)
        if self.unit == "log-scale":
            return math.exp(t)
        return int(t) % self.group.order


def _check_positive(name: str, value: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive {'int' if integer else 'number'}, got {value!r}")


def _predict(model: Callable[[Tensor], Any], x: Tensor, what: str = "the transformed inputs") -> Tensor:
    out = _logits(model_output(model(x), x.shape[0]), x.shape[0])
    _check_finite(out, what)
    return out.argmax(-1)


def _orbit_predictions(model, group, x, els, chunk_size) -> Tensor:
    """The top-1 predictions ``(n, B)`` on the ``n`` elements, on the CPU, from finite scores."""
    out = orbit_forward(model, group, x, els, chunk_size=chunk_size)
    _check_finite(out, "the transformed inputs")
    return out.argmax(-1).cpu()


def smallest_flip(
    model: Callable[[Tensor], Any],
    group: Group,
    x: Tensor,
    *,
    max_magnitude: float | None = None,
    steps: int | None = None,
    tol: float | None = None,
    chunk_size: int | None = None,
    eval_mode: bool = True,
) -> FlipResult:
    r"""The smallest rotation, scale change or shift that changes each sample's top-1 prediction.

    Along the group's one-parameter path :math:`g(t)` (``so2``: :math:`t` degrees; ``scale``: the factor
    :math:`e^{t}`; a cyclic group: the element :math:`t \bmod n`), searched in both directions,

    .. math::
        t^*_b = \min \bigl\{ |t| \le t_{\max} : \arg\max_c f(g(t) \cdot x_b)_c \ne \arg\max_c f(x_b)_c \bigr\}.

    A continuous group is scanned on ``steps`` equally spaced magnitudes per direction; in the first grid interval
    where the prediction differs, bisection narrows the change down until the interval is shorter than ``tol``, and
    the flipping end is returned (so :math:`t^*` is found within ``tol``, unless a flip region narrower than the
    grid spacing lies before the first flipping grid point). A cyclic group is scanned exactly, element by element.
    Where nothing flips within ``max_magnitude``, ``magnitude`` is ``inf``, ``element`` is ``nan`` and
    ``direction`` is 0. For ``so2`` with ``mask="circle"`` every non-identity rotation zeroes the corners, so a
    turn by :math:`10^{-4}` degrees would already change an input with anything outside the disk and "flip" at
    :math:`t \to 0`: the inputs are masked to the disk first (:meth:`~torchinvariance.SO2.mask_input`, which
    leaves inputs that are zero there as they are), and the prediction compared against is that of the masked input.

    Args:
        model: a classifier mapping ``(N, ...)`` to scores ``(N, C)``.
        group: ``so2`` (:class:`~torchinvariance.SO2`), ``scale`` (:class:`~torchinvariance.Scale`) or a
            :class:`~torchinvariance.CyclicGroup` (``rotation``, ``translation``, ``flip``).
        x: a non-empty batch ``(B, ...)``.
        max_magnitude: the range searched in each direction: default 180 degrees, :math:`\ln 2` (factors 1/2 to 2),
            half the order of a cyclic group.
        steps: grid points per direction for a continuous group (default 36 for ``so2``, 32 for ``scale``).
        tol: the bisection tolerance in the unit of the magnitude (default 1e-3 degrees, 1e-4 in log-scale).
        chunk_size: at most this many grid elements per forward of the scan.
        eval_mode: measure in eval mode (default); ``False`` keeps the model's modes.

    Returns:
        A :class:`FlipResult` with per-sample ``magnitude``, ``element``, ``direction`` and predictions.

    Raises:
        TypeError: a group that is not one of these, ``model`` not callable.
        ValueError: bad ``max_magnitude``, ``steps`` or ``tol``, a bad batch, an output that is not scores,
            scores with NaN or ``+inf``.

    Example:
        A linear ramp at 10 degrees from the :math:`u` axis, and a model that tells whether it points closer to
        :math:`u` or to :math:`v`: the prediction flips when the ramp is turned 35 degrees towards :math:`v`
        (clockwise on screen, where :math:`v` points down), and bilinear resampling keeps a ramp exact:

        >>> import math, torch, torchinvariance as ti
        >>> u, v = ti.symmetry.affine_coordinates(12, 12)
        >>> inner = u**2 + v**2 < 0.6
        >>> model = lambda x: torch.stack([(x * u * inner).sum((-2, -1)), (x * v * inner).sum((-2, -1))], -1)
        >>> x = (math.cos(math.radians(10)) * u + math.sin(math.radians(10)) * v)[None]
        >>> result = ti.smallest_flip(model, ti.get_group("so2"), x)
        >>> round(result.magnitude.item(), 2), round(result.element.item(), 2), result.direction.item()
        (35.0, 325.0, -1)
    """
    check_model(model)
    group = ensure_group(group)
    check_batch(group, x)
    path = _Path(group)
    t_max = path.default_max if max_magnitude is None else max_magnitude
    _check_positive("max_magnitude", t_max, integer=path.unit == "steps")
    if isinstance(group, SO2) and group.mask == "circle":
        x = group.mask_input(x)  # else the mask itself, not the rotation, would flip predictions at t -> 0
    with measuring(model, eval_mode), torch.no_grad():
        pred = _predict(model, x, "x")
        if path.unit == "steps":
            return _scan_cyclic(model, group, path, x, pred, min(int(t_max), group.order - 1), chunk_size)
        n = path.default_steps if steps is None else steps
        _check_positive("steps", n, integer=True)
        eps = path.default_tol if tol is None else tol
        _check_positive("tol", eps)
        return _scan_continuous(model, group, path, x, pred, float(t_max), n, float(eps), chunk_size)


def _scan_cyclic(model, group, path, x, pred, t_max, chunk_size) -> FlipResult:
    b = x.shape[0]
    mag = torch.full((b,), math.inf, dtype=torch.float64)
    elem = torch.full((b,), math.nan, dtype=torch.float64)
    direction = torch.zeros(b, dtype=torch.long)
    new = torch.full((b,), -1, dtype=torch.long)
    if t_max >= 1:
        ks = [k * s for k in range(1, t_max + 1) for s in (1, -1)]  # magnitude first, +1 before -1 on ties
        els = [path.element(k) for k in ks]
        preds = _orbit_predictions(model, group, x, els, chunk_size)  # (2 t_max, B)
        flips = preds != pred.cpu()
        for row, k in enumerate(ks):
            hit = flips[row] & torch.isinf(mag)
            mag[hit], elem[hit] = float(abs(k)), float(els[row])
            direction[hit], new[hit] = 1 if k > 0 else -1, preds[row, hit]
    return FlipResult(mag, elem, direction, pred.cpu(), new, path.unit, float(t_max), 0.0)


def _scan_continuous(model, group, path, x, pred, t_max, steps, tol, chunk_size) -> FlipResult:
    b = x.shape[0]
    grid = [t_max * k / steps for k in range(1, steps + 1)]
    best = torch.full((b,), math.inf, dtype=torch.float64)
    elem = torch.full((b,), math.nan, dtype=torch.float64)
    direction = torch.zeros(b, dtype=torch.long)
    new = torch.full((b,), -1, dtype=torch.long)
    pred_cpu = pred.cpu()
    for sign in (1, -1):
        els = [path.element(sign * t) for t in grid]
        preds = _orbit_predictions(model, group, x, els, chunk_size)  # (steps, B)
        flips = preds != pred_cpu
        any_flip = flips.any(0)
        first = flips.double().argmax(0)  # first flipping grid point (0 where none: masked by any_flip)
        idx = any_flip.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        hi = torch.tensor([grid[int(first[i])] for i in idx], dtype=torch.float64)
        lo = hi - t_max / steps
        hi_pred = preds[first[idx], idx]
        xs, ref = x[idx], pred_cpu[idx]
        while float((hi - lo).max()) > tol:
            mid = (lo + hi) / 2
            p = _predict(model, group.act_per_sample([path.element(sign * t) for t in mid.tolist()], xs)).cpu()
            flip = p != ref
            hi = torch.where(flip, mid, hi)
            hi_pred = torch.where(flip, p, hi_pred)
            lo = torch.where(flip, lo, mid)
        better = hi < best[idx]  # the + direction wins ties: it comes first
        sel = idx[better]
        best[sel] = hi[better]
        elem[sel] = torch.tensor([float(path.element(sign * t)) for t in hi[better].tolist()], dtype=torch.float64)
        direction[sel] = sign
        new[sel] = hi_pred[better]
    return FlipResult(best, elem, direction, pred_cpu, new, path.unit, t_max, tol)
