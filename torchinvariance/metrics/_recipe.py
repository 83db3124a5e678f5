r"""The saliency recipe as data and arithmetic: :class:`SaliencyConfig`, the threshold and the Gaussian blur.

Integrated gradients are in :mod:`._integrated_gradients`; the maps, their realignment and SI in :mod:`.saliency`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SaliencyConfig"]

Padding = Literal["circular", "reflect", "zeros"]
PADDINGS = ("circular", "reflect", "zeros")
Backend = Literal["torch", "captum"]
BACKENDS = ("torch", "captum")
ThresholdMode = Literal["max", "quantile"]
THRESHOLD_MODES = ("max", "quantile")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SaliencyConfig:
    """The options of the saliency recipe, validated once at construction.

    The paper's recipe is the default. ``threshold_mode`` and ``baseline``
    exist for ablations of that recipe.

    Args:
        n_steps: integration steps of integrated gradients (Gauss-Legendre).
        threshold: in ``[0, 1]``; with ``threshold_mode="max"`` (default) the
            fraction of each map's maximum below which values are zeroed
            (``0`` keeps everything); with ``"quantile"`` the quantile of each
            map below which values are zeroed (``0.9`` keeps the top 10 %).
        kernel_size: odd size of the Gaussian filter (``1`` disables it).
        sigma: standard deviation of the Gaussian filter, in pixels.
        internal_batch_size: rows per forward/backward pass (captum's
            ``internal_batch_size``); ``None`` chooses about :math:`2^{23}`
            input values per pass.
        padding: border handling of the filter: ``"circular"`` (commutes with
            cyclic translations, rotations and flips), ``"reflect"`` or ``"zeros"``.
        backend: ``"torch"`` (plain torch) or ``"captum"`` (captum's
            ``IntegratedGradients``, needs the ``saliency`` extra).
        threshold_mode: ``"max"`` or ``"quantile"``, see ``threshold``.
        baseline: the constant value of the integrated-gradients baseline
            image (``0.0``, the paper's zero baseline; e.g. the normalized
            value of a black pixel for a "black image" baseline).

    Raises:
        ValueError: an option out of range, saying what was expected.

    Example:
        >>> import torchinvariance as ti
        >>> ti.SaliencyConfig(n_steps=8).n_steps
        8
        >>> ti.SaliencyConfig(kernel_size=4)
        Traceback (most recent call last):
            ...
        ValueError: kernel_size must be a positive odd int, got 4
    """

    n_steps: int = 50
    threshold: float = 0.9
    kernel_size: int = 3
    sigma: float = 1.0
    internal_batch_size: int | None = None
    padding: Padding = "circular"
    backend: Backend = "torch"
    threshold_mode: ThresholdMode = "max"
    baseline: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.n_steps) or self.n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {self.n_steps!r}")
        if not _is_number(self.threshold) or not 0 <= self.threshold <= 1:
            raise ValueError(
                f"threshold must be a number in [0, 1] (fraction of the map's max), got {self.threshold!r}"
            )
        if not _is_int(self.kernel_size) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {self.kernel_size!r}")
        if not _is_number(self.sigma) or not self.sigma > 0:
            raise ValueError(f"sigma must be a positive number, got {self.sigma!r}")
        ibs = self.internal_batch_size
        if ibs is not None and (not _is_int(ibs) or ibs < 1):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {ibs!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}")
        if not _is_number(self.baseline) or not math.isfinite(self.baseline):
            raise ValueError(f"baseline must be a finite number (a constant baseline image), got {self.baseline!r}")
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS} (integrated gradients in plain torch, or captum's "
                f"IntegratedGradients), got {self.backend!r}"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SaliencyConfig:
        """Build from keyword options, naming unknown ones (:class:`TypeError`)."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown saliency options {unknown}; expected some of {tuple(cls.__dataclass_fields__)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return asdict(self)


# ---------------------------------------------------------------------------- inputs


def _gaussian_kernel(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    k1 = torch.exp(-(r**2) / (2.0 * float(sigma) ** 2))
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).to(dtype=dtype, device=device)


def _threshold(maps: Tensor, cfg: SaliencyConfig) -> Tensor:
    """``|IG|`` maps ``(N, ..., H, W)`` -> channel sum, then zero what lies below the threshold (per map)."""
    m = maps.abs()
    if m.dim() > 3:
        m = m.sum(dim=tuple(range(1, m.dim() - 2)))
    if cfg.threshold_mode == "quantile":
        cut = torch.quantile(m.flatten(-2).float(), cfg.threshold, dim=-1).to(m.dtype)[..., None, None]
    else:
        cut = cfg.threshold * m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(m >= cut, m, torch.zeros_like(m))


def _blur(m: Tensor, cfg: SaliencyConfig) -> Tensor:
    """The Gaussian filter of the recipe on maps ``(..., H, W)`` (the size is kept)."""
    if cfg.kernel_size == 1:
        return m
    shape = m.shape
    pad = cfg.kernel_size // 2
    kernel = _gaussian_kernel(cfg.kernel_size, cfg.sigma, m.dtype, m.device)[None, None]
    m4 = m.reshape(-1, 1, *shape[-2:])
    if cfg.padding == "zeros":
        out = F.conv2d(m4, kernel, padding=pad)
    else:
        out = F.conv2d(F.pad(m4, (pad, pad, pad, pad), mode=cfg.padding), kernel)
    return out.reshape(shape)


def _postprocess(maps: Tensor, cfg: SaliencyConfig) -> Tensor:
    """``|IG|`` maps ``(N, ..., H, W)`` -> channel sum, threshold, Gaussian blur."""
    return _blur(_threshold(maps, cfg), cfg)
