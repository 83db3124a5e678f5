r"""Invariance metrics as pure functions (paper §3.2, eqs. 1-3).

Every metric evaluates the whole orbit :math:`\{g x : g \in \mathcal{G}\}` of a
batch in one batched call and returns, with ``reduction="none"``, a
``(group.order, batch)`` matrix whose row ``i`` belongs to the group element
``group.elements()[i]`` (identity first). ``"mean"`` averages over samples AND
group elements, identity included, exactly as
:class:`~torchinvariance.InvarianceLoss` does; ``"sum"`` adds them up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from torchinvariance._checks import check_model
from torchinvariance.groups import Group, check_group
from torchinvariance.losses import check_reduction, kl_divergence, l2_divergence, reduce

__all__ = [
    "distribution_invariance",
    "logit_invariance",
    "saliency_invariance",
    "saliency_map",
]

Reduction = Literal["mean", "sum", "none"]
Padding = Literal["circular", "reflect", "zeros"]
_PADDINGS = ("circular", "reflect", "zeros")
Backend = Literal["torch", "captum"]
_BACKENDS = ("torch", "captum")
_LOW = (torch.float16, torch.bfloat16)
# Cosine similarity: maps are normalized by max(||m||, _EPS), so an all-zero map has similarity 0.
_EPS = 1e-12
# Default IG chunking: at most this many input scalars per forward/backward pass (~32 MB in float32).
_IG_BUDGET = 2**23
_INSTALL_HINT = "pip install torchinvariance[saliency]"


# ---------------------------------------------------------------------------- validation helpers
def _check_batch(group: Group, x: Tensor) -> None:
    """``x`` must be a non-empty batch ``(B, ...)`` that ``group`` can act on."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor batch (B, ...), got {type(x).__name__}")
    if x.dim() < group.event_ndim + 1 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch (B, ...) with at least {group.event_ndim} dims after the batch "
            f"dim for {group!r} to act on; got shape {tuple(x.shape)}"
        )
    group.check_input(x[:1])


def _check_finite(out: Tensor, group: Group, what: str = "model output") -> None:
    """``out`` is ``(n_elements, B, ...)``; name the group elements with non-finite values."""
    finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
    if not bool(finite.all()):
        bad = [group.element_name(g) for g, ok in zip(group.elements(), finite.tolist()) if not ok]
        raise ValueError(f"{what} contains NaN or Inf on the orbit elements {bad} of {group!r}")


def _orbit_outputs(model: Callable[[Tensor], Tensor], group: Group, x: Tensor) -> Tensor:
    """Model outputs on the whole orbit in ONE batched forward: ``(group.order, B, ...)``."""
    check_model(model)
    check_group(group)
    _check_batch(group, x)
    n, b = group.order, x.shape[0]
    out = model(group.orbit(x).reshape(n * b, *x.shape[1:]))
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != n * b:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the model must return a tensor with the batch in dim 0 ({n * b} = {n} orbit elements x "
            f"{b} samples); got {got}"
        )
    out = out.reshape(n, b, *out.shape[1:])
    _check_finite(out, group)
    return out


def _check_logits(out: Tensor, metric: str) -> None:
    if out.dim() != 3:
        raise ValueError(
            f"{metric} needs classifier logits shaped (batch, classes); got a model output of shape "
            f"{tuple(out.shape[1:])} per orbit element"
        )


def _divergence_terms(out: Tensor, divergence: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``d(f(x), f(g x))`` for orbit outputs ``(n, B, ...)`` -> ``(n, B)``; row 0 (identity) is 0."""
    if out.dtype in _LOW:
        out = out.float()
    n, b = out.shape[:2]
    ref = out[:1].expand_as(out).reshape(n * b, *out.shape[2:])
    return divergence(ref, out.reshape(n * b, *out.shape[2:])).reshape(n, b)


# ---------------------------------------------------------------------------- DI and LI
def distribution_invariance(
    model: Callable[[Tensor], Tensor], group: Group, x: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    r"""Predictive distribution invariance error DI (paper eq. 1).

    .. math::
        DI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G}}
        D_{KL}\big(u_{x_b} \,\|\, q_{g x_b}\big), \qquad
        u_x = \mathrm{softmax} f(x),\; q_{gx} = \mathrm{softmax} f(gx)

    with :math:`n` the group order (identity included, its term is 0). The
    whole orbit goes through ``model`` in one batched forward. The result
    keeps the autograd graph (for training use
    :class:`~torchinvariance.InvarianceLoss`); wrap the call in
    :func:`torch.no_grad` to only measure.

    Args:
        model: classifier returning logits ``(N, C)`` for inputs ``(N, ...)``.
        group: the finite group.
        x: batch ``(B, ...)`` the group can act on.
        reduction: ``"mean"`` (over samples and group elements), ``"sum"`` or
            ``"none"`` for the ``(group.order, B)`` matrix of terms (row ``i``
            is element ``group.elements()[i]``).

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
    out = _orbit_outputs(model, group, x)
    _check_logits(out, "distribution_invariance")
    return reduce(_divergence_terms(out, kl_divergence), reduction)


def logit_invariance(
    model: Callable[[Tensor], Tensor], group: Group, x: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    r"""Logit invariance error LI (paper eq. 2).

    .. math::
        LI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G}}
        \tfrac12 \big\lVert f(x_b) - f(g x_b) \big\rVert_2^2

    with :math:`n` the group order (identity included, its term is 0). Any
    output shape ``(N, ...)`` works (the norm runs over all non-batch dims).
    The whole orbit goes through ``model`` in one batched forward; the result
    keeps the autograd graph.

    Args:
        model: module returning ``(N, ...)`` for inputs ``(N, ...)``.
        group: the finite group.
        x: batch ``(B, ...)`` the group can act on.
        reduction: ``"mean"`` (over samples and group elements), ``"sum"`` or
            ``"none"`` for the ``(group.order, B)`` matrix of terms.

    Returns:
        Scalar for ``"mean"``/``"sum"``, ``(group.order, B)`` for ``"none"``.

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
    out = _orbit_outputs(model, group, x)
    return reduce(_divergence_terms(out, l2_divergence), reduction)


# ---------------------------------------------------------------------------- saliency
def _check_saliency_options(
    n_steps: int,
    threshold: float,
    kernel_size: int,
    sigma: float,
    internal_batch_size: int | None,
    padding: str,
    backend: str = "torch",
) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1] (fraction of the map's max), got {threshold!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if internal_batch_size is not None and (
        isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1
    ):
        raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(
            f"backend must be one of {_BACKENDS} (integrated gradients in plain torch, or captum's "
            f"IntegratedGradients), got {backend!r}"
        )


def _check_image_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor batch (B, C, H, W), got {type(x).__name__}")
    if x.dim() < 3 or x.shape[0] == 0:
        raise ValueError(
            f"saliency maps need a non-empty image batch (B, H, W) or (B, C, ..., H, W); got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"saliency maps need a floating point input (integrated gradients), got {x.dtype}")


def _resolve_target(
    model: Callable[[Tensor], Tensor], x: Tensor, target: int | Sequence[int] | Tensor | None
) -> Tensor:
    """Target class per sample ``(B,)``: the prediction ``argmax f(x)`` unless given."""
    b = x.shape[0]
    with torch.no_grad():
        fx = model(x)
    if not isinstance(fx, Tensor) or fx.dim() != 2 or fx.shape[0] != b:
        got = tuple(fx.shape) if isinstance(fx, Tensor) else type(fx).__name__
        raise ValueError(f"saliency maps need a classifier returning logits ({b}, classes); got {got}")
    if not bool(torch.isfinite(fx).all()):
        raise ValueError("model output f(x) contains NaN or Inf; cannot pick a target class")
    n_classes = fx.shape[1]
    if target is None:
        return fx.argmax(1)
    if isinstance(target, bool):
        raise TypeError(f"target must be an int, a sequence of ints or a tensor, got {target!r}")
    t = torch.as_tensor(target, device=x.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"target must be an int or hold one class per sample ({b},); got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= n_classes)).any()):
        raise ValueError(
            f"target out of range: the model has {n_classes} classes (0..{n_classes - 1}), "
            f"got targets {sorted(set(t.tolist()))}"
        )
    return t


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
        total += torch.tensordot(weights_t[start : start + k], grad.view(k, n_examples, -1), dims=1).view_as(x)
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


def _integrated_gradients(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n_steps: int,
    internal_batch_size: int | None,
    backend: str = "torch",
) -> Tensor:
    """Integrated gradients of the whole batch ``x`` with the chosen backend (one call, chunked steps)."""
    if backend == "captum":
        return _integrated_gradients_captum(model, x, target, n_steps, internal_batch_size)
    return _integrated_gradients_torch(model, x, target, n_steps, internal_batch_size)


def _gaussian_kernel(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    k1 = torch.exp(-(r**2) / (2.0 * float(sigma) ** 2))
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).to(dtype=dtype, device=device)


def _postprocess(maps: Tensor, threshold: float, kernel_size: int, sigma: float, padding: str) -> Tensor:
    """``|IG|`` maps ``(N, ..., H, W)`` -> channel sum, threshold at ``threshold * max``, Gaussian blur."""
    m = maps.abs()
    if m.dim() > 3:
        m = m.sum(dim=tuple(range(1, m.dim() - 2)))
    peak = m.amax(dim=(-2, -1), keepdim=True)
    m = torch.where(m >= threshold * peak, m, torch.zeros_like(m))
    if kernel_size == 1:
        return m
    pad = kernel_size // 2
    kernel = _gaussian_kernel(kernel_size, sigma, m.dtype, m.device)[None, None]
    m4 = m.unsqueeze(1)
    if padding == "zeros":
        out = F.conv2d(m4, kernel, padding=pad)
    else:
        out = F.conv2d(F.pad(m4, (pad, pad, pad, pad), mode=padding), kernel)
    return out.squeeze(1)


def _saliency_maps(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n_steps: int,
    threshold: float,
    kernel_size: int,
    sigma: float,
    internal_batch_size: int | None,
    padding: str,
    backend: str = "torch",
) -> Tensor:
    attr = _integrated_gradients(model, x, target, n_steps, internal_batch_size, backend)
    if not bool(torch.isfinite(attr).all()):
        raise ValueError("integrated gradients contain NaN or Inf (non-finite model outputs or gradients)")
    return _postprocess(attr, threshold, kernel_size, sigma, padding)


def saliency_map(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    n_steps: int = 50,
    threshold: float = 0.9,
    kernel_size: int = 3,
    sigma: float = 1.0,
    internal_batch_size: int | None = None,
    *,
    padding: Padding = "circular",
    backend: Backend = "torch",
) -> Tensor:
    r"""Saliency map :math:`m_f(x)` of the paper (§4.1), one ``(H, W)`` map per sample.

    1. absolute integrated gradients (zero baseline, ``n_steps``
       Gauss-Legendre steps, the default method of captum's
       ``IntegratedGradients``) of the target logit, summed over channels
       (all dims between batch and ``(H, W)``):

       .. math::
           a(x) = \sum_c \Big| x_c \odot \int_0^1
           \frac{\partial f_t(\alpha x)}{\partial x_c}\, d\alpha \Big|

    2. values below ``threshold`` times the map's maximum set to 0:
       :math:`a \leftarrow a \cdot [a \ge \tau \max a]`;
    3. a normalized Gaussian filter of size ``kernel_size`` and standard
       deviation ``sigma`` (a ``conv2d``; ``padding`` keeps the size).

    The default ``backend="torch"`` is a plain-torch implementation of
    captum's integrated gradients (the same step positions and weights),
    checked against captum in the tests: per chunk of steps, one forward of
    all scaled inputs and one backward of the sum of the target logits,
    which is exact because samples are independent in ``eval()`` mode
    (batch-dependent layers such as BatchNorm in train mode would break it).
    ``backend="captum"`` calls captum's ``IntegratedGradients`` instead (the
    independent reference; slower, it backpropagates every output scalar
    separately). Either way the whole batch is attributed in one call. The
    channel sum comes before the threshold, so the threshold applies to the
    per-sample map (identical to the paper's recipe for single-channel
    images).

    Args:
        model: classifier returning logits ``(N, C)``; put it in ``eval()``
            mode (batch-dependent layers would mix the integration steps).
        x: float batch ``(B, H, W)`` or ``(B, C, ..., H, W)``.
        target: class to attribute, an int or one per sample; ``None`` uses the
            prediction ``argmax f(x)``.
        n_steps: integration steps.
        threshold: fraction of the per-sample maximum below which values are
            zeroed (``0`` keeps everything).
        kernel_size: odd size of the Gaussian filter (``1`` disables it).
        sigma: standard deviation of the Gaussian filter, in pixels.
        internal_batch_size: rows per forward/backward pass (captum's
            ``internal_batch_size``; at least ``B``, each pass holds
            ``internal_batch_size // B`` steps of every sample); default: all
            steps at once up to about :math:`2^{23}` input values per pass,
            more passes beyond.
        padding: border handling of the filter: ``"circular"`` (default; the
            only one that commutes with cyclic translations as well as rotations
            and flips, so an exactly invariant model gets SI = 1), ``"reflect"``
            or ``"zeros"``.
        backend: ``"torch"`` (default, plain torch) or ``"captum"`` (captum's
            ``IntegratedGradients``, needs the ``saliency`` extra).

    Returns:
        ``(B, H, W)`` non-negative maps (detached).

    Raises:
        ImportError: ``backend="captum"`` without captum
            (``pip install torchinvariance[saliency]``).
        ValueError: bad options, ``target`` out of range, non-finite outputs.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> x = torch.randn(2, 1, 6, 6)
        >>> m = ti.saliency_map(model, x, target=1, n_steps=8)
        >>> m.shape, bool((m >= 0).all())
        (torch.Size([2, 6, 6]), True)
    """
    check_model(model)
    _check_saliency_options(n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)
    _check_image_batch(x)
    t = _resolve_target(model, x, target)
    return _saliency_maps(model, x, t, n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)


def saliency_invariance(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    n_steps: int = 50,
    threshold: float = 0.9,
    kernel_size: int = 3,
    sigma: float = 1.0,
    internal_batch_size: int | None = None,
    reduction: Reduction = "mean",
    *,
    padding: Padding = "circular",
    backend: Backend = "torch",
) -> Tensor:
    r"""Saliency invariance similarity SI (paper eq. 3); 1 means genuinely invariant decisions.

    .. math::
        SI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G}}
        \frac{m_f(x_b) \cdot g^{-1} m_f(g x_b)}
             {\lVert m_f(x_b) \rVert_2 \, \lVert g^{-1} m_f(g x_b) \rVert_2}

    with :math:`m_f` the :func:`saliency_map` and :math:`n` the group order
    (identity included, its term is 1). The map of :math:`g x` is realigned by
    acting with :math:`g^{-1}` before the comparison. Every map of the orbit
    is attributed to the SAME class, the target of :math:`x` (the prediction
    ``argmax f(x)`` unless ``target`` is given), and the whole orbit
    (``group.order * B`` inputs) goes through ONE integrated-gradients call
    (by default the plain-torch implementation, checked against captum in the
    tests; see :func:`saliency_map`). Maps are
    normalized by :math:`\max(\lVert m \rVert_2, 10^{-12})`, so an all-zero
    map (e.g. for the input ``x = 0``) has similarity 0 with anything.

    Args:
        model: classifier returning logits ``(N, C)``, in ``eval()`` mode.
        group: a group acting on images (``event_ndim == 2``).
        x: float batch ``(B, H, W)`` or ``(B, C, H, W)``.
        target: class to attribute (int or one per sample), default the
            prediction on ``x``.
        n_steps: integration steps of integrated gradients.
        threshold: see :func:`saliency_map`.
        kernel_size: see :func:`saliency_map`.
        sigma: see :func:`saliency_map`.
        internal_batch_size: rows per forward/backward pass, at least
            ``group.order * B`` (see :func:`saliency_map`).
        reduction: ``"mean"`` (over samples and group elements), ``"sum"`` or
            ``"none"`` for the ``(group.order, B)`` matrix.
        padding: see :func:`saliency_map`.
        backend: ``"torch"`` (default) or ``"captum"``, see :func:`saliency_map`.

    Returns:
        Scalar for ``"mean"``/``"sum"``, ``(group.order, B)`` for ``"none"``
        (detached).

    Raises:
        ImportError: ``backend="captum"`` without captum
            (``pip install torchinvariance[saliency]``).
        ValueError: bad options, a group that cannot act on ``x``, ``target``
            out of range, non-finite outputs.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> rot = ti.get_group("rotation", order=4)
        >>> si = ti.saliency_invariance(model, rot, torch.randn(3, 1, 6, 6), n_steps=8, reduction="none")
        >>> si.shape
        torch.Size([4, 3])
        >>> torch.allclose(si[0], torch.ones(3))  # identity: m_f(x) against itself
        True
    """
    check_reduction(reduction)
    check_model(model)
    check_group(group)
    _check_saliency_options(n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)
    if group.event_ndim != 2:
        raise ValueError(
            f"saliency invariance needs a group acting on images (event_ndim=2); {group!r} has "
            f"event_ndim={group.event_ndim}"
        )
    _check_image_batch(x)
    _check_batch(group, x)
    n, b = group.order, x.shape[0]
    t = _resolve_target(model, x, target)
    orbit = group.orbit(x).reshape(n * b, *x.shape[1:])
    maps = _saliency_maps(
        model, orbit, t.repeat(n), n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend
    ).reshape(n, b, *x.shape[-2:])
    aligned = torch.stack([group.act(group.inverse(g), maps[i]) for i, g in enumerate(group.elements())])
    ref = F.normalize(maps[0].reshape(b, -1), dim=1, eps=_EPS)
    al = F.normalize(aligned.reshape(n, b, -1), dim=2, eps=_EPS)
    values = (al * ref).sum(-1).clamp(0.0, 1.0)
    return reduce(values, reduction)
