r"""Check that a group is a group and acts like one: :func:`check_group`.

For a finite group every element is checked (every pair and, up to 16 elements, every triple); for a continuous
group a fixed-seed sample. Interpolating groups (``exact = False``) are checked within a tolerance that is reported.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from torchinvariance.groups._base import Group, ensure_group

__all__ = ["check_group", "listed_elements", "validate_group"]

_MAX_TRIPLES = 16**3


def validate_group(group: Group) -> Group:
    """The cheap checks that need no input: ``order`` is an int (finite groups) and ``identity`` is an element.

    Raises:
        TypeError: ``order`` is not an int (e.g. defined as a method instead of a property).
        ValueError: ``identity`` is not an element of the group.
    """
    ensure_group(group)
    if group.is_finite:
        order = group.order
        if isinstance(order, bool) or not isinstance(order, int):
            hint = " (define it with @property, or as a class attribute)" if callable(order) else ""
            raise TypeError(f"{type(group).__name__}.order must be an int, got {type(order).__name__}{hint}")
        if order < 1:
            raise ValueError(f"{type(group).__name__}.order must be >= 1, got {order}")
    try:
        group.check_element(group.identity)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type(group).__name__}.identity ({group.identity!r}) is not an element: {exc}") from exc
    return group


def _listing_problems(group: Group, els: list) -> tuple[list[str], list]:
    """What is wrong with ``els`` as the listing of a finite group's elements (``[]`` when nothing is), and the
    entries that are elements.
    """
    problems = []
    if len(els) != group.order:
        problems.append(f"elements() lists {len(els)} elements but the order is {group.order}")
    checked, bad = [], []
    for g in els:
        try:
            checked.append(group.check_element(g))
        except (TypeError, ValueError):
            bad.append(g)
    if bad:
        problems.append(f"elements() lists {bad!r}, which check_element() rejects")
    try:
        distinct = len(set(checked))
    except TypeError:  # unhashable elements: compare them pairwise
        distinct = sum(not any(group.same_element(g, h) for h in checked[:i]) for i, g in enumerate(checked))
    if distinct != len(checked):
        problems.append(f"elements() lists {len(checked) - distinct} element(s) more than once")
    if checked and not group.same_element(checked[0], group.identity):
        problems.append(
            f"elements() must list the identity {group.element_name(group.identity)} first (the metrics use the "
            f"first row as the reference f(x)); it starts with {group.element_name(checked[0])}"
        )
    return problems, checked


def listed_elements(group: Group) -> list:
    """``group.elements()`` as a list, checked: ``order`` distinct elements, the identity first.

    This is what every caller that measures "the whole group" (``elements=None``) relies on; a listing that is too
    short would skip elements silently.

    Raises:
        ValueError: the listing has another length than ``order``, an entry that is not an element, a repeat, or
            does not start with the identity.

    Example:
        >>> import torchinvariance as ti
        >>> ti.groups.listed_elements(ti.get_group("flip"))
        [0, 1]
    """
    els = list(group.elements())
    problems, _ = _listing_problems(group, els)
    if problems:
        raise ValueError(f"{group!r} does not list its elements correctly: {'; '.join(problems)}")
    return els


def _default_input(group: Group) -> Tensor | None:
    """A small seeded input: white noise for exact groups, a smooth centred image for interpolating ones."""
    gen = torch.Generator().manual_seed(0)
    # nearest sampling errs by pixels, not by a fraction of the signal: a finer grid resolves smaller action errors
    size = 48 if _nearest(group) else 24
    shape = {2: (2, 1, size, size), 1: (2, 3, 12)}.get(group.event_ndim)
    if shape is None:
        return None
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if group.event_ndim == 1 and not group.exact:  # a few low frequencies: band-limited signals
        t = torch.arange(shape[-1], dtype=torch.float64) / shape[-1]
        coef = torch.randn(*shape[:-1], 3, 2, generator=gen, dtype=torch.float64)
        k = torch.arange(1, 4, dtype=torch.float64)[:, None]
        x = (coef[..., 0:1] * torch.cos(2 * torch.pi * k * t) + coef[..., 1:2] * torch.sin(2 * torch.pi * k * t)).sum(
            -2
        )
    if group.event_ndim == 2 and not group.exact:
        # interpolation is only meaningful on band-limited content away from the border
        coarse = torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
        x = torch.nn.functional.interpolate(coarse, size=shape[-2:], mode="bicubic", align_corners=False)
        c = (torch.arange(shape[-1], dtype=torch.float64) + 0.5) / shape[-1] * 2 - 1
        x = x * torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 0.35**2))
    if group.event_ndim == 2 and hasattr(group, "mask_input"):
        x = group.mask_input(x)
    try:
        group.check_input(x)
    except (TypeError, ValueError):
        return None
    return x


def _rel(a: Tensor, b: Tensor) -> float:
    """``|a - b| / |b|``, in float64 for integer and bool images (whose norm torch does not take)."""
    if not b.is_floating_point() and not b.is_complex():
        a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


def _nearest(group: Group) -> bool:
    """Whether ``group`` samples with nearest neighbours (an ``interpolation`` attribute of ``"nearest"``)."""
    return not group.exact and getattr(group, "interpolation", None) == "nearest"


def _pixel_shift_error(x: Tensor, ndim: int) -> float:
    """The largest relative change of ``x`` under a one-pixel cyclic shift along one of its last ``ndim`` dims."""
    return max(_rel(torch.roll(x, s, d), x) for d in range(-ndim, 0) for s in (1, -1) if x.shape[d] > 1)


def _action_tolerance(group: Group, x: Tensor, els: list) -> float:
    """The tolerance of the action check of an interpolating group (see :func:`check_group`)."""
    scale = max(_rel(group.act(group.inverse(g), group.act(g, x)), x) for g in els)
    if _nearest(group):
        scale = max(scale, _pixel_shift_error(x, group.event_ndim))
    return 2 * scale + 1e-6


def check_group(group: Group, x: Tensor | None = None, *, samples: int = 8) -> dict[str, Any]:
    r"""Verify the group axioms and the action on an input; raise :class:`AssertionError` naming what fails.

    Checks, for the elements :math:`g, h, k` (all of a finite group; ``samples`` drawn with a fixed seed for a
    continuous one, plus the identity):

    - the listing (finite groups): ``elements()`` lists ``order`` distinct elements, the identity first;
    - identity: :math:`e g = g e = g` and :math:`e \cdot x = x`;
    - inverse: :math:`g g^{-1} = g^{-1} g = e`;
    - closure: :math:`g h` is an element; associativity :math:`(g h) k = g (h k)`;
    - the action: :math:`(g h) \cdot x = g \cdot (h \cdot x)`.

    Exact groups must satisfy the action bit for bit (``torch.equal``). For ``exact = False`` groups the relative
    error :math:`\lVert (gh) \cdot x - g \cdot (h \cdot x) \rVert / \lVert x \rVert` must stay within a tolerance of
    twice the largest round-trip error :math:`r = \max_g \lVert g^{-1} \cdot (g \cdot x) - x \rVert / \lVert x \rVert`
    plus :math:`10^{-6}`, reported in the result: the two sides differ by the errors of three resamplings (one on
    the left, two on the right), and a smooth interpolation's round trip adds up two of them.

    Groups that sample with nearest neighbours (``interpolation == "nearest"``) round every sample to a pixel
    within half a pixel of its exact position, and a round trip undoes much of its own rounding (a pixel sent to a
    neighbour is sent back), so :math:`r` underestimates the error of one resampling (on the built-in ``scale``
    the action error reaches :math:`4.9\,r`). There the two sides differ by samples displaced about one pixel,
    and the scale is :math:`\max(r, s)` with :math:`s` the relative change of ``x`` under a one-pixel shift
    along the dims the group acts on; the tolerance is :math:`2 \max(r, s) + 10^{-6}` (on 30 smooth inputs of
    48 and 64 pixels the action error of the built-in ``so2`` and ``scale``, also with scales in
    :math:`[0.25, 4]`, stays below :math:`1.7 \max(r, s)`). Such a check resolves action errors of about a pixel
    of displacement (on the default input a rotation :math:`10^\circ` off, or a factor 10% off), coarser than the
    few percent of a smooth interpolation.

    Args:
        group: the group.
        x: an input batch the group acts on; ``None`` uses a small seeded image when the group accepts one
            (``(2, 1, 24, 24)`` white noise for exact groups, a smooth centred image for interpolating ones, of
            ``48 x 48`` pixels for nearest sampling;
            ``(2, 3, 12)`` for 1-D groups, white noise or three low frequencies; masked for groups with
            ``mask_input``), and checks only the algebra otherwise.
        samples: elements drawn for continuous groups.

    Returns:
        ``{"elements": n, "action_checked": bool, "tolerance": float | None}``.

    Example:
        >>> import torchinvariance as ti
        >>> ti.check_group(ti.get_group("dihedral"))["elements"]
        8
        >>> ti.check_group(ti.get_group("so2"))["tolerance"] > 0
        True
    """
    validate_group(group)
    failures: list[str] = []
    if group.is_finite:
        problems, els = _listing_problems(group, list(group.elements()))  # the algebra runs on the valid entries
        failures += [f"elements: {p}" for p in problems]
    else:
        els = [group.identity, *group.sample(samples, generator=torch.Generator().manual_seed(0))]
    e = group.identity

    def name(g: object) -> str:
        return group.element_name(g)

    def same(a: object, b: object) -> bool:
        return group.same_element(a, b)

    for g in els:
        if not (same(group.compose(e, g), g) and same(group.compose(g, e), g)):
            failures.append(f"identity: e*{name(g)} or {name(g)}*e is not {name(g)}")
        inv = group.inverse(g)
        if not (same(group.compose(g, inv), e) and same(group.compose(inv, g), e)):
            failures.append(f"inverse: {name(g)} * inverse({name(g)}) is not the identity")
    for g, h in itertools.product(els, els):
        try:
            group.check_element(group.compose(g, h))
        except (TypeError, ValueError) as exc:
            failures.append(f"closure: {name(g)}*{name(h)} = {group.compose(g, h)!r} is not an element ({exc})")
    triples = list(itertools.product(els, els, els))
    if len(triples) > _MAX_TRIPLES:
        idx = torch.randperm(len(triples), generator=torch.Generator().manual_seed(0))[:_MAX_TRIPLES]
        triples = [triples[i] for i in idx.tolist()]
    for g, h, k in triples:
        if not same(group.compose(group.compose(g, h), k), group.compose(g, group.compose(h, k))):
            failures.append(f"associativity: ({name(g)}*{name(h)})*{name(k)} != {name(g)}*({name(h)}*{name(k)})")

    x = _default_input(group) if x is None else x
    tolerance = None
    if x is not None:
        group.check_input(x)
        if not torch.equal(group.act(e, x), x):
            failures.append("action: the identity does not leave x unchanged")
        if not group.exact:
            tolerance = _action_tolerance(group, x, els)
        for g, h in itertools.product(els, els):
            lhs, rhs = group.act(group.compose(g, h), x), group.act(g, group.act(h, x))
            if group.exact and not torch.equal(lhs, rhs):
                failures.append(f"action: ({name(g)}*{name(h)})·x != {name(g)}·({name(h)}·x)")
            elif not group.exact and _rel(lhs, rhs) > tolerance:
                failures.append(
                    f"action: ({name(g)}*{name(h)})·x and {name(g)}·({name(h)}·x) differ by {_rel(lhs, rhs):.3e} "
                    f"(relative) > tolerance {tolerance:.3e}"
                )
    if failures:
        shown = "; ".join(failures[:10]) + (f"; ... ({len(failures) - 10} more)" if len(failures) > 10 else "")
        raise AssertionError(f"{group!r} fails {len(failures)} group check(s): {shown}")
    return {"elements": len(els), "action_checked": x is not None, "tolerance": tolerance}
