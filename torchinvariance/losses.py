r"""Invariance error regularizers (paper eq. 4).

.. math::
    \min_\theta \; \mathcal{L}_f(\mathcal{D}) + \nu \, I_f(\mathcal{D}, \mathcal{G})

:class:`InvarianceLoss` computes :math:`I_f` for any model and any
:class:`~torchinvariance.groups.Group`; losses compose with ``+`` and ``*``.
The divergences live in :mod:`torchinvariance.divergences` (re-exported here),
the orbit forward in :mod:`torchinvariance.orbit`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from torchinvariance._checks import check_model
from torchinvariance.actions import (
    OutputAction,
    OutputActionLike,
    OutputMask,
    output_disk,
    resolve_output_action,
    resolve_output_mask,
)
from torchinvariance.divergences import (
    DIVERGENCES,
    Divergence,
    Reduction,
    check_logits,
    check_reduction,
    divergence_name,
    kl_divergence,
    l2_divergence,
    normalized_l2_divergence,
    orbit_divergence,
    resolve_divergence,
)
from torchinvariance.groups import Group, ensure_group, listed_elements
from torchinvariance.orbit import RandomState, check_batch, frozen_buffers, model_output, orbit_forward

__all__ = [
    "DIVERGENCES",
    "EquivarianceLoss",
    "InvarianceLoss",
    "WeightedInvarianceLoss",
    "kl_divergence",
    "l2_divergence",
    "normalized_l2_divergence",
]

_LOW = (torch.float16, torch.bfloat16)


def _check_weight(weight: float, allow_negative: bool = False) -> float:
    w = float(weight)
    if not math.isfinite(w):
        raise ValueError(f"an invariance loss weight must be a finite number, got {weight!r}")
    if w < 0 and not allow_negative:
        raise ValueError(
            f"an invariance loss weight must be >= 0, got {weight!r}: a negative weight turns the penalty into a "
            "reward for breaking invariance. Build WeightedInvarianceLoss([(w, loss)], allow_negative=True) if that "
            "is what you want"
        )
    return w


class _Composable(nn.Module):
    """Mixin giving invariance losses ``a + b`` and ``w * a`` (finite weights, ``>= 0`` unless allowed)."""

    allow_negative: bool = False

    def _terms(self) -> list[tuple[float, nn.Module]]:
        return [(1.0, self)]

    def __add__(self, other: object) -> WeightedInvarianceLoss:
        if not isinstance(other, _Composable):
            return NotImplemented
        allow = self.allow_negative or other.allow_negative
        return WeightedInvarianceLoss(self._terms() + other._terms(), allow_negative=allow)

    def __mul__(self, weight: object) -> WeightedInvarianceLoss:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        w = _check_weight(weight, self.allow_negative)
        return WeightedInvarianceLoss([(w * v, t) for v, t in self._terms()], allow_negative=self.allow_negative)

    __rmul__ = __mul__


class InvarianceLoss(_Composable):
    r"""The invariance error :math:`I_f` of a model under a finite group.

    For a batch :math:`x_1..x_B` and the group elements used
    :math:`g_1..g_n` (all of the group by default, identity included):

    .. math::
        I_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{i=1}^{n} d\big(f(x_b), f(g_i x_b)\big)

    with ``reduction="mean"``; ``"sum"`` drops the :math:`1/(nB)` and ``"none"``
    returns the ``(n, B)`` matrix of terms. The identity's term is exactly 0.

    All transformed inputs go through the model in one batched forward (or in
    checkpointed chunks of ``chunk_size`` group elements, which bounds peak
    memory whatever the group order).

    Batch-dependent layers (BatchNorm in train mode) see different batches in
    the two calling patterns, and the loss handles their running statistics
    so that the transformed copies never count as new data:

    - ``reg(x)`` / :meth:`forward_with_logits`: ONE forward of the stacked
      batch ``[x; g_1 x; ...]``, so batch statistics are taken over ``x`` and
      its transforms together, and running statistics are updated once, by
      that forward (as for any single forward of the model).
    - ``reg(x, logits=model(x))``: the task forward ``model(x)`` normalizes
      with the statistics of ``x`` and updates the running statistics; the
      forward of the transformed copies normalizes with their own batch
      statistics and leaves every buffer exactly as the task forward left it
      (also when ``chunk_size`` recomputes it during backward).

    Without batch-dependent layers the two patterns give the same value.

    Random layers (dropout) in train mode draw independently for every row of
    a forward, so by default each transformed copy of a sample gets its own
    dropout mask, and the loss measures the invariance of the *stochastic*
    network: it includes the spread that dropout alone causes (an exactly
    invariant model with ``Dropout(0.5)`` has a clearly positive loss in train
    mode and 0 in eval mode), and minimizing it also makes the model robust to
    its own dropout, as consistency regularization does. With
    ``shared_randomness=True`` the loss runs ``f(x)`` and then each
    element's copy in its own forward, every one started from the same random
    state, so copy ``g x_b`` gets the mask of ``x_b``: an invariant model
    whose dropout acts after its invariant features scores 0 in train mode
    too. This costs one forward per element instead of one batched forward,
    needs ``f(x)`` from the loss itself (``logits=`` raises; use
    :meth:`forward_with_logits`), and leaves the generators as ``f(x)`` left
    them. A mask is shared per position, not per feature: dropout on feature
    maps that the group moves (before pooling) still differs between copies.

    The loss holds ``model`` without registering it as a submodule: it has
    no parameters or buffers of its own, so ``loss.state_dict()`` is empty and
    a module holding both the model and the loss stores every weight once.
    ``loss.to(...)`` still moves the model; ``deepcopy`` and pickling copy it.

    Args:
        model: any module; its output may be logits ``(B, C)`` or any feature
            tensor ``(B, ...)`` (``"kl"`` needs logits).
        group: the group.
        divergence: ``"l2"`` (:func:`l2_divergence`, the paper's logit
            invariance), ``"kl"`` (:func:`kl_divergence`),
            ``"normalized_l2"`` (:func:`normalized_l2_divergence`) or a
            callable ``(fx, fgx) -> (N,)`` on two same-shaped ``(N, ...)``
            tensors.
        elements: ``None`` for the whole group (finite groups), an int ``k`` to
            draw ``k`` elements per call with ``group.sample`` (cost grows with
            ``k``; the way to use a continuous group such as ``so2``), or an
            explicit list of elements (e.g. angles in degrees).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        chunk_size: if given, run at most this many group elements per forward,
            each chunk under activation checkpointing (also when one chunk holds
            them all): autograd then keeps only ``x`` and ``f(x)`` between forward
            and backward, and one chunk's activations are recomputed at a time,
            so peak memory does not grow with the group order. Costs one extra
            forward of the transformed inputs.
        generator: random generator for ``elements=k``.
        shared_randomness: give every transformed copy of a sample the random
            draws (dropout masks) of ``f(x)``, see above; default ``False``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> reg = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
        >>> x, y = torch.randn(8, 1, 4, 4), torch.randint(3, (8,))
        >>> logits = model(x)
        >>> loss = torch.nn.functional.cross_entropy(logits, y) + 0.1 * reg(x, logits=logits)
        >>> loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        group: Group,
        divergence: Divergence = "l2",
        elements: int | Sequence[int] | None = None,
        reduction: Reduction = "mean",
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        *,
        shared_randomness: bool = False,
    ) -> None:
        super().__init__()
        ensure_group(group)
        check_model(model)
        resolve_divergence(divergence)  # unknown names fail here, once
        # held, not registered: the loss has no parameters of its own, so a module holding both the model and
        # the loss has each weight once in its state_dict (see _apply for .to()/.double())
        object.__setattr__(self, "model", model)
        self.group = group
        self.divergence = divergence
        self.reduction = check_reduction(reduction)
        if isinstance(elements, bool) or isinstance(elements, float):
            raise TypeError(
                f"elements must be None (the whole group), an int k >= 1 (k random elements per call) or a list "
                f"of group elements; got {elements!r}"
            )
        if isinstance(elements, int):
            if elements < 1:
                raise ValueError(f"elements=k needs k >= 1, got {elements!r}")
        elif elements is not None:
            if isinstance(elements, (str, bytes)) or not isinstance(elements, Sequence):
                raise TypeError(
                    "elements must be None (the whole group), an int k >= 1 (k random elements per call) or a "
                    f"list of group elements; got {type(elements).__name__}"
                )
            elements = [group.check_element(g) for g in elements]
            if not elements:
                raise ValueError("elements must not be an empty list")
        if elements is None and not group.is_finite:
            raise ValueError(
                f"{group!r} is continuous: its elements cannot be enumerated; pass elements=k to draw k elements "
                "per call, or an explicit list (e.g. angles in degrees)"
            )
        if elements is None:
            listed_elements(group)  # a wrong listing (too short, identity not first) fails here, not in training
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.elements = elements
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.generator = generator
        if not isinstance(shared_randomness, bool):
            raise TypeError(f"shared_randomness must be True or False, got {shared_randomness!r}")
        self.shared_randomness = shared_randomness
        self.output_action: OutputAction = OutputAction.invariant()

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() ... on the loss move its model too, as when the model was a submodule
        if isinstance(self.model, nn.Module):
            self.model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"model={type(self.model).__name__}, group={self.group!r}, "
            f"divergence={divergence_name(self.divergence)!r}, elements={self.elements!r}, reduction={self.reduction!r}"
        ) + (", shared_randomness=True" if self.shared_randomness else "")

    def _elements(self) -> list[int]:
        if self.elements is None:
            return list(self.group.elements())
        if isinstance(self.elements, int):
            return self.group.sample(self.elements, generator=self.generator)
        return list(self.elements)

    def _check_fx(self, fx: Tensor, batch: int) -> Tensor:
        fx = model_output(fx, batch)
        if self.divergence == "kl":
            check_logits(fx)
        return fx

    def _pair(self, fx: Tensor, fgx: Tensor) -> Tensor:
        """Divergences of ``fx`` ``(B, ...)`` against ``fgx`` ``(m, B, ...)``: ``(m, B)`` or, unless
        ``reduction="none"``, their sum.
        """
        return orbit_divergence(self.divergence, fx, fgx, total=self.reduction != "none")

    def _chunk_terms(self, x: Tensor, fx: Tensor, els: list[int], state: RandomState | None = None) -> Tensor:
        # the transformed copies are not new data: running statistics (BatchNorm) stay as f(x) left them,
        # also when checkpointing recomputes this forward during backward
        shared = False if state is None else state
        with frozen_buffers(self.model):
            out = orbit_forward(
                self.model, self.group, x, els, output_action=self.output_action, shared_randomness=shared
            )
            return self._pair(fx, out)

    def _nonid_terms(self, x: Tensor, fx: Tensor, nonid: list[int], state: RandomState | None = None) -> Tensor:
        """Terms of the non-identity elements ``nonid``, given ``f(x)`` (and the random state it was drawn from)."""
        if self.chunk_size is None:
            return self._chunk_terms(x, fx, nonid, state)
        # always checkpoint with chunk_size, even for one chunk: autograd then keeps only x and f(x),
        # and each chunk's activations live only while that chunk is recomputed in backward
        parts = [
            checkpoint(self._chunk_terms, x, fx, nonid[i : i + self.chunk_size], state, use_reentrant=False)
            for i in range(0, len(nonid), self.chunk_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if self.reduction == "none" else torch.stack(parts).sum()

    def _finish(self, terms: Tensor | None, els: list[int], fx: Tensor) -> Tensor:
        """The one place the reduction is applied. The identity's terms are exactly 0 and only count in the mean.

        ``terms`` are the non-identity terms ``(m, B)`` for ``reduction="none"``, else their sum.
        """
        dtype = torch.float32 if fx.dtype in _LOW else fx.dtype
        b = fx.shape[0]
        if self.reduction != "none":
            if terms is None:
                return fx.new_zeros((), dtype=dtype)
            return terms / (len(els) * b) if self.reduction == "mean" else terms
        idx = [i for i, g in enumerate(els) if g != self.group.identity]
        if terms is not None and len(idx) == len(els):
            return terms.to(dtype)
        values = fx.new_zeros((len(els), b), dtype=dtype)
        if terms is None:
            return values
        return values.index_put((torch.tensor(idx, device=values.device),), terms.to(dtype))

    def forward_with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Compute ``(invariance_error, f(x))`` in ONE batched forward of ``x`` and its transforms.

        Useful under :class:`~torch.nn.parallel.DistributedDataParallel`, where
        the model should be called once per step, and when the task loss needs
        ``f(x)`` too. With ``chunk_size``, ``f(x)`` is computed first and the
        transforms follow in checkpointed chunks.
        """
        check_batch(self.group, x, "InvarianceLoss")
        els = self._elements()
        nonid = [g for g in els if g != self.group.identity]
        b = x.shape[0]
        if self.shared_randomness:
            # f(x) first, from the state S; every copy replays S: the same dropout masks, the RNG left as after f(x)
            state = RandomState(x.device)
            fx = self._check_fx(self.model(x), b)
            after = RandomState(x.device)
            terms = self._nonid_terms(x, fx, nonid, state) if nonid else None
            after.restore()
            return self._finish(terms, els, fx), fx
        if self.chunk_size is not None or not nonid:
            fx = self._check_fx(self.model(x), b)
            return self._finish(self._nonid_terms(x, fx, nonid) if nonid else None, els, fx), fx
        out = orbit_forward(self.model, self.group, x, [self.group.identity, *nonid], output_action=self.output_action)
        fx = self._check_fx(out[0], b)
        return self._finish(self._pair(fx, out[1:]), els, fx), fx

    def forward(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        """Invariance error of the batch ``x``.

        Args:
            x: input batch ``(B, ...)`` that the group can act on.
            logits: ``f(x)`` if already computed (e.g. for the task loss); then
                only the non-identity elements go through the model.

        Returns:
            scalar for ``"mean"``/``"sum"``, ``(n_elements, B)`` for ``"none"``.
        """
        if logits is None:
            return self.forward_with_logits(x)[0]
        if self.shared_randomness:
            raise ValueError(
                "shared_randomness=True replays the random state of the loss's own forward of x for every copy; "
                "logits= were computed by another forward, with other dropout masks. Call "
                "`reg_value, logits = reg.forward_with_logits(x)` and use those logits for the task loss"
            )
        check_batch(self.group, x, "InvarianceLoss")
        fx = self._check_fx(logits, x.shape[0])
        els = self._elements()
        nonid = [g for g in els if g != self.group.identity]
        return self._finish(self._nonid_terms(x, fx, nonid) if nonid else None, els, fx)


class EquivarianceLoss(InvarianceLoss):
    r"""The equivariance error of a model: how far :math:`g^{-1} \cdot f(g \cdot x)` is from :math:`f(x)`.

    .. math::
        E_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{i=1}^{n}
        d\big(f(x_b),\; g_i^{-1} \cdot f(g_i x_b)\big)

    where :math:`g \cdot y` is the ``output_action`` (see
    :mod:`torchinvariance.actions`): ``"same"`` for outputs that transform
    like the input (masks, feature maps), a permutation of classes or
    channels per element, a representation ``rho(g)`` for vector outputs, or
    any callable ``(g, y) -> y'``. With ``output_action="trivial"`` this is
    :class:`InvarianceLoss`. Everything else is shared with
    :class:`InvarianceLoss`: one batched forward of the orbit, ``logits=``
    reuse, ``elements``, ``reduction``, ``chunk_size``, composition with
    ``+`` and ``*``, and the BatchNorm handling.

    Args:
        model: any module.
        group: the group acting on the input.
        output_action: how the group acts on the output.
        divergence: as in :class:`InvarianceLoss`.
        elements: as in :class:`InvarianceLoss`.
        reduction: as in :class:`InvarianceLoss`.
        chunk_size: as in :class:`InvarianceLoss`.
        generator: as in :class:`InvarianceLoss`.
        shared_randomness: as in :class:`InvarianceLoss`.
        mask: ``"circle"`` compares image outputs ``(B, ..., H, W)`` only on the pixels inside the inscribed disk
            (both :math:`f(x_b)` and :math:`g_i^{-1} \cdot f(g_i x_b)` are multiplied by it), ``None`` everywhere;
            ``"auto"`` (default) is the disk exactly for ``"same"`` on a group that zeroes the outside of the disk
            (``so2`` with ``mask="circle"``): its :math:`g^{-1}` zeroes the corners of every copy, so without the
            disk an exactly equivariant model with a bias would be penalized for its corners. As in
            :func:`~torchinvariance.equivariance_error`.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
        >>> loss = ti.EquivarianceLoss(conv, rot, output_action="same")
        >>> value = loss(torch.randn(4, 1, 8, 8))
        >>> value.backward()  # a generic convolution is not rotation-equivariant: the loss trains it
        >>> bool(value > 0), conv.weight.grad is not None
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        group: Group,
        output_action: OutputActionLike,
        divergence: Divergence = "l2",
        elements: int | Sequence[int] | None = None,
        reduction: Reduction = "mean",
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        *,
        shared_randomness: bool = False,
        mask: OutputMask | None = "auto",
    ) -> None:
        super().__init__(
            model, group, divergence, elements, reduction, chunk_size, generator, shared_randomness=shared_randomness
        )
        self.output_action = resolve_output_action(output_action, group)
        _check_permutations(self.output_action, group, self.elements)
        self.on_disk = resolve_output_mask(mask, self.group, self.output_action)

    def _pair(self, fx: Tensor, fgx: Tensor) -> Tensor:
        if self.on_disk:  # compare on the inscribed disk only
            disk = output_disk(fx)
            fx, fgx = fx * disk, fgx * disk
        return super()._pair(fx, fgx)

    def extra_repr(self) -> str:
        disk = ", mask='circle'" if self.on_disk else ""
        return f"{super().extra_repr()}, output_action={self.output_action.name!r}{disk}"


def _check_permutations(action: OutputAction, group: Group, elements: int | list | None) -> None:
    """A permutation output action must have a permutation for the inverse of every element used (and the identity).

    Checked when the loss is built: otherwise the first call inside training raises (or, for random elements,
    the first call that draws an element without a permutation).
    """
    table = getattr(action, "table", None)
    if action.name != "permutation" or not isinstance(table, dict):
        return
    if isinstance(elements, int) and not group.is_finite:
        raise ValueError(
            f"a permutation output action lists its elements, but elements={elements} draws new elements of the "
            f"continuous {group!r} on every call: pass the list of elements the permutations are given for"
        )
    used = listed_elements(group) if elements is None or isinstance(elements, int) else list(elements)
    if not any(group.same_element(g, group.identity) for g in used):
        used = [group.identity, *used]  # the forward of the orbit acts on f(x), the identity's row, too
    missing = [group.element_name(g) for g in used if group.inverse(g) not in table]
    if missing:
        raise ValueError(
            f"the permutation output action needs a permutation for the inverse of every element it is used on; "
            f"none is given for the inverses of {missing} (it has permutations for elements {sorted(table)})"
        )
    sizes = {len(p) for p in table.values()}
    if len(sizes) > 1:
        raise ValueError(f"the output permutations must all have the same length; got lengths {sorted(sizes)}")


class WeightedInvarianceLoss(_Composable):
    r"""A weighted sum of invariance losses, built by ``a + b`` and ``w * a``.

    .. math:: I = \sum_k w_k I^{(k)}

    Each term is called with the same ``x`` (and ``logits``, which must be the
    output of every term's model; leave it ``None`` when the terms regularize
    different modules). Terms must use ``reduction="mean"`` or ``"sum"``.

    Weights must be finite and non-negative: ``float("nan") * reg`` or
    ``-1.0 * reg`` raise :class:`ValueError`, because a negative weight turns
    the penalty into a reward for breaking invariance. Build
    ``WeightedInvarianceLoss([(w, loss)], allow_negative=True)`` to allow
    negative weights deliberately (sums and multiples of it keep allowing them).

    Args:
        terms: ``(weight, loss)`` pairs, at least one; each loss an :class:`InvarianceLoss`,
            :class:`EquivarianceLoss` or :class:`WeightedInvarianceLoss`.
        allow_negative: accept negative weights.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> rot = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
        >>> shift = ti.InvarianceLoss(model, ti.get_group("translation", order=3))
        >>> both = rot + 0.5 * shift
        >>> both(torch.randn(2, 1, 6, 6)).shape
        torch.Size([])
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]], *, allow_negative: bool = False) -> None:
        super().__init__()
        terms = list(terms)
        if not terms:
            raise ValueError("a composed invariance loss needs at least one (weight, loss) term; got none")
        for i, pair in enumerate(terms):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"terms must be (weight, loss) pairs; term {i} is {type(pair).__name__} {pair!r}")
            if not isinstance(pair[1], _Composable):
                raise TypeError(
                    "each term of a composed invariance loss must be an InvarianceLoss, EquivarianceLoss or "
                    f"WeightedInvarianceLoss (called as term(x, logits=...)); term {i} is {type(pair[1]).__name__}"
                )
        for _, t in terms:
            if getattr(t, "reduction", "mean") == "none":
                raise ValueError("terms of a composed invariance loss need reduction 'mean' or 'sum', got 'none'")
        self.allow_negative = bool(allow_negative)
        self.weights = [_check_weight(w, self.allow_negative) for w, _ in terms]
        self.terms = nn.ModuleList([t for _, t in terms])

    def _terms(self) -> list[tuple[float, nn.Module]]:
        return list(zip(self.weights, self.terms))

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    def forward(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        total: Tensor | None = None
        for w, term in zip(self.weights, self.terms):
            v = w * term(x, logits=logits)
            total = v if total is None else total + v
        assert total is not None
        return total
