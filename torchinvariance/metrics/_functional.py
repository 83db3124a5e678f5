r"""Predictive-distribution and logit invariance, DI and LI, as pure functions (paper §3.2, eqs. 1-2).

Every metric evaluates the whole orbit :math:`\{g x : g \in \mathcal{G}\}` of a
batch in one batched call (:func:`~torchinvariance.orbit_forward`) and returns,
with ``reduction="none"``, a ``(group.order, batch)`` matrix whose row ``i``
belongs to the group element ``group.elements()[i]`` (identity first).
``"mean"`` averages over samples and the non-identity group elements
(``include_identity=True``: all of them, as :class:`~torchinvariance.InvarianceLoss`
normalises); ``"sum"`` adds the same terms up
(``metrics/_reduction.py``).

The arithmetic is split in the torchmetrics way: :func:`di_terms` and
:func:`li_terms` turn orbit outputs into terms, and both these functions and the
accumulating classes of :mod:`torchinvariance.metrics._classes` call them.
Saliency (SI) lives in :mod:`torchinvariance.metrics.saliency`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torchinvariance.divergences import Reduction, check_logits, check_reduction, orbit_divergence
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._reduction import averaged_rows, reduce_terms
from torchinvariance.orbit import check_batch, measuring, model_output, orbit_forward, resolve_elements

__all__ = [
    "di_terms",
    "distribution_invariance",
    "interpolation_floor",
    "li_terms",
    "logit_invariance",
    "orbit_outputs",
    "round_trip_outputs",
]


def _check_pair(fx: Tensor, fgx: Tensor) -> None:
    if not isinstance(fx, Tensor) or not isinstance(fgx, Tensor):
        raise TypeError(f"fx and fgx must be tensors, got {type(fx).__name__} and {type(fgx).__name__}")
    if fgx.dim() != fx.dim() + 1 or fgx.shape[1:] != fx.shape:
        raise ValueError(
            "fgx must hold the outputs on the orbit, shaped (n_elements, *fx.shape); got fx of shape "
            f"{tuple(fx.shape)} and fgx of shape {tuple(fgx.shape)}"
        )


def di_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""DI terms :math:`D_{KL}(\mathrm{softmax} f(x_b) \| \mathrm{softmax} f(g_i x_b))`, ``(n, B)``, never negative.

    Integer logits are taken as their float64 values (the softmax needs floats; exact up to :math:`2^{53}`).

    Args:
        fx: logits ``(B, C)``.
        fgx: logits on the orbit ``(n, B, C)``.
    """
    _check_pair(fx, fgx)
    check_logits(fx, "distribution invariance (DI)")
    if not (fx.is_floating_point() or fx.is_complex()):
        fx, fgx = fx.to(torch.float64), fgx.to(torch.float64)
    # KL is >= 0; rounding can give -1e-11 for identical distributions
    return orbit_divergence("kl", fx, fgx).clamp_min(0.0)


def li_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""LI terms :math:`\tfrac12 \lVert f(x_b) - f(g_i x_b) \rVert_2^2`, ``(n, B)``, in float64.

    The differences are taken in float64 before they are squared, whatever the outputs' dtype, so that large
    logits (:math:`10^{20}` in float32, whose squared difference overflows float32) give finite terms for the
    float64 states of :class:`~torchinvariance.LogitInvariance`.

    Args:
        fx: outputs ``(B, ...)``.
        fgx: outputs on the orbit ``(n, B, ...)``.

    Example:
        >>> import torch
        >>> from torchinvariance.metrics._functional import li_terms
        >>> fx = torch.tensor([[1e20, 0.0]])
        >>> li_terms(fx, torch.stack([fx, -fx]))
        tensor([[0.0000e+00],
                [2.0000e+40]], dtype=torch.float64)
    """
    _check_pair(fx, fgx)
    return orbit_divergence("l2", fx.to(torch.float64), fgx.to(torch.float64))


def _result_dtype(out: Tensor) -> torch.dtype:
    """The dtype the functions return a metric in: the outputs' floating dtype, float32 for half precision."""
    return out.dtype if out.is_floating_point() and out.dtype not in (torch.float16, torch.bfloat16) else torch.float32


def check_finite(out: Tensor, group: Group, what: str = "model output", elements: Sequence | None = None) -> None:
    r"""``out`` is ``(n, B, ...)`` over ``elements`` (default all); name the elements with NaN or +Inf values.

    ``-inf`` is allowed: it is how classifiers mask classes (DI treats :math:`0 \log 0` as 0).
    """
    flat = out.reshape(out.shape[0], -1)
    finite = ~(torch.isnan(flat) | (flat == float("inf"))).any(1)
    if not bool(finite.all()):
        els = list(group.elements()) if elements is None else list(elements)
        # dict.fromkeys: an element listed twice (the identity put before a list that has it) is named once
        bad = list(dict.fromkeys(group.element_name(g) for g, ok in zip(els, finite.tolist()) if not ok))
        raise ValueError(f"{what} contains NaN or +Inf on the orbit elements {bad} of {group!r}")


def orbit_outputs(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    *,
    eval_mode: bool = True,
    chunk_size: int | None = None,
    elements: Sequence | None = None,
) -> Tensor:
    """Model outputs on the orbit ``(n, B, ...)`` as a measurement, checked to be finite.

    The rows follow ``elements`` (default every element, identity first). The model runs in eval mode unless
    ``eval_mode=False`` and no buffer changes (:func:`~torchinvariance.orbit.measuring`); ``chunk_size`` bounds the
    number of group elements per forward.
    """
    with measuring(model, eval_mode):
        out = orbit_forward(model, group, x, elements, chunk_size=chunk_size)
    check_finite(out, group, elements=elements)
    return out


def _pair(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    elements: Sequence | None,
    eval_mode: bool,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """``f(x)`` and the outputs on the requested elements (all of a finite group by default) in one forward."""
    ensure_group(group)
    els = resolve_elements(group, elements)
    if elements is None:  # the whole orbit, identity first: f(x) is its first row
        out = orbit_outputs(model, group, x, eval_mode=eval_mode, chunk_size=chunk_size)
        return out[0], out
    els = [group.identity, *els]
    out = orbit_outputs(model, group, x, eval_mode=eval_mode, chunk_size=chunk_size, elements=els)
    return out[0], out[1:]


# ---------------------------------------------------------------------------- DI and LI
def distribution_invariance(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    reduction: Reduction = "mean",
    *,
    eval_mode: bool = True,
    chunk_size: int | None = None,
    elements: Sequence | None = None,
    include_identity: bool = False,
) -> Tensor:
    r"""Predictive distribution invariance error DI (paper eq. 1).

    .. math::
        DI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G} \setminus \{e\}}
        D_{KL}\big(u_{x_b} \,\|\, q_{g x_b}\big), \qquad
        u_x = \mathrm{softmax} f(x),\; q_{gx} = \mathrm{softmax} f(gx)

    with :math:`n` the number of non-identity elements: how much a
    non-trivial transformation changes the prediction, the paper's
    convention. ``include_identity=True`` averages over all elements instead
    (the identity's term is 0, so that mean is :math:`(n_{all}-1)/n_{all}`
    times this one). The
    whole orbit goes through ``model`` in one batched forward. The result
    keeps the autograd graph (for training use
    :class:`~torchinvariance.InvarianceLoss`); wrap the call in
    :func:`torch.no_grad` to only measure.

    Args:
        model: classifier returning logits ``(N, C)`` for inputs ``(N, ...)``.
        group: the finite group.
        x: batch ``(B, ...)`` the group can act on.
        reduction: ``"mean"`` (over samples and the averaged group
            elements), ``"sum"`` or ``"none"`` for the ``(group.order, B)``
            matrix of terms (row ``i`` is element ``group.elements()[i]``,
            identity included whatever ``include_identity`` says).
        eval_mode: run the model in ``eval()`` mode (default); ``False`` keeps
            its current modes, e.g. to measure in train mode. Either way the
            modes and every buffer (BatchNorm running statistics) are restored.
        chunk_size: at most this many group elements per forward, so peak
            memory is bounded by one chunk; ``None`` runs the whole orbit at once.
        elements: the elements to measure (rows of ``reduction="none"``, in
            this order); default every element of a finite group. Required for
            continuous groups (e.g. ``so2.sample(8)`` or a list of angles).
        include_identity: ``False`` (default): ``"mean"`` and ``"sum"`` run
            over the non-identity elements; ``True``: over all of them.

    Returns:
        Scalar for ``"mean"``/``"sum"``, ``(group.order, B)`` for ``"none"``.

    Raises:
        ValueError: bad ``reduction``, a group that cannot act on ``x``, model
            outputs that are not logits ``(N, C)`` or not finite.

    Example:
        >>> import torch, torchinvariance as ti
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> rot = ti.get_group("rotation", order=4)
        >>> x = torch.randn(5, 1, 4, 4)
        >>> ti.distribution_invariance(model, rot, x, reduction="none").shape
        torch.Size([4, 5])
        >>> bool(ti.distribution_invariance(model, rot, x) > 0)
        True
    """
    check_reduction(reduction)
    fx, fgx = _pair(model, group, x, elements, eval_mode, chunk_size)
    rows = averaged_rows(group, elements, include_identity)
    return reduce_terms(di_terms(fx, fgx), reduction, rows)


def logit_invariance(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    reduction: Reduction = "mean",
    *,
    eval_mode: bool = True,
    chunk_size: int | None = None,
    elements: Sequence | None = None,
    include_identity: bool = False,
) -> Tensor:
    r"""Logit invariance error LI (paper eq. 2).

    .. math::
        LI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G} \setminus \{e\}}
        \tfrac12 \big\lVert f(x_b) - f(g x_b) \big\rVert_2^2

    with :math:`n` the number of non-identity elements (the paper's
    convention; ``include_identity=True`` averages over all elements, the
    identity's term being 0). Any
    output shape ``(N, ...)`` works (the norm runs over all non-batch dims).
    The whole orbit goes through ``model`` in one batched forward; the result
    keeps the autograd graph. The differences, squares and sums are computed
    in float64 and the result is returned in the outputs' dtype (float32 for
    half precision): a value beyond that dtype's range is ``inf`` there; the
    accumulating :class:`~torchinvariance.LogitInvariance` with
    ``set_dtype(torch.float64)`` returns it finite.

    Args:
        model: module returning ``(N, ...)`` for inputs ``(N, ...)``.
        group: the finite group.
        x: batch ``(B, ...)`` the group can act on.
        reduction: ``"mean"`` (over samples and the averaged group
            elements), ``"sum"`` or ``"none"`` for the ``(group.order, B)``
            matrix of terms (every element).
        eval_mode: run the model in ``eval()`` mode (default); ``False`` keeps
            its current modes, e.g. to measure in train mode. Either way the
            modes and every buffer (BatchNorm running statistics) are restored.
        chunk_size: at most this many group elements per forward, so peak
            memory is bounded by one chunk; ``None`` runs the whole orbit at once.
        elements: the elements to measure (rows of ``reduction="none"``, in
            this order); default every element of a finite group. Required for
            continuous groups (e.g. ``so2.sample(8)`` or a list of angles).
        include_identity: ``False`` (default): ``"mean"`` and ``"sum"`` run
            over the non-identity elements; ``True``: over all of them.

    Returns:
        Scalar for ``"mean"``/``"sum"``, ``(group.order, B)`` for ``"none"``,
        in the outputs' dtype (float32 for half precision).

    Raises:
        ValueError: bad ``reduction``, a group that cannot act on ``x``,
            non-finite model outputs.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> flip = ti.get_group("flip", axis="x")
        >>> x = torch.ones(2, 1, 4, 4)  # flip-symmetric inputs
        >>> ti.logit_invariance(model, flip, x, reduction="none").tolist()
        [[0.0, 0.0], [0.0, 0.0]]
    """
    check_reduction(reduction)
    fx, fgx = _pair(model, group, x, elements, eval_mode, chunk_size)
    rows = averaged_rows(group, elements, include_identity)
    return reduce_terms(li_terms(fx, fgx), reduction, rows).to(_result_dtype(fx))


def round_trip_outputs(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    elements: Sequence,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""The model's outputs on the round trips, ``out[i, b] = f(g_i^{-1} \cdot (g_i \cdot x_b))``, ``(n, B, ...)``.

    What :func:`interpolation_floor` and the floor of :func:`~torchinvariance.evaluate_invariance` compare with
    :math:`f(x)`. One forward of ``n * B`` inputs (or one per ``chunk_size`` elements), in the model's current mode:
    the caller wraps it in :func:`~torchinvariance.orbit.measuring` and :func:`torch.no_grad`.
    """
    els = list(elements)
    step = len(els) if chunk_size is None else chunk_size
    parts = []
    for i in range(0, len(els), step):
        chunk = els[i : i + step]
        trips = torch.stack([group.act(group.inverse(g), group.act(g, x)) for g in chunk])  # (n, B, ...)
        out = model_output(model(trips.flatten(0, 1)), len(chunk) * x.shape[0])
        parts.append(out.reshape(len(chunk), x.shape[0], *out.shape[1:]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def interpolation_floor(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    elements: Sequence | None = None,
    metric: str = "li",
    reduction: Reduction = "mean",
    *,
    eval_mode: bool = True,
    include_identity: bool = False,
) -> Tensor:
    r"""The part of DI or LI that resampling alone explains: the metric of the round trip :math:`g^{-1} (g x)`.

    .. math::
        \text{floor}_g(x_b) = d\big(f(x_b),\; f(g^{-1} \cdot (g \cdot x_b))\big)

    with :math:`d` the term of DI (``metric="di"``) or LI (``"li"``). For an exact group the round trip is the
    identity and the floor is exactly 0 (returned without running the model). For an interpolating group (``so2``,
    ``scale``) it is the model's own response to resampling: a double resampling (there and back), so it is a
    scale for reading DI or LI, not a bound. It can exceed the metric (the metric resamples once), and a model that
    is sensitive to resampling has a large floor too: compare models by their metric, and use the floor to see how
    much of a small metric resampling alone could explain.

    Args:
        model: the model, as for :func:`distribution_invariance`.
        group: the group.
        x: batch ``(B, ...)``.
        elements: as for :func:`logit_invariance`.
        metric: ``"li"`` or ``"di"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(n, B)``).
        eval_mode: as for :func:`logit_invariance`.
        include_identity: as for :func:`logit_invariance`: ``"mean"`` and ``"sum"`` run over the non-identity
            elements by default, like the metric the floor is read against (the identity's floor is 0).

    Returns:
        Scalar for ``"mean"``/``"sum"``, ``(n, B)`` for ``"none"`` (detached: a reference value).

    Raises:
        ValueError: bad ``metric`` or ``reduction``, a batch the group cannot act on (also for an exact group, whose
            floor needs no forward), an empty element list or an element the group rejects, no ``elements`` for a
            continuous group.
        TypeError: ``x`` is not a tensor, ``elements`` is not a sequence.

    Example:
        >>> import torch, torchinvariance as ti
        >>> so2 = ti.get_group("so2")
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> x = so2.mask_input(torch.randn(4, 1, 8, 8))
        >>> floor = ti.interpolation_floor(model, so2, x, elements=[30.0, 45.0], reduction="none")
        >>> floor.shape, bool((floor >= 0).all())
        (torch.Size([2, 4]), True)
        >>> float(ti.interpolation_floor(model, ti.get_group("rotation", order=4), torch.randn(2, 1, 8, 8)))
        0.0
    """
    check_reduction(reduction)
    ensure_group(group)
    if metric not in ("li", "di"):
        raise ValueError(f"metric must be 'li' or 'di', got {metric!r}")
    check_batch(group, x)
    if elements is None and not group.is_finite:
        raise ValueError(f"{group!r} is continuous: pass elements= to measure its interpolation floor")
    els = resolve_elements(group, elements)  # the checks of the metrics: a sequence, not empty, each an element
    rows = averaged_rows(group, els, include_identity)
    if group.exact:  # the round trip is the identity, bit for bit: nothing to measure
        zeros = x.new_zeros((len(els), x.shape[0]), dtype=torch.float32 if not x.is_floating_point() else x.dtype)
        return reduce_terms(zeros, reduction, rows)
    with torch.no_grad(), measuring(model, eval_mode):
        fx = orbit_forward(model, group, x, [group.identity])[0]
        back = round_trip_outputs(model, group, x, els)
    terms = di_terms(fx, back) if metric == "di" else li_terms(fx, back)
    return reduce_terms(terms, reduction, rows).to(_result_dtype(fx))
