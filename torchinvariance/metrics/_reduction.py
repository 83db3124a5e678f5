r"""The element averaging of every metric, and the one update and compute that the functions and classes share.

A metric's terms form a ``(n, B)`` matrix, row ``i`` for the group element :math:`g_i` and column ``b`` for the
sample :math:`x_b`. The metric is the mean of the terms over the samples and over the *averaged* elements
:math:`A`:

.. math::
    M = \frac{1}{|A|\,N} \sum_{i \in A} \sum_{b=1}^{N} d_{ib},
    \qquad A = \{i : g_i \neq e\} \text{ (default) or all rows (include\_identity=True)}

The identity's term is 0 for DI and LI and 1 for SI for any model, so a mean that includes it answers a different
question than "how much does a non-trivial transformation change the output"; the paper's numbers are means over
the non-identity elements. In the torchmetrics pattern, :func:`orbit_update` turns a batch of terms into sums
(per-element sums, the sum of squared per-sample means, the count) and :func:`orbit_compute` / :func:`orbit_std`
turn sums into the metric: the functional forms call both on one batch (:func:`reduce_terms`), the classes of
:mod:`torchinvariance.metrics._classes` add the sums up in float64 states and call the compute at the end.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from torchinvariance.groups import Group, listed_elements
from torchinvariance.orbit import resolve_elements

__all__ = [
    "averaged_rows",
    "check_include_identity",
    "measured_elements",
    "orbit_compute",
    "orbit_std",
    "orbit_update",
    "reduce_terms",
]


def check_include_identity(include_identity: object) -> bool:
    """``include_identity`` must be a bool (no truthy strings or ints)."""
    if not isinstance(include_identity, bool):
        raise TypeError(
            "include_identity must be True (average over all group elements) or False (over the non-identity "
            f"elements, the default); got {include_identity!r}"
        )
    return include_identity


def measured_elements(group: Group, elements: Sequence | int | None, seed: int = 0) -> list | None:
    """The elements a metric measures, resolved once: ``None`` (the whole finite group), a list, or ``k`` drawn.

    - ``None``: every element of a finite group (its listing checked, identity first); returned as ``None`` so
      that the caller runs the whole orbit, whose first row is :math:`f(x)`. A continuous group raises.
    - a sequence: the elements in that order, each checked by ``group.check_element``.
    - an int ``k``: ``k`` elements drawn ONCE with a :class:`torch.Generator` seeded with ``seed``, so the same
      ``(k, seed)`` gives the same elements on every call and every process: for a continuous group
      ``group.sample(k, generator)`` sorted by value (angles, factors), for a finite group ``k`` distinct non-identity
      elements (``k < order``) in the order of ``group.elements()``.

    Raises:
        ValueError: ``None`` for a continuous group, an empty list, an element the group rejects, ``k < 1``, ``k``
            not below the order of a finite group, or a bad ``seed``.
        TypeError: ``elements`` of another type (a float, a bool, a string, a set).

    Example:
        >>> import torchinvariance as ti
        >>> from torchinvariance.metrics._reduction import measured_elements
        >>> so2 = ti.get_group("so2")
        >>> measured_elements(so2, 3, seed=0) == measured_elements(so2, 3, seed=0)
        True
        >>> measured_elements(so2, [-90, 45])
        [270.0, 45.0]
        >>> measured_elements(ti.get_group("rotation", order=4), 2, seed=0)  # two of the three rotations
        [1, 3]
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), the seed of the draw of elements=k; got {seed!r}")
    if isinstance(elements, bool) or isinstance(elements, float):
        raise TypeError(
            "elements must be None (every element of a finite group), an int k >= 1 (k elements drawn once with "
            f"the seed) or a sequence of group elements; got {elements!r}"
        )
    if isinstance(elements, numbers.Integral):
        k = int(elements)
        if k < 1:
            raise ValueError(f"elements=k draws k elements and needs k >= 1; got {elements!r}")
        gen = torch.Generator().manual_seed(int(seed))
        if not group.is_finite:
            drawn = [group.check_element(g) for g in group.sample(k, generator=gen)]
            if all(isinstance(g, numbers.Real) for g in drawn):
                drawn.sort()
            return drawn
        listing = listed_elements(group)[1:]  # the identity (first) changes nothing: draw the others
        if k > len(listing):
            raise ValueError(
                f"elements={k} draws {k} distinct non-identity elements, but {group!r} has only {len(listing)}: "
                "pass elements=None to measure every element"
            )
        picked = sorted(torch.randperm(len(listing), generator=gen)[:k].tolist())
        return [listing[i] for i in picked]
    if elements is None:
        resolve_elements(group, None)  # a continuous group, or a wrong listing, raises here
        return None
    return resolve_elements(group, elements)


def averaged_rows(group: Group, elements: Sequence | None, include_identity: bool) -> list[bool]:
    """Which rows of the terms enter ``"mean"``/``"sum"``: every row, or those whose element is not the identity.

    Args:
        group: the group.
        elements: the element of each row; ``None`` for every element of a finite group (identity first).
        include_identity: ``True`` keeps every row.

    Raises:
        ValueError: no row is left (only the identity was measured) with ``include_identity=False``.
    """
    check_include_identity(include_identity)
    els = list(group.elements()) if elements is None else list(elements)
    if include_identity:
        return [True] * len(els)
    keep = [not group.same_element(g, group.identity) for g in els]
    if not any(keep):
        raise ValueError(
            f"only the identity of {group!r} was measured, and the mean is over the non-identity elements "
            "(include_identity=False): measure other elements, or pass include_identity=True"
        )
    return keep


def _mask(rows: Sequence[bool] | Tensor, terms: Tensor) -> Tensor:
    mask = torch.as_tensor(rows, dtype=torch.bool, device=terms.device)
    if mask.shape != terms.shape[:1]:
        raise ValueError(f"{mask.numel()} averaged-row flags for terms with {terms.shape[0]} rows")
    return mask


def orbit_update(terms: Tensor, rows: Sequence[bool] | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The sums of one batch of terms ``(n, B)``: per-element sums ``(n,)``, :math:`\sum_b v_b^2` and ``B``.

    :math:`v_b` is sample ``b``'s mean over the averaged rows; its squares give the standard deviation over samples
    (:func:`orbit_std`). The sums keep the dtype and the autograd graph of ``terms``.
    """
    mask = _mask(rows, terms)
    per_sample = terms[mask].mean(0)
    return terms.sum(1), per_sample.pow(2).sum(), torch.tensor(terms.shape[1], dtype=terms.dtype, device=terms.device)


def orbit_compute(element_sum: Tensor, count: Tensor, rows: Sequence[bool] | Tensor) -> Tensor:
    """The metric from the sums: the mean over samples and averaged rows."""
    mask = _mask(rows, element_sum)
    return element_sum[mask].sum() / (count * mask.sum())


def orbit_std(element_sum: Tensor, sumsq: Tensor, count: Tensor, rows: Sequence[bool] | Tensor) -> Tensor:
    r"""Standard deviation over samples (ddof=0) of :math:`v_b`, the per-sample mean over the averaged rows."""
    mean = orbit_compute(element_sum, count, rows)
    return (sumsq / count - mean**2).clamp_min(0.0).sqrt()


def reduce_terms(terms: Tensor, reduction: str, rows: Sequence[bool] | Tensor) -> Tensor:
    """The reduction of the functional metrics: ``"none"`` returns every row; ``"mean"``/``"sum"`` the averaged rows."""
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms[_mask(rows, terms)].sum()
    element_sum, _, count = orbit_update(terms, rows)
    return orbit_compute(element_sum, count, rows)
