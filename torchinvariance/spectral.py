r"""Input sensitivity: spectral norms of input Jacobians and of weight matrices (paper §3.3, Fig. 5).

Proposition 3.1 of the paper: minimizing the logit invariance error of a
linear model :math:`h(x) = Wx` never increases :math:`\sigma_{\max}(W)`; the
functions here measure that "invariance-induced spectral decay" on any model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from torchinvariance.orbit import measuring, model_output

__all__ = ["jacobian_spectral_norm", "weight_spectral_norms"]

Method = Literal["auto", "exact", "power"]
_METHODS = ("auto", "exact", "power")
_AUTO_MAX_OUTPUTS = 64


def _check_args(model: Callable[[Tensor], Tensor], x: Tensor, method: str, n_iter: int, tol: float) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor batch (B, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")


def _tensor_model(model: Callable[[Tensor], object]) -> Callable[[Tensor], Tensor]:
    """``model`` returning its output tensor, checked as the metrics check it (a dict's ``logits`` is taken)."""

    def f(x: Tensor) -> Tensor:
        return model_output(model(x), x.shape[0])

    return f


def _exact(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    b = x.shape[0]

    def single(xi: Tensor) -> Tensor:
        return model(xi.unsqueeze(0)).reshape(-1)

    jac = torch.func.vmap(torch.func.jacrev(single))(x)  # (B, m, *in)
    jac = jac.reshape(b, jac.shape[1], -1)
    return torch.linalg.matrix_norm(jac, ord=2)


def _per_sample_normalize(v: Tensor) -> Tensor:
    norms = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norms.reshape(-1, *([1] * (v.dim() - 1)))


def _power(
    model: Callable[[Tensor], Tensor], x: Tensor, n_iter: int, tol: float, generator: torch.Generator | None
) -> Tensor:
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    v = _per_sample_normalize(v)
    out, vjp_fn = torch.func.vjp(model, x)  # u -> J^T u, per sample (samples do not interact)
    # J v as the vjp of the linear map u -> J^T u (double backward: no forward-mode AD needed)
    _, jvp_fn = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(out))
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(n_iter):
        u = jvp_fn(v)[0].detach()
        new_sigma = u.reshape(u.shape[0], -1).norm(dim=1)
        v = _per_sample_normalize(vjp_fn(u)[0].detach())  # J^T J v, normalized
        converged = bool(((new_sigma - sigma).abs() <= tol * new_sigma).all())
        sigma = new_sigma
        if converged:
            break
    u = jvp_fn(v)[0].detach()
    return torch.maximum(sigma, u.reshape(u.shape[0], -1).norm(dim=1))


def jacobian_spectral_norm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    method: Method = "auto",
    n_iter: int = 100,
    tol: float | None = None,
    generator: torch.Generator | None = None,
    *,
    eval_mode: bool = True,
) -> Tensor:
    r"""Per-sample largest singular value of the input Jacobian of ``model``.

    .. math::
        s_b = \sigma_{\max}\big(J_f(x_b)\big) = \max_{\lVert v \rVert_2 = 1}
        \lVert J_f(x_b)\, v \rVert_2, \qquad J_f(x) = \frac{\partial f(x)}{\partial x}

    with inputs and outputs flattened per sample; no reduction (one value per
    sample). For a linear model :math:`f(x) = Wx + c` this is
    :math:`\lVert W \rVert_2` for every sample.

    - ``"exact"``: the full Jacobian ``(m, d)`` per sample with
      :func:`torch.func.jacrev` under :func:`torch.func.vmap` (``m`` backward
      passes), then :func:`torch.linalg.matrix_norm` with ``ord=2``.
    - ``"power"``: power iteration on :math:`J^\top J` with two reusable
      :func:`torch.func.vjp` functions (:math:`u \mapsto J^\top u` and, by
      double backward, :math:`v \mapsto J v`); needs no Jacobian in memory.
      Runs until the relative change of every estimate is at most ``tol``
      or for ``n_iter`` steps. The estimate is a lower
      bound that converges at the rate :math:`(\sigma_2/\sigma_1)^2`.
      It treats the batch as independent samples (hence ``eval_mode``).
    - ``"auto"``: ``"exact"`` for outputs of at most 64 values per sample
      (classifiers), ``"power"`` beyond.

    Args:
        model: function or module mapping ``(B, ...)`` to ``(B, ...)`` (or to a dict or object with
            ``logits``, as the metrics accept).
        x: float batch ``(B, ...)``.
        method: ``"auto"``, ``"exact"`` or ``"power"``.
        n_iter: maximum number of power iterations.
        tol: relative tolerance to stop the power iteration; ``None`` means
            ``1e-7`` for float64 inputs and ``1e-5`` otherwise (about the
            rounding noise of the estimate).
        generator: random generator for the power iteration's start vector
            (default: a fixed seed, so results are reproducible).
        eval_mode: measure in eval mode (default), as the metrics do: a
            train-mode BatchNorm couples the samples of a batch (and fails on
            the one-sample probe). ``False`` keeps the model's modes. Either
            way the modes and buffers are restored afterwards.

    Returns:
        ``(B,)`` detached tensor in ``x``'s dtype.

    Example:
        >>> import torch, torchinvariance as ti
        >>> lin = torch.nn.Linear(3, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
        >>> x = torch.randn(5, 3)
        >>> ti.jacobian_spectral_norm(lin, x)
        tensor([4., 4., 4., 4., 4.])
        >>> torch.allclose(ti.jacobian_spectral_norm(lin, x, method="power"), torch.full((5,), 4.0))
        True
    """
    _check_args(model, x, method, n_iter, 0.0 if tol is None else tol)
    if tol is None:
        tol = 1e-7 if x.dtype == torch.float64 else 1e-5
    x = x.detach()
    f = _tensor_model(model)
    with measuring(model, eval_mode):
        with torch.no_grad():
            m = f(x[:1]).numel()
        if method == "auto":
            method = "exact" if m <= _AUTO_MAX_OUTPUTS else "power"
        if method == "exact":
            out = _exact(f, x)
        else:
            out = _power(f, x, n_iter, float(tol), generator)
    return out.detach()


def weight_spectral_norms(model: nn.Module) -> dict[str, float]:
    r"""Largest singular value of the weight of every linear and convolution layer.

    .. math:: \sigma_{\max}(W) = \lVert W \rVert_2, \qquad W \in \mathbb{R}^{o \times (i k)}

    ``nn.Linear`` weights are used as they are; convolution kernels
    (``nn.Conv1d/2d/3d`` and transposed ones) are reshaped to
    ``(weight.shape[0], -1)``, the usual proxy (Yoshida & Miyato, 2017), which
    is not the operator norm of the convolution itself. Computed in float64.

    Args:
        model: any module.

    Returns:
        ``{parameter name: sigma_max}`` in module order, keys as in
        ``model.state_dict()`` (e.g. ``"0.weight"``); empty if there are no
        such layers. Uninitialized (lazy) layers are skipped.

    Example:
        >>> import torch, torchinvariance as ti
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.diag(torch.tensor([2.0, -5.0])))
        >>> ti.weight_spectral_norms(net)
        {'0.weight': 5.0}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    norms: dict[str, float] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        weight = module.weight
        if isinstance(weight, nn.parameter.UninitializedParameter):
            continue
        w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
        key = f"{name}.weight" if name else "weight"
        norms[key] = float(torch.linalg.matrix_norm(w, ord=2))
    return norms
