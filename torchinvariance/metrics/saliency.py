r"""Saliency maps and saliency invariance SI (paper §3.2 eq. 3, §4.1).

The recipe of a saliency map, configured by one :class:`SaliencyConfig`:

1. integrated gradients of the target logit (:mod:`._integrated_gradients`);
2. absolute value, summed over channels;
3. threshold at a fraction of each map's maximum;
4. Gaussian blur;

and, for SI, realignment of the map of :math:`g x` by :math:`g^{-1}`
(:func:`realign_saliency`) and cosine similarity with the map of :math:`x`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torchinvariance._checks import check_model
from torchinvariance.divergences import Reduction, check_reduction
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._integrated_gradients import integrated_gradients
from torchinvariance.metrics._recipe import (  # noqa: F401  (re-exported for the tests and users)
    BACKENDS,
    PADDINGS,
    THRESHOLD_MODES,
    Backend,
    Padding,
    SaliencyConfig,
    ThresholdMode,
    _blur,
    _gaussian_kernel,
    _postprocess,
    _threshold,
)
from torchinvariance.metrics._reduction import averaged_rows, reduce_terms
from torchinvariance.orbit import check_batch, measuring, model_output, resolve_elements

__all__ = ["SaliencyConfig", "realign_saliency", "saliency_invariance", "saliency_map"]


def _check_image_batch(x: Tensor, cfg: SaliencyConfig) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor batch (B, C, H, W), got {type(x).__name__}")
    if x.dim() < 3 or x.shape[0] == 0:
        raise ValueError(
            f"saliency maps need a non-empty image batch (B, H, W) or (B, C, ..., H, W); got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"saliency maps need a floating point input (integrated gradients), got {x.dtype}")
    h, w = x.shape[-2:]
    if cfg.kernel_size > 1 and cfg.padding != "zeros" and cfg.kernel_size // 2 >= min(h, w):
        raise ValueError(
            f"kernel_size={cfg.kernel_size} is too large for {h}x{w} images with padding={cfg.padding!r}: "
            f"it needs kernel_size // 2 < min(H, W) = {min(h, w)}; use a smaller kernel_size "
            "(1 disables the blur) or padding='zeros'"
        )


def _resolve_target(
    model: Callable[[Tensor], Tensor], x: Tensor, target: int | Sequence[int] | Tensor | None
) -> Tensor:
    """Target class per sample ``(B,)``: the prediction ``argmax f(x)`` unless given."""
    b = x.shape[0]
    with torch.no_grad():
        fx = model_output(model(x), b)
    if fx.dim() != 2:
        raise ValueError(f"saliency maps need a classifier returning logits ({b}, classes); got {tuple(fx.shape)}")
    if not bool(torch.isfinite(fx).all()):
        raise ValueError("model output f(x) contains NaN or Inf; cannot pick a target class")
    n_classes = fx.shape[1]
    if target is None:
        return fx.argmax(1)
    if isinstance(target, (bool, str, bytes, float)):
        raise TypeError(
            f"target must be an int class index, a sequence of ints or an integer tensor, got {target!r} "
            f"({type(target).__name__})"
        )
    try:
        t = torch.as_tensor(target, device=x.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"target must be an int, a sequence of ints or an integer tensor, got {target!r}") from exc
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


# ---------------------------------------------------------------------------- the recipe
def _raw_maps(model: Callable[[Tensor], Tensor], x: Tensor, target: Tensor, cfg: SaliencyConfig) -> Tensor:
    """Integrated gradients, channel sum and threshold: the recipe up to, not including, the blur."""
    if cfg.baseline != 0.0:  # IG from a constant image b: IG(x) = (x - b) * mean grad f(b + a (x - b))

        def shifted(z: Tensor) -> Tensor:
            return model(z + cfg.baseline)

        attr = integrated_gradients(
            shifted, x - cfg.baseline, target, cfg.n_steps, cfg.internal_batch_size, cfg.backend
        )
    else:
        attr = integrated_gradients(model, x, target, cfg.n_steps, cfg.internal_batch_size, cfg.backend)
    if not bool(torch.isfinite(attr).all()):
        raise ValueError("integrated gradients contain NaN or Inf (non-finite model outputs or gradients)")
    return _threshold(attr, cfg)


def realign_saliency(group: Group, maps: Tensor, elements: Sequence[int] | None = None) -> Tensor:
    r"""Bring the maps of transformed inputs back to the frame of ``x``: row ``i`` becomes :math:`g_i^{-1} m_i`.

    The maps move with :meth:`~torchinvariance.Group.transform_map`: like the input for a group that moves pixels,
    not at all for a group that acts on values only (``spatial = False``).

    Args:
        group: a group acting on images.
        maps: ``(n, B, H, W)`` maps; row ``i`` is the map of :math:`g_i x`.
        elements: :math:`g_1 .. g_n`; default every element of ``group`` (identity first).

    Returns:
        ``(n, B, H, W)`` realigned maps.

    Example:
        >>> import torch, torchinvariance as ti
        >>> from torchinvariance.metrics.saliency import realign_saliency
        >>> rot = ti.get_group("rotation", order=4)
        >>> m = torch.rand(1, 5, 5)
        >>> torch.equal(realign_saliency(rot, rot.orbit(m))[3], m)
        True
    """
    els = list(group.elements()) if elements is None else [group.check_element(g) for g in elements]
    if maps.shape[0] != len(els):
        raise ValueError(f"maps hold {maps.shape[0]} rows but {len(els)} elements were given")
    return torch.stack([group.transform_map(group.inverse(g), maps[i]) for i, g in enumerate(els)])


def _similarity(ref: Tensor, aligned: Tensor) -> Tensor:
    """Cosine similarity of ``ref`` ``(B, H, W)`` with each row of ``aligned`` ``(n, B, H, W)`` -> ``(n, B)``.

    Two all-zero maps are identical (similarity 1); an all-zero map against a non-zero one has similarity 0.
    """
    r = ref.reshape(ref.shape[0], -1)
    a = aligned.reshape(aligned.shape[0], aligned.shape[1], -1)
    nr, na = r.norm(dim=-1), a.norm(dim=-1)
    sim = (a * r).sum(-1) / (na * nr).clamp_min(torch.finfo(a.dtype).tiny)
    zero_r, zero_a = (nr == 0).expand_as(na), na == 0
    sim = torch.where(zero_r | zero_a, (zero_r & zero_a).to(sim.dtype), sim)
    return sim.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------- public functions
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
    eval_mode: bool = True,
    config: SaliencyConfig | None = None,
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
    images). The options are those of :class:`SaliencyConfig`.

    Args:
        model: classifier returning logits ``(N, C)``; it is attributed in
            ``eval()`` mode (batch-dependent layers would mix the integration
            steps) unless ``eval_mode=False``.
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
        eval_mode: attribute with the model in ``eval()`` mode (default);
            ``False`` keeps its modes. Modes and buffers are restored after.
        config: a :class:`SaliencyConfig`; when given it replaces the recipe
            options above (and gives access to ``threshold_mode`` and ``baseline``).

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
    cfg = config or SaliencyConfig(n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)
    check_model(model)
    _check_image_batch(x, cfg)
    with measuring(model, eval_mode):
        return _blur(_raw_maps(model, x, _resolve_target(model, x, target), cfg), cfg)


def saliency_terms(
    model: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    target: int | Sequence[int] | Tensor | None,
    cfg: SaliencyConfig,
    *,
    eval_mode: bool = True,
    elements: Sequence | None = None,
) -> Tensor:
    """The ``(n, B)`` similarities of SI, validated; shared by the function and the class.

    Rows follow ``elements`` (default every element of a finite group, identity first). The thresholded maps of
    :math:`g x` are realigned by :math:`g^{-1}` BEFORE the blur, and the blur is applied to the reference and the
    realigned maps alike, so the comparison is well defined for any group, also one whose action does not commute
    with the Gaussian filter. Groups with ``mask_input`` (``so2``) mask the corners of both maps.
    """
    check_model(model)
    ensure_group(group)
    if group.event_ndim != 2:
        raise ValueError(
            f"saliency invariance needs a group acting on images (event_ndim=2); {group!r} has "
            f"event_ndim={group.event_ndim}"
        )
    _check_image_batch(x, cfg)
    check_batch(group, x)
    els = resolve_elements(group, elements)
    first_is_identity = group.same_element(els[0], group.identity)
    rows = els if first_is_identity else [group.identity, *els]  # the reference map first, computed once
    n, b = len(rows), x.shape[0]
    with measuring(model, eval_mode):
        t = _resolve_target(model, x, target)
        orbit = group.orbit(x, rows).reshape(n * b, *x.shape[1:])
        maps = _raw_maps(model, orbit, t.repeat(n), cfg).reshape(n, b, *x.shape[-2:])
    ref = _blur(maps[0], cfg)
    aligned = _blur(realign_saliency(group, maps if first_is_identity else maps[1:], els), cfg)
    mask = getattr(group, "mask_input", None)
    if mask is not None and not group.exact:
        ref, aligned = mask(ref), mask(aligned)
    return _similarity(ref, aligned)


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
    eval_mode: bool = True,
    config: SaliencyConfig | None = None,
    elements: Sequence | None = None,
    include_identity: bool = False,
) -> Tensor:
    r"""Saliency invariance similarity SI (paper eq. 3); 1 means genuinely invariant decisions.

    .. math::
        SI_f = \frac{1}{nB} \sum_{b=1}^{B} \sum_{g \in \mathcal{G} \setminus \{e\}}
        \frac{m_f(x_b) \cdot g^{-1} m_f(g x_b)}
             {\lVert m_f(x_b) \rVert_2 \, \lVert g^{-1} m_f(g x_b) \rVert_2}

    with :math:`m_f` the :func:`saliency_map` and :math:`n` the number of
    non-identity elements (the paper's convention: the identity's term is 1
    for any model, so a mean that includes it is at least :math:`1/n_{all}`;
    ``include_identity=True`` averages over all elements). The map of :math:`g x` is realigned by
    acting with :math:`g^{-1}` before the comparison
    (:func:`~torchinvariance.metrics.realign_saliency`). Every map of
    the orbit is attributed to the SAME class, the target of :math:`x` (the
    prediction ``argmax f(x)`` unless ``target`` is given), and the whole orbit
    (``group.order * B`` inputs) goes through ONE integrated-gradients call
    (by default the plain-torch implementation, checked against captum in the
    tests; see :func:`saliency_map`). Two all-zero maps (e.g. a constant,
    perfectly invariant model, or the input ``x = 0``) have similarity 1; an
    all-zero map against a non-zero one has similarity 0.

    Args:
        model: classifier returning logits ``(N, C)`` (attributed in ``eval()`` mode).
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
        reduction: ``"mean"`` (over samples and the averaged group
            elements), ``"sum"`` or ``"none"`` for the ``(group.order, B)``
            matrix (every element, identity included).
        padding: see :func:`saliency_map`.
        backend: ``"torch"`` (default) or ``"captum"``, see :func:`saliency_map`.
        eval_mode: see :func:`saliency_map`.
        config: see :func:`saliency_map`.
        elements: the elements to compare (rows of ``reduction="none"``);
            default every element of a finite group; required for continuous
            groups (``so2``), whose maps are compared inside the inscribed disk.
        include_identity: ``False`` (default): ``"mean"`` and ``"sum"`` run
            over the non-identity elements; ``True``: over all of them.

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
    cfg = config or SaliencyConfig(n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)
    terms = saliency_terms(model, group, x, target, cfg, eval_mode=eval_mode, elements=elements)
    return reduce_terms(terms, reduction, averaged_rows(group, elements, include_identity))
