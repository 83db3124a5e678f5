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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
        ValueError: bad shapes, no elements for a continuous group, an output that is not ``(B, C)`` scores.

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
        clean = _logits(model_output(model(x), x.shape[0]), x.shape[0])
        out = orbit_forward(model, group, x, els, chunk_size=chunk_size)
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


def _predict(model: Callable[[Tensor], Any], x: Tensor) -> Tensor:
    return _logits(model_output(model(x), x.shape[0]), x.shape[0]).argmax(-1)


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
    ``direction`` is 0. For ``so2`` with ``mask="circle"``, give inputs that are zero outside the disk
    (:meth:`~torchinvariance.SO2.mask_input`): every non-identity rotation masks the corners.

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
        ValueError: bad ``max_magnitude``, ``steps`` or ``tol``, a bad batch, an output that is not scores.

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
    with measuring(model, eval_mode), torch.no_grad():
        pred = _predict(model, x)
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
        preds = orbit_forward(model, group, x, els, chunk_size=chunk_size).argmax(-1).cpu()  # (2 t_max, B)
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
        preds = orbit_forward(model, group, x, els, chunk_size=chunk_size).argmax(-1).cpu()  # (steps, B)
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
