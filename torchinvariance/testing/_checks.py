r"""Test that a model is invariant or equivariant: the ``*_error`` functions measure, the ``assert_*`` decide.

They check EVERY element of the group (not a random subset), in one batched forward pass over the orbit, and can run
the comparison in float64 on a cast copy of the model. For groups that interpolate (``group.exact`` is ``False``)
they also measure the interpolation floor, the model's response to the round trip :math:`g^{-1} \cdot (g \cdot x)`,
and the assertions add each sample's floor to that sample's tolerance.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchinvariance._checks import check_model
from torchinvariance.actions import (
    OutputActionLike,
    OutputMask,
    output_disk,
    resolve_output_action,
    resolve_output_mask,
)
from torchinvariance.groups import Group, ensure_group
from torchinvariance.orbit import measuring, model_output, orbit_forward, resolve_elements

__all__ = ["DEFAULT_TOLERANCES", "assert_equivariant", "assert_invariant", "equivariance_error", "invariance_error"]

Reduction = Literal["max", "none"]
_REDUCTIONS = ("max", "none")

#: Default ``(atol, rtol)`` of :func:`assert_invariant`, keyed on the dtype the outputs are computed in.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
    torch.float32: (1e-6, 1e-5),
    torch.float64: (1e-12, 1e-10),
}


def _cast(model: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype | None) -> tuple[Callable, Tensor]:
    """A copy of ``model`` and ``x`` in ``dtype`` (the originals are left untouched)."""
    if dtype is None:
        return model, x
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float64 or None; got {dtype!r}")
    if x.is_floating_point():
        x = x.to(dtype)
    if isinstance(model, nn.Module):
        tensors = itertools.chain(model.parameters(), model.buffers())
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
            model = copy.deepcopy(model).to(dtype)
    return model, x


def _measure(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    elements: Sequence[int] | None,
    dtype: torch.dtype | None,
    eval_mode: bool = True,
    output_action: OutputActionLike | None = None,
    mask: OutputMask | None = None,
) -> tuple[Tensor, Tensor, list, torch.dtype, Tensor | None]:
    r"""Per-sample deviations ``(n, B)``, the scale ``max |f(x)|``, the elements, the output dtype and the floor.

    The floor ``(n, B)`` (``None`` for exact groups) is, per sample, :math:`\max_c |f(g^{-1} (g x_b))_c - f(x_b)_c|`
    and, for a non-trivial output action, the larger of that and the output's own round trip
    :math:`\max_c |(g^{-1} \cdot (g \cdot f(x_b)))_c - f(x_b)_c|`. With the disk mask every output compared (and the
    scale) is multiplied by the inscribed disk first.
    """
    ensure_group(group)
    check_model(model)
    if not isinstance(x, Tensor) or x.dim() <= group.event_ndim or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch (B, ...) with more than {group.event_ndim} dims for {group!r}; "
            f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    els = resolve_elements(group, elements)
    action = resolve_output_action(output_action, group)
    on_disk = resolve_output_mask(mask, group, action)
    model, x = _cast(model, x, dtype)
    batch = x.shape[0]
    with torch.no_grad(), measuring(model, eval_mode):  # one forward: x (as the identity), then every element
        try:
            out = orbit_forward(model, group, x, [group.identity, *els], output_action=action)
        except RuntimeError as error:
            if dtype is None or isinstance(model, nn.Module) or "dtype" not in str(error):
                raise
            raise TypeError(
                f"dtype={dtype} casts x and an nn.Module's parameters; the model here is a "
                f"{type(model).__name__}, whose weights cannot be cast, and it failed on {dtype} inputs ({error}). "
                "Pass the nn.Module itself, or dtype=None"
            ) from error
        rounds = []  # the round trips whose response is resampling alone
        if not group.exact:
            trips = torch.stack([group.act(group.inverse(g), group.act(g, x)) for g in els]).flatten(0, 1)
            back = model_output(model(trips), len(els) * batch)  # a dict's logits, like orbit_forward (22.15)
            rounds.append(back.reshape(len(els), batch, *back.shape[1:]))
            if not action.trivial:  # the output is resampled too: its own round trip g^-1 (g f(x))
                rounds.append(torch.stack([action(group.inverse(g), action(g, out[0])) for g in els]))
    if out.dtype == torch.bool:  # predicted flags: compare them as 0/1 (bool tensors cannot be subtracted)
        out, rounds = out.long(), [r.long() for r in rounds]
    if on_disk:
        disk = output_disk(out[0])
        out = out * disk
        rounds = [r * disk for r in rounds]
    out = out.reshape(len(els) + 1, batch, -1)
    ref = out[0]
    width = out.shape[-1]
    deviation = (out[1:] - ref).abs().amax(-1) if width else out.new_zeros(len(els), batch)
    floor = None
    if rounds:
        floor = out.new_zeros(len(els), batch)
        for r in rounds:
            if width:
                floor = torch.maximum(floor, (r.reshape(len(els), batch, -1) - ref).abs().amax(-1))
    scale = ref.abs().amax() if ref.numel() else ref.new_zeros(())
    return deviation, scale, els, out.dtype, floor


def _relative(deviation: Tensor, scale: Tensor) -> Tensor:
    """``deviation / max|f(x)|``; integer outputs (class indices) give float32 ratios."""
    if not deviation.is_floating_point():
        deviation, scale = deviation.float(), scale.float()
    return deviation / scale.clamp_min(torch.finfo(deviation.dtype).tiny)


def invariance_error(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    *,
    elements: Sequence[int] | None = None,
    relative: bool = False,
    dtype: torch.dtype | None = None,
    reduction: Reduction = "max",
    eval_mode: bool = True,
) -> Tensor:
    r"""The largest output deviation of ``model`` under each group element.

    .. math::
        e_g = \max_{b, c} \bigl| f(g \cdot x_b)_c - f(x_b)_c \bigr|, \qquad
        e_g^{\text{rel}} = e_g \,/\, \max_{b, c} |f(x_b)_c|

    for every element :math:`g` (identity included, first). ``f(x)`` and all the ``f(g x)`` are computed in one
    forward pass of ``(n + 1) * B`` samples under :func:`torch.no_grad`, with the model in ``eval()`` mode (dropout
    off, BatchNorm on its running statistics) unless ``eval_mode=False``; the model's modes and buffers are restored
    afterwards, so a check never changes the model.

    Args:
        model: maps a batch ``(N, ...)`` to outputs ``(N, ...)`` (e.g. logits).
        group: a finite :class:`~torchinvariance.groups.Group`.
        x: a batch ``(B, ...)`` the group can act on.
        elements: the elements to check; default every element of ``group``.
        relative: divide by the largest absolute output :math:`\max_{b,c} |f(x_b)_c|`.
        dtype: compute in this floating dtype on a cast copy of the model and input (e.g. ``torch.float64`` to see
            errors below float32 rounding); ``None`` uses the model and ``x`` as they are.
        reduction: ``"max"`` gives ``(n_elements,)``, the maximum over the batch; ``"none"`` gives
            ``(n_elements, B)``, the maximum over each sample's outputs.
        eval_mode: measure in ``eval()`` mode (default); ``False`` keeps the model's modes (train-mode BatchNorm then
            normalizes each forward with the statistics of the whole stacked batch).

    Returns:
        the errors, in the dtype of the outputs, ordered like ``elements`` (or ``group.elements()``).

    Example:
        >>> import torch, torchinvariance as ti
        >>> _ = torch.manual_seed(0)
        >>> rot = ti.get_group("rotation", order=4)
        >>> x = torch.randn(4, 1, 8, 8)
        >>> invariant = ti.GroupInvariantMLP(rot, in_shape=(1, 8, 8), num_classes=3, hidden=16)
        >>> err = ti.invariance_error(invariant, rot, x, dtype=torch.float64)
        >>> err.shape, err.dtype, bool(err.max() < 1e-12)
        (torch.Size([4]), torch.float64, True)
        >>> plain = ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=16)
        >>> err = ti.invariance_error(plain, rot, x, relative=True)
        >>> bool(err[0] < 1e-6), bool(err[1:].min() > 1e-3)  # the identity, then three real rotations
        (True, True)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    deviation, scale, _, _, _ = _measure(model, group, x, elements, dtype, eval_mode)
    if relative:
        deviation = _relative(deviation, scale)
    return deviation.amax(1) if reduction == "max" else deviation


def assert_invariant(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    atol: float | None = None,
    rtol: float | None = None,
    *,
    elements: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    eval_mode: bool = True,
) -> Tensor:
    r"""Assert that ``model`` is invariant to every element of ``group`` on the batch ``x``.

    Passes when, for every element :math:`g` and sample :math:`b`,

    .. math::
        \max_c \bigl| f(g \cdot x_b)_c - f(x_b)_c \bigr| \le \text{atol} + \text{rtol} \cdot \max_{b, c} |f(x_b)_c|
        + \text{floor}_{g, b}

    with :math:`\text{floor}_{g, b} = 0` for exact groups. For groups that interpolate (``group.exact`` is
    ``False``: ``so2``, ``scale``) it is the sample's interpolation floor :math:`\max_c |f(g^{-1} \cdot (g \cdot
    x_b))_c - f(x_b)_c|`, the model's response to resampling alone, compared per sample so that the most
    resampling-sensitive sample of the batch does not set the tolerance of the others. The check then only sees a
    deviation larger than that response: where the floor is more than half of the tolerance, a failure says so; for
    a strict test use exact elements (``so2`` at multiples of 90 degrees on inputs zero outside the disk, or the
    finite group ``rotation``).

    Default tolerances depend on the dtype the outputs are computed in (:data:`DEFAULT_TOLERANCES`): float32
    ``atol=1e-6, rtol=1e-5``; float64 ``atol=1e-12, rtol=1e-10``. When only one of ``atol``/``rtol`` is given, the
    other is 0 (``atol=1e-3`` alone means an absolute tolerance only), as in :func:`numpy.testing.assert_allclose`
    with both set explicitly; pass both to combine them. With ``dtype=torch.float64`` the check runs on a float64
    copy of the model and input, which resolves
    errors far below float32 rounding.

    Args:
        model: maps a batch ``(N, ...)`` to outputs ``(N, ...)``.
        group: a finite :class:`~torchinvariance.groups.Group`.
        x: a batch ``(B, ...)``.
        atol: absolute tolerance.
        rtol: tolerance relative to the largest absolute output.
        elements: the elements to check; default all of them.
        dtype: compute in this floating dtype on a cast copy (see :func:`invariance_error`).
        eval_mode: check in ``eval()`` mode (default); see :func:`invariance_error`.

    Returns:
        the per-element errors :math:`e_g` (see :func:`invariance_error`).

    Raises:
        AssertionError: some element exceeds the tolerance; the message names the worst element
            (:meth:`Group.element_name`), its error and the tolerance, and lists the error of every element.

    Example:
        >>> import torch, torchinvariance as ti
        >>> _ = torch.manual_seed(0)
        >>> rot = ti.get_group("rotation", order=4)
        >>> x = torch.randn(4, 1, 8, 8)
        >>> _ = ti.assert_invariant(ti.GroupInvariantMLP(rot, in_shape=(1, 8, 8), num_classes=3), rot, x)
        >>> ti.assert_invariant(ti.MLP(in_shape=(1, 8, 8), num_classes=3), rot, x)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        AssertionError: MLP is not invariant to Rotation(order=4): worst element 'rot...' has max |f(g x) - f(x)| = ...
    """
    measured = _measure(model, group, x, elements, dtype, eval_mode)
    return _decide(model, group, measured, atol, rtol, "invariant", "f(g x) - f(x)")


_FLOOR_TEXT = "max |f(g^-1 (g x)) - f(x)|, the model's response to resampling alone"


def _decide(
    model: Callable[[Tensor], Tensor],
    group: Group,
    measured: tuple[Tensor, Tensor, list, torch.dtype, Tensor | None],
    atol: float | None,
    rtol: float | None,
    what: str,
    formula: str,
    floor_text: str = _FLOOR_TEXT,
) -> Tensor:
    """Compare the errors with ``atol + rtol * max|f(x)|`` (+ each sample's interpolation floor); raise if above.

    With a floor the comparison is per sample: the floor of sample ``b`` explains the resampling part of sample
    ``b``'s error only, so the most resampling-sensitive sample of a batch does not set the tolerance of the others.
    """
    deviation, scale, els, out_dtype, floor = measured
    if not deviation.is_floating_point():  # integer or bool outputs: compare in float64 (inf marks NaN below)
        deviation = deviation.double()
        floor = None if floor is None else floor.double()
    if atol is None and rtol is None:
        atol, rtol = DEFAULT_TOLERANCES.get(out_dtype, (0.0, 0.0))
    atol = 0.0 if atol is None else float(atol)
    rtol = 0.0 if rtol is None else float(rtol)
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol!r}, rtol={rtol!r}")
    errors = deviation.amax(1)
    tolerance = torch.full_like(deviation, atol + rtol * float(scale))  # (n, B)
    if floor is not None:
        tolerance = tolerance + floor
    failed = ~(deviation <= tolerance)  # NaN fails
    if bool(failed.any()):
        ranked = torch.where(torch.isnan(deviation), torch.full_like(deviation, float("inf")), deviation - tolerance)
        worst, sample = divmod(int(ranked.argmax()), deviation.shape[1])
        name = type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", "model")
        per_element = ", ".join(f"{group.element_name(g)}: {float(e):.3e}" for g, e in zip(els, errors))
        floor_note = where = dominance = ""
        if floor is not None:
            where = f" on sample {sample}"
            bound = float(floor[worst, sample])
            floor_note = f" + interpolation floor {bound:.3e} of that sample ({floor_text})"
            if bound > 0.5 * float(tolerance[worst, sample]):
                dominance = (
                    f" The interpolation floor is {100 * bound / float(tolerance[worst, sample]):.0f}% of this "
                    "tolerance: the check only sees a deviation larger than the model's response to resampling, so "
                    "a model that deviates less passes however far from invariant it is. For a strict test use "
                    "exact elements (so2 at multiples of 90 degrees on inputs zero outside the disk, or the finite "
                    "group rotation), or smoother inputs, which lower the floor."
                )
        raise AssertionError(
            f"{name} is not {what} to {group!r}: worst element {group.element_name(els[worst])!r} has "
            f"max |{formula}| = {float(deviation[worst, sample]):.3e}{where} > tolerance "
            f"{float(tolerance[worst, sample]):.3e} "
            f"(atol={atol:g} + rtol={rtol:g} * max|f(x)|={float(scale):.3e}{floor_note}, computed in {out_dtype}); "
            f"{int(failed.any(1).sum())} of {len(els)} elements fail. Errors per element: {per_element}.{dominance}"
        )
    return errors


def equivariance_error(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    output_action: OutputActionLike,
    *,
    elements: Sequence[int] | None = None,
    relative: bool = False,
    dtype: torch.dtype | None = None,
    reduction: Reduction = "max",
    eval_mode: bool = True,
    mask: OutputMask | None = "auto",
) -> Tensor:
    r"""The largest deviation of :math:`g^{-1} \cdot f(g \cdot x)` from :math:`f(x)` under each group element.

    .. math::
        e_g = \max_{b, c} \bigl| m_c \big(g^{-1} \cdot f(g \cdot x_b)\big)_c - m_c f(x_b)_c \bigr|

    with :math:`g \cdot y` the ``output_action`` (see :mod:`torchinvariance.actions`; ``"trivial"`` gives
    :func:`invariance_error`) and :math:`m` the output mask (1 everywhere, or the inscribed disk of image outputs).
    Everything else as in :func:`invariance_error`.

    Args:
        model: maps a batch ``(N, ...)`` to outputs ``(N, ...)``.
        group: the group acting on the inputs.
        x: a batch ``(B, ...)``.
        output_action: how an element acts on the outputs (:func:`~torchinvariance.actions.resolve_output_action`).
        elements: the elements to check; default every element of a finite group.
        relative: divide by the largest absolute (masked) output.
        dtype: compute in this floating dtype on a cast copy (see :func:`invariance_error`).
        reduction: ``"max"`` or ``"none"``, as in :func:`invariance_error`.
        eval_mode: as in :func:`invariance_error`.
        mask: ``"circle"`` compares image outputs ``(B, ..., H, W)`` (``H == W``) only on the pixels inside the
            inscribed disk, the ones :meth:`SO2.mask_input <torchinvariance.SO2.mask_input>` keeps; ``None``
            compares every entry; ``"auto"`` (default) is ``"circle"`` for ``output_action="same"`` on a group that
            zeroes the outside of the disk (``so2`` with ``mask="circle"``, whose ``g^-1`` then zeroes the corners
            of the outputs whatever the model does), else ``None``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> pointwise = torch.nn.Conv2d(1, 1, 1)  # a 1x1 convolution commutes with every rotation
        >>> err = ti.equivariance_error(pointwise, rot, torch.randn(2, 1, 6, 6), "same")
        >>> bool(err.max() < 1e-6)
        True
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    deviation, scale, _, _, _ = _measure(model, group, x, elements, dtype, eval_mode, output_action, mask)
    if relative:
        deviation = _relative(deviation, scale)
    return deviation.amax(1) if reduction == "max" else deviation


def assert_equivariant(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    output_action: OutputActionLike = "same",
    atol: float | None = None,
    rtol: float | None = None,
    *,
    elements: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    eval_mode: bool = True,
    mask: OutputMask | None = "auto",
) -> Tensor:
    r"""Assert that ``model`` is equivariant: :math:`g^{-1} \cdot f(g \cdot x) = f(x)` for every element.

    Passes when, for every element :math:`g` and sample :math:`b`,

    .. math::
        \max_c \bigl| m_c \big(g^{-1} \cdot f(g \cdot x_b)\big)_c - m_c f(x_b)_c \bigr|
        \le \text{atol} + \text{rtol} \cdot \max_{b, c} |m_c f(x_b)_c| + \text{floor}_{g, b}

    The tolerances and the message are those of :func:`assert_invariant`; the output action is
    :mod:`torchinvariance.actions`' (default ``"same"``: the output transforms like the input) and ``mask`` that of
    :func:`equivariance_error` (default ``"auto"``: on the inscribed disk for ``"same"`` on ``so2``). For groups
    that interpolate, the output is resampled too, so the floor :math:`\text{floor}_{g, b}` of sample :math:`b` is
    the larger of the model's response to the round trip, :math:`\max_c |m_c f(g^{-1} (g x_b))_c - m_c f(x_b)_c|`,
    and the output's own round trip, :math:`\max_c |m_c (g^{-1} \cdot (g \cdot f(x_b)))_c - m_c f(x_b)_c|`; it is
    0 for exact groups.

    Returns:
        the per-element errors (see :func:`equivariance_error`).

    Raises:
        AssertionError: some element exceeds the tolerance, naming the worst one.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> x = torch.randn(2, 1, 6, 6)
        >>> _ = ti.assert_equivariant(torch.nn.Conv2d(1, 1, 1), rot, x, "same")
        >>> ti.assert_equivariant(torch.nn.Conv2d(1, 1, 3, padding=1), rot, x, "same")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        AssertionError: Conv2d is not equivariant to Rotation(order=4): worst element ...
    """
    measured = _measure(model, group, x, elements, dtype, eval_mode, output_action, mask)
    floor_text = _FLOOR_TEXT
    if not resolve_output_action(output_action, group).trivial:
        floor_text += ", or the output's own round trip max |g^-1 (g f(x)) - f(x)| where larger"
    return _decide(model, group, measured, atol, rtol, "equivariant", "g^-1 f(g x) - f(x)", floor_text)
