r"""Divergences between a model's outputs and their reductions (below losses and metrics).

A divergence :math:`d(f(x), f(gx))` compares outputs sample by sample. Each
built-in comes in two forms:

- the public per-sample function, ``(N, ...) x (N, ...) -> (N,)``
  (:func:`l2_divergence`, :func:`kl_divergence`,
  :func:`normalized_l2_divergence`);
- a broadcast kernel used on orbits, ``f(x)`` ``(B, ...)`` against the outputs
  of the transformed copies ``(n, B, ...)`` without materializing ``n`` copies
  of ``f(x)``, with a fused total for ``reduction="mean"``/``"sum"``
  (:func:`orbit_divergence`).

Adding a divergence: write the per-sample function, its broadcast terms kernel
(and optionally a fused total), and add one entry to :data:`DIVERGENCES` and
``_BROADCAST``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "REDUCTIONS",
    "Divergence",
    "Reduction",
    "check_logits",
    "check_reduction",
    "divergence_name",
    "kl_divergence",
    "l2_divergence",
    "normalized_l2_divergence",
    "orbit_divergence",
    "reduce",
    "resolve_divergence",
]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
DivergenceFn = Callable[[Tensor, Tensor], Tensor]
Divergence = Union[Literal["l2", "kl", "normalized_l2"], DivergenceFn]
_EPS = 1e-12
_LOW = (torch.float16, torch.bfloat16)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def check_logits(fx: Tensor, what: str = "the 'kl' divergence", *, batch_dims: int = 1) -> None:
    """Raise :class:`ValueError` unless ``fx`` holds classifier logits ``(*batch, classes)``.

    Args:
        fx: the outputs.
        what: who needs logits (for the message).
        batch_dims: leading batch dimensions (2 for orbit outputs ``(n, B, C)``).
    """
    if fx.dim() != batch_dims + 1:
        raise ValueError(
            f"{what} needs classifier logits shaped (batch, classes); got model output of shape "
            f"{tuple(fx.shape[batch_dims - 1 :] if batch_dims > 1 else fx.shape)}"
            + (" per orbit element" if batch_dims > 1 else "")
        )


def l2_divergence(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""Half squared L2 distance per sample (paper eq. 2).

    .. math:: d(f(x), f(gx)) = \tfrac12 \lVert f(x) - f(gx) \rVert_2^2

    Args:
        fx: outputs ``(N, ...)``.
        fgx: outputs of the transformed inputs, same shape.

    Returns:
        ``(N,)`` tensor, summed over all non-batch dimensions.

    Example:
        >>> import torch, torchinvariance as ti
        >>> ti.l2_divergence(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([2.])
    """
    return 0.5 * _flat(fx - fgx).pow(2).sum(1)


def normalized_l2_divergence(fx: Tensor, fgx: Tensor, detach_denominator: bool = False) -> Tensor:
    r"""Squared L2 distance normalized by the magnitude of :math:`f(x)` (paper §4.4).

    .. math:: d(f(x), f(gx)) = \lVert f(x) - f(gx) \rVert_2^2 / \lVert f(x) \rVert_2^2

    The denominator is clamped at :math:`10^{-12}`. With the paper's
    definition (the default) the gradient also flows through the denominator,
    so a network can lower the loss by inflating :math:`\lVert f(x) \rVert`;
    ``detach_denominator=True`` treats the denominator as a constant (pass
    ``functools.partial(ti.normalized_l2_divergence, detach_denominator=True)``
    as the ``divergence`` of :class:`~torchinvariance.InvarianceLoss`).

    Example:
        >>> import torch, torchinvariance as ti
        >>> ti.normalized_l2_divergence(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([1.])
    """
    denominator = _flat(fx).pow(2).sum(1).clamp_min(_EPS)
    if detach_denominator:
        denominator = denominator.detach()
    return _flat(fx - fgx).pow(2).sum(1) / denominator


def _kl_from_log(log_u: Tensor, log_q: Tensor) -> Tensor:
    r""":math:`\sum_c u_c (\log u_c - \log q_c)` with :math:`0 \log 0 = 0` (masked classes), gradient-safe."""
    u = log_u.exp()
    diff = torch.where(u > 0, log_u - log_q, torch.zeros((), dtype=log_u.dtype, device=log_u.device))
    return (u * diff).sum(-1)


def kl_divergence(fx: Tensor, fgx: Tensor) -> Tensor:
    r"""KL divergence between the softmax distributions of logits (paper eq. 1).

    .. math::
        d(f(x), f(gx)) = \sum_c u_c \log \frac{u_c}{q_c}, \quad
        u = \mathrm{softmax}\, f(x),\; q = \mathrm{softmax}\, f(gx)

    Classes with :math:`u_c = 0` (e.g. logits masked to :math:`-\infty`) add 0
    (the convention :math:`0 \log 0 = 0`), so two identical masked
    distributions have divergence 0, not NaN.

    Args:
        fx: logits ``(N, C)``.
        fgx: logits ``(N, C)``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> ti.kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3))
        tensor([0.])
        >>> t = torch.tensor([[0.0, float("-inf"), 1.0]])
        >>> ti.kl_divergence(t, t)
        tensor([0.])
    """
    check_logits(fx)
    return _kl_from_log(F.log_softmax(fx, dim=-1), F.log_softmax(fgx, dim=-1))


#: The built-in divergences by name (per-sample form).
DIVERGENCES: dict[str, DivergenceFn] = {
    "l2": l2_divergence,
    "kl": kl_divergence,
    "normalized_l2": normalized_l2_divergence,
}


# ------------------------------------------------------------------ broadcast kernels
# f(x) (B, ...) against the orbit outputs (n, B, ...): terms -> (n, B), and fused totals (their sum). Outputs may be
# one value per sample, (B,) and (n, B): the sums run over the dims after the batch, none of them then.
def _orbit_flat(fgx: Tensor) -> Tensor:
    return fgx.flatten(2) if fgx.dim() > 2 else fgx.unsqueeze(2)  # (n, B, features), also for an empty batch


def _l2_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    return 0.5 * _orbit_flat(fgx - fx).pow(2).sum(2)


def _l2_total(fx: Tensor, fgx: Tensor) -> Tensor:
    return 0.5 * F.mse_loss(fgx, fx.expand_as(fgx), reduction="sum")  # one fused kernel, forward and backward


def _normalized_l2_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    return _orbit_flat(fgx - fx).pow(2).sum(2) / _orbit_flat(fx[None]).pow(2).sum(2)[0].clamp_min(_EPS)


def _kl_terms(fx: Tensor, fgx: Tensor) -> Tensor:
    # log-softmax of f(x) once for the batch, not once per group element
    return _kl_from_log(F.log_softmax(fx, dim=-1), F.log_softmax(fgx, dim=-1))


_BROADCAST: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor] | None]] = {
    "l2": (_l2_terms, _l2_total),
    "kl": (_kl_terms, None),
    "normalized_l2": (_normalized_l2_terms, None),
}


def resolve_divergence(divergence: Divergence) -> DivergenceFn:
    """Turn a divergence name or callable into a callable ``(fx, fgx) -> (N,)``.

    Raises:
        ValueError: an unknown name (the message lists the built-in ones).
    """
    if callable(divergence):
        return divergence
    if isinstance(divergence, str) and divergence in DIVERGENCES:
        return DIVERGENCES[divergence]
    raise ValueError(
        f"divergence must be one of {sorted(DIVERGENCES)} or a callable (fx, fgx) -> "
        f"per-sample tensor; got {divergence!r}"
    )


def divergence_name(divergence: Divergence) -> str:
    """A readable name: the built-in name, or the callable's ``__name__``."""
    if isinstance(divergence, str):
        return divergence
    return getattr(divergence, "__name__", type(divergence).__name__)


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``"mean"``, ``"sum"``, ``"none"``, else raise :class:`ValueError`."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to a ``(n_elements, batch)`` matrix of terms (``"none"`` returns it)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def orbit_divergence(divergence: Divergence, fx: Tensor, fgx: Tensor, *, total: bool = False) -> Tensor:
    r"""Divergences between ``f(x)`` and the outputs on transformed copies, broadcasting ``f(x)``.

    .. math:: T_{ib} = d\big(f(x_b), f(g_i x_b)\big)

    Args:
        divergence: a built-in name or a callable ``(fx, fgx) -> (N,)`` on
            same-shaped ``(N, ...)`` tensors.
        fx: outputs ``(B, ...)``.
        fgx: outputs ``(n, B, ...)`` of ``n`` transformed copies of the batch.
        total: return :math:`\sum_{ib} T_{ib}` (a fused kernel where one
            exists) instead of the matrix.

    Returns:
        ``(n, B)`` terms, or their sum with ``total=True``. Half-precision
        outputs are compared in float32.

    Raises:
        ValueError: ``fgx`` rows not shaped like ``fx``, or a custom divergence
            that does not return one value per sample.

    Example:
        >>> import torch
        >>> from torchinvariance.divergences import orbit_divergence
        >>> fx = torch.zeros(2, 3)
        >>> fgx = torch.stack([fx, fx + 1.0])  # identity, then a shifted copy
        >>> orbit_divergence("l2", fx, fgx)
        tensor([[0.0000, 0.0000],
                [1.5000, 1.5000]])
    """
    if fgx.shape[1:] != fx.shape:
        raise ValueError(
            f"f(x) has shape {tuple(fx.shape)} but the outputs on the transformed copies have shape "
            f"{tuple(fgx.shape[1:])} each; they must match (are the logits= passed to the loss the model's output "
            "on this batch, with the same number of classes?)"
        )
    if fx.dtype in _LOW:
        fx, fgx = fx.float(), fgx.float()
    kernels = _BROADCAST.get(divergence) if isinstance(divergence, str) else None
    if kernels is not None:
        if total and kernels[1] is not None:
            return kernels[1](fx, fgx)
        terms = kernels[0](fx, fgx)
        return terms.sum() if total else terms
    n, b = fgx.shape[:2]
    ref = fx.unsqueeze(0).expand(n, *fx.shape).reshape(n * b, *fx.shape[1:])
    fn = resolve_divergence(divergence)
    out = fn(ref, fgx.reshape(n * b, *fgx.shape[2:]))
    if not isinstance(out, Tensor) or out.shape != (n * b,):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"divergence {divergence_name(divergence)!r} must return one value per sample: called on two "
            f"({n * b}, ...) tensors it must give shape ({n * b},); got {got}. Reduce over the non-batch "
            "dimensions only, e.g. `(fx - fgx).pow(2).flatten(1).sum(1)`"
        )
    terms = out.reshape(n, b)
    return terms.sum() if total else terms
