r"""Invariance error regularizers (paper eq. 4).

.. math::
    \min_\theta \; \mathcal{L}_f(\mathcal{D}) + \nu \, I_f(\mathcal{D}, \mathcal{G})

:class:`InvarianceLoss` computes :math:`I_f` for any model and any
:class:`~torchinvariance.groups.Group`; losses compose with ``+`` and ``*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from torchinvariance._checks import check_model
from torchinvariance.groups import Group, check_group

__all__ = [
    "DIVERGENCES",
    "InvarianceLoss",
    "WeightedInvarianceLoss",
    "kl_divergence",
    "l2_divergence",
    "normalized_l2_divergence",
]

Reduction = Literal["mean", "sum", "none"]
Divergence = Union[Literal["l2", "kl", "normalized_l2"], Callable[[Tensor, Tensor], Tensor]]
_REDUCTIONS = ("mean", "sum", "none")
_EPS = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def l2_divergence(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""Half squared L2 distance per sample (paper eq. 2).

    .. math:: d(f(x), f(gx)) = \tfrac12 \lVert f(x) - f(gx) \rVert_2^2

    Args:
        fx: outputs ``(N, ...)``.
        fgx: outputs of the transformed inputs, same shape.

    Returns:
        ``(N,)`` tensor, summed over all non-batch dimensions.

    Example:
        >>> import torch
        >>> l2_divergence(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([2.])
    """
    return 0.5 * _flat(fx - fgx).pow(2).sum(1)


def normalized_l2_divergence(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""Squared L2 distance normalized by the magnitude of :math:`f(x)` (paper §4.4).

    .. math:: d(f(x), f(gx)) = \lVert f(x) - f(gx) \rVert_2^2 / \lVert f(x) \rVert_2^2

    Example:
        >>> import torch
        >>> normalized_l2_divergence(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([1.])
    """
    return _flat(fx - fgx).pow(2).sum(1) / _flat(fx).pow(2).sum(1).clamp_min(_EPS)


def kl_divergence(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""KL divergence between the softmax distributions of logits (paper eq. 1).

    .. math::
        d(f(x), f(gx)) = \sum_c u_c \log \frac{u_c}{q_c}, \quad
        u = \mathrm{softmax}\, f(x),\; q = \mathrm{softmax}\, f(gx)

    Args:
        fx: logits ``(N, C)``.
        fgx: logits ``(N, C)``.

    Example:
        >>> import torch
        >>> kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3))
        tensor([0.])
    """
    if fx.dim() != 2:
        raise ValueError(
            "the 'kl' divergence needs classifier logits shaped (batch, classes); "
            f"got model output of shape {tuple(fx.shape)}"
        )
    log_u = F.log_softmax(fx, dim=-1)
    log_q = F.log_softmax(fgx, dim=-1)
    return (log_u.exp() * (log_u - log_q)).sum(-1)


DIVERGENCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": l2_divergence,
    "kl": kl_divergence,
    "normalized_l2": normalized_l2_divergence,
}


def _l2_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    # fx (B, ...) broadcasts against fgx (n, B, ...); sum over the non-batch dims -> (n, B)
    return 0.5 * (fgx - fx).pow(2).flatten(2).sum(2)


def _normalized_l2_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    return (fgx - fx).pow(2).flatten(2).sum(2) / fx.pow(2).flatten(1).sum(1).clamp_min(_EPS)


def _kl_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    log_u = F.log_softmax(fx, dim=-1)  # once for the batch, not once per group element
    return (log_u.exp() * (log_u - F.log_softmax(fgx, dim=-1))).sum(-1)


def _l2_total(fx: Tensor, fgx: Tensor) -> Tensor:
    # the sum of _l2_terms in one fused kernel (forward and backward)
    return 0.5 * F.mse_loss(fgx, fx.expand_as(fgx), reduction="sum")


def _kl_total(fx: Tensor, fgx: Tensor) -> Tensor:
    log_u = F.log_softmax(fx, dim=-1).expand_as(fgx)
    return F.kl_div(F.log_softmax(fgx, dim=-1), log_u, reduction="sum", log_target=True)


def _normalized_l2_total(fx: Tensor, fgx: Tensor) -> Tensor:
    return _normalized_l2_terms(fx, fgx).sum()


# the same divergences on f(x) (B, ...) vs the orbit's outputs (n, B, ...), broadcasting f(x) instead of
# materializing n copies of it: per-term kernels -> (n, B), and their sums for reduction "mean"/"sum"
_BROADCAST: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "l2": (_l2_terms, _l2_total),
    "kl": (_kl_terms, _kl_total),
    "normalized_l2": (_normalized_l2_terms, _normalized_l2_total),
}


def resolve_divergence(divergence: Divergence) -> Callable[[Tensor, Tensor], Tensor]:
    """Turn a divergence name or callable into a callable ``(fx, fgx) -> (N,)``."""
    if callable(divergence):
        return divergence
    if divergence in DIVERGENCES:
        return DIVERGENCES[divergence]
    raise ValueError(
        f"divergence must be one of {sorted(DIVERGENCES)} or a callable (fx, fgx) -> "
        f"per-sample tensor; got {divergence!r}"
    )


def check_reduction(reduction: str) -> str:
    """Validate a ``reduction`` option."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to a ``(n_elements, batch)`` tensor."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class _Composable(nn.Module):
    """Mixin giving invariance losses ``a + b`` and ``w * a``."""

    def _terms(self) -> list[tuple[float, nn.Module]]:
        return [(1.0, self)]

    def __add__(self, other: object) -> WeightedInvarianceLoss:
        if not isinstance(other, _Composable):
            return NotImplemented
        return WeightedInvarianceLoss(self._terms() + other._terms())

    def __mul__(self, weight: object) -> WeightedInvarianceLoss:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return WeightedInvarianceLoss([(float(weight) * w, t) for w, t in self._terms()])

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

    Args:
        model: any module; its output may be logits ``(B, C)`` or any feature
            tensor ``(B, ...)`` (``"kl"`` needs logits).
        group: the group.
        divergence: ``"l2"`` (:func:`l2_divergence`, the paper's logit
            invariance), ``"kl"`` (:func:`kl_divergence`),
            ``"normalized_l2"`` (:func:`normalized_l2_divergence`) or a
            callable ``(fx, fgx) -> (N,)`` on two same-shaped ``(N, ...)``
            tensors.
        elements: ``None`` for the whole group, an int ``k`` to draw ``k``
            elements uniformly per call (cost grows with ``k``), or an explicit
            list of elements.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        chunk_size: if given, run at most this many group elements per forward,
            each chunk under activation checkpointing (also when one chunk holds
            them all): autograd then keeps only ``x`` and ``f(x)`` between forward
            and backward, and one chunk's activations are recomputed at a time,
            so peak memory does not grow with the group order. Costs one extra
            forward of the transformed inputs.
        generator: random generator for ``elements=k``.

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
    ) -> None:
        super().__init__()
        check_group(group)
        check_model(model)
        self.model = model
        self.group = group
        self.divergence = divergence
        self._div = resolve_divergence(divergence)
        self.reduction = check_reduction(reduction)
        if elements is not None and not isinstance(elements, int):
            elements = [group._check_element(g) for g in elements]
            if not elements:
                raise ValueError("elements must not be an empty list")
        elif isinstance(elements, int) and (isinstance(elements, bool) or elements < 1):
            raise ValueError(f"elements=k needs k >= 1, got {elements!r}")
        self.elements = elements
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.generator = generator

    def extra_repr(self) -> str:
        div = self.divergence if isinstance(self.divergence, str) else getattr(self.divergence, "__name__", "callable")
        return f"group={self.group!r}, divergence={div!r}, elements={self.elements!r}, reduction={self.reduction!r}"

    def _elements(self) -> list[int]:
        if self.elements is None:
            return list(self.group.elements())
        if isinstance(self.elements, int):
            return self.group.sample(self.elements, generator=self.generator)
        return list(self.elements)

    def _check_batch(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"InvarianceLoss expects a tensor batch, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"InvarianceLoss needs a non-empty batch (B, ...); got shape {tuple(x.shape)}")
        self.group.check_input(x)

    def _pair_terms(self, fx: Tensor, fgx: Tensor) -> Tensor:
        """Divergences between ``fx`` ``(B, ...)`` and the orbit outputs ``fgx`` ``(n, B, ...)``.

        Returns the ``(n, B)`` terms for ``reduction="none"``, else their sum (a scalar).
        """
        if fx.dtype in _LOW:
            fx, fgx = fx.float(), fgx.float()
        kernels = _BROADCAST.get(self.divergence) if isinstance(self.divergence, str) else None
        if kernels is not None:
            return kernels[0](fx, fgx) if self.reduction == "none" else kernels[1](fx, fgx)
        n, b = fgx.shape[:2]
        ref = fx.unsqueeze(0).expand(n, *fx.shape).reshape(n * b, *fx.shape[1:])
        terms = self._div(ref, fgx.reshape(n * b, *fgx.shape[2:])).reshape(n, b)
        return terms if self.reduction == "none" else terms.sum()

    def _orbit_terms(self, x: Tensor, fx: Tensor, els: Sequence[int]) -> Tensor:
        """:meth:`_pair_terms` for non-identity elements ``els``: their orbit in one batched forward."""
        n, b = len(els), x.shape[0]
        # one element: its transform as is (stacking would copy the batch once more)
        rows = self.group.act(els[0], x) if n == 1 else self.group.orbit(x, els).reshape(n * b, *x.shape[1:])
        fgx = self.model(rows)
        if not isinstance(fgx, Tensor) or fgx.dim() == 0 or fgx.shape[0] != n * b:
            raise ValueError(
                f"model output must be a tensor with the batch in dim 0 ({n * b}); got "
                f"{tuple(fgx.shape) if isinstance(fgx, Tensor) else type(fgx).__name__}"
            )
        return self._pair_terms(fx, fgx.reshape(n, b, *fgx.shape[1:]))

    def _nonid_terms(self, x: Tensor, fx: Tensor, nonid: Sequence[int]) -> Tensor:
        if self.chunk_size is None:
            return self._orbit_terms(x, fx, nonid)
        # always checkpoint with chunk_size, even for one chunk: autograd then keeps only x and f(x),
        # and each chunk's activations live only while that chunk is recomputed in backward
        parts = [
            checkpoint(self._orbit_terms, x, fx, list(nonid[i : i + self.chunk_size]), use_reentrant=False)
            for i in range(0, len(nonid), self.chunk_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if self.reduction == "none" else torch.stack(parts).sum()

    def _reduce(self, terms: Tensor | None, els: Sequence[int], fx: Tensor) -> Tensor:
        """Finish the reduction: the identity's terms are exactly 0 and only count in the mean.

        ``terms`` are the non-identity terms ``(m, B)`` for ``reduction="none"``, else their sum.
        """
        dtype = torch.float32 if fx.dtype in _LOW else fx.dtype
        b = fx.shape[0]
        if self.reduction != "none":
            if terms is None:
                return fx.new_zeros((), dtype=dtype)
            return terms / (len(els) * b) if self.reduction == "mean" else terms
        values = fx.new_zeros((len(els), b), dtype=dtype)
        if terms is None:
            return values
        idx = [i for i, g in enumerate(els) if g != self.group.identity]
        if len(idx) == len(els):
            return terms.to(dtype)
        return values.index_put((torch.tensor(idx, device=values.device),), terms.to(dtype))

    def _check_output(self, fx: Tensor, batch: int) -> None:
        if not isinstance(fx, Tensor) or fx.dim() == 0 or fx.shape[0] != batch:
            raise ValueError(
                f"the model output (logits) must be a tensor with batch size {batch} in dim 0; got "
                f"{tuple(fx.shape) if isinstance(fx, Tensor) else type(fx).__name__}"
            )
        if self.divergence == "kl" and fx.dim() != 2:
            raise ValueError(
                "the 'kl' divergence needs classifier logits shaped (batch, classes); "
                f"got model output of shape {tuple(fx.shape)}"
            )

    def forward_with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Compute ``(invariance_error, f(x))`` in ONE batched forward.

        Useful under :class:`~torch.nn.parallel.DistributedDataParallel`, where
        the model should be called once per step, and when the task loss needs
        ``f(x)`` too.
        """
        self._check_batch(x)
        if self.chunk_size is not None:
            fx = self.model(x)
            return self.forward(x, logits=fx), fx
        els = self._elements()
        nonid = [g for g in els if g != self.group.identity]
        b = x.shape[0]
        out = self.model(self.group.orbit(x, [self.group.identity, *nonid]).reshape(-1, *x.shape[1:]))
        fx = out[:b]
        self._check_output(fx, b)
        if out.shape[0] != (1 + len(nonid)) * b:
            raise ValueError(
                f"model output must be a tensor with the batch in dim 0 ({(1 + len(nonid)) * b}); "
                f"got {tuple(out.shape)}"
            )
        terms = self._pair_terms(fx, out[b:].reshape(len(nonid), b, *out.shape[1:])) if nonid else None
        return self._reduce(terms, els, fx), fx

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
        self._check_batch(x)
        self._check_output(logits, x.shape[0])
        els = self._elements()
        nonid = [g for g in els if g != self.group.identity]
        terms = self._nonid_terms(x, logits, nonid) if nonid else None
        return self._reduce(terms, els, logits)


_LOW = (torch.float16, torch.bfloat16)


class WeightedInvarianceLoss(_Composable):
    r"""A weighted sum of invariance losses, built by ``a + b`` and ``w * a``.

    .. math:: I = \sum_k w_k I^{(k)}

    Each term is called with the same ``x`` (and ``logits``, which must be the
    output of every term's model; leave it ``None`` when the terms regularize
    different modules). Terms must use ``reduction="mean"`` or ``"sum"``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> rot = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
        >>> shift = ti.InvarianceLoss(model, ti.get_group("translation", order=3))
        >>> both = rot + 0.5 * shift
        >>> both(torch.randn(2, 1, 6, 6)).shape
        torch.Size([])
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        for _, t in terms:
            if getattr(t, "reduction", "mean") == "none":
                raise ValueError("terms of a composed invariance loss need reduction 'mean' or 'sum', got 'none'")
        self.weights = [float(w) for w, _ in terms]
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
