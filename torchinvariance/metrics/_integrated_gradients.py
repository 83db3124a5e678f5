r"""Integrated gradients from a zero baseline: the quadrature, the chunking and two backends.

The attribution algorithm, the quadrature rule (:func:`_gauss_legendre`) and the
batching (:func:`_steps_per_chunk`) are separate pieces; the saliency recipe built
on them (threshold, blur, realignment) lives in :mod:`torchinvariance.metrics.saliency`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from torchinvariance.orbit import model_output

__all__ = ["integrated_gradients"]

# Default IG chunking: at most this many input scalars per forward/backward pass (~32 MB in float32).
_IG_BUDGET = 2**23
_INSTALL_HINT = "pip install torchinvariance[saliency]"


def _steps_per_chunk(x: Tensor, n_steps: int, internal_batch_size: int | None) -> int:
    """Integration steps per forward/backward pass; every pass holds all inputs of ``x`` at those steps."""
    n_examples = x.shape[0]
    if internal_batch_size is None:
        return max(1, min(n_steps, _IG_BUDGET // max(1, x[0].numel() * n_examples)))
    if internal_batch_size < n_examples:
        raise ValueError(
            f"internal_batch_size={internal_batch_size} is smaller than the {n_examples} inputs of one "
            "integrated-gradients call (every chunk holds at least one step of every input); "
            "use a larger internal_batch_size or smaller batches"
        )
    return min(n_steps, internal_batch_size // n_examples)


@functools.lru_cache(maxsize=32)
def _gauss_legendre(n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    r"""Gauss-Legendre positions :math:`\alpha_k` and weights :math:`w_k` on :math:`[0, 1]` (float64).

    The ``n_steps``-point rule of :func:`numpy.polynomial.legendre.leggauss` on :math:`[-1, 1]`, mapped
    to :math:`[0, 1]` (:math:`\alpha = (1 + t) / 2`, :math:`w = w_t / 2`): the default ``"gausslegendre"``
    method of captum's ``IntegratedGradients``, so both backends evaluate the same points.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return tuple((0.5 * (1.0 + nodes)).tolist()), tuple((0.5 * weights).tolist())


def _integrated_gradients_torch(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n_steps: int,
    internal_batch_size: int | None,
) -> Tensor:
    r"""Integrated gradients of ``f(x)[target]`` from a zero baseline in plain torch.

    .. math::
        \mathrm{IG}(x) = x \odot \sum_{k=1}^{K} w_k\,
        \frac{\partial f_t(\alpha_k x)}{\partial x}

    with the Gauss-Legendre rule of :func:`_gauss_legendre`, as captum computes it. Per chunk of steps the
    scaled inputs of ALL steps and samples go through ONE forward; the target logits are gathered and
    summed to one scalar, and ONE :func:`torch.autograd.grad` gives every row's gradient at once. The sum is
    exact only because the rows are independent: row ``i`` of ``f(X)`` depends on row ``i`` of ``X`` alone,
    so :math:`\partial (\sum_j f_{t_j}(X_j)) / \partial X_i = \partial f_{t_i}(X_i) / \partial X_i`. A
    batch-dependent layer (BatchNorm in train mode, anything mixing rows) breaks this, hence the
    requirement that the model is in ``eval()`` mode. Captum instead backpropagates every output scalar
    separately (``torch.unbind``), which costs far more than the arithmetic.
    """
    n_examples = x.shape[0]
    per_chunk = _steps_per_chunk(x, n_steps, internal_batch_size)
    x = x.detach()
    alphas, weights = _gauss_legendre(n_steps)
    alphas_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    weights_t = torch.tensor(weights, dtype=x.dtype, device=x.device)
    bcast = (1,) * x.dim()
    total = torch.zeros_like(x)
    for start in range(0, n_steps, per_chunk):
        k = min(per_chunk, n_steps - start)
        # rows ordered (step, sample), as captum's torch.cat over the steps
        scaled = (alphas_t[start : start + k].view(k, *bcast) * x).reshape(k * n_examples, *x.shape[1:])
        scaled.requires_grad_(True)
        with torch.enable_grad():
            out = model(scaled)
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != k * n_examples:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"saliency maps need a classifier returning logits ({k * n_examples}, classes); got {got}"
                )
            picked = out.gather(1, target.repeat(k)[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, scaled)
        total += torch.tensordot(weights_t[start : start + k], grad.reshape(k, n_examples, -1), dims=1).reshape(x.shape)
    return total * x


def _integrated_gradients_captum(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n_steps: int,
    internal_batch_size: int | None,
) -> Tensor:
    """Integrated gradients of ``f(x)[target]`` from a zero baseline, ONE captum call for the batch."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as exc:  # pragma: no cover - exercised via monkeypatch
        raise ImportError(
            f"backend='captum' uses captum's IntegratedGradients, which is not installed: {_INSTALL_HINT}"
        ) from exc
    steps_per_chunk = _steps_per_chunk(x, n_steps, internal_batch_size)
    if internal_batch_size is None:
        internal_batch_size = x.shape[0] * steps_per_chunk
    ig = IntegratedGradients(model)
    x = x.detach()
    return ig.attribute(
        x,
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    ).detach()


def integrated_gradients(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n_steps: int,
    internal_batch_size: int | None,
    backend: str = "torch",
) -> Tensor:
    """Integrated gradients of the whole batch ``x`` with the chosen backend (one call, chunked steps).

    The model's output is read as everywhere else (:func:`~torchinvariance.orbit.model_output`): a tensor, or the
    logits of a dict or of an object with ``logits`` (a Hugging Face ``ModelOutput``).
    """

    def logits(z: Tensor) -> Tensor:
        return model_output(model(z), z.shape[0])

    if backend == "captum":
        return _integrated_gradients_captum(logits, x, target, n_steps, internal_batch_size)
    return _integrated_gradients_torch(logits, x, target, n_steps, internal_batch_size)
