r"""Continuous groups acting on images by resampling: rotations by any angle (``so2``) and scalings (``scale``).

Their elements are real numbers (degrees, scale factors), not indices: they cannot be enumerated, so a loss or a
check draws them with :meth:`ContinuousGroup.sample` or takes an explicit list. The action interpolates
(:func:`torch.nn.functional.grid_sample`), so these groups are not exact (``exact = False``): the checks and
metrics measure the interpolation floor, the error of the round trip :math:`g^{-1} \cdot (g \cdot x)`.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from torchinvariance.groups._base import Group

__all__ = ["SO2", "ContinuousGroup", "Scale"]

Interpolation = Literal["bilinear", "nearest", "bicubic"]
_INTERPOLATIONS = ("bilinear", "nearest", "bicubic")


class ContinuousGroup(Group):
    """Base class of groups whose elements are real numbers; subclasses implement the algebra and ``transform``.

    ``order`` and ``elements()`` raise :class:`TypeError` (there are infinitely many elements); use
    :meth:`sample` or explicit element lists.

    The action keeps the input's dtype, as every group's does. Integer and bool images (label maps, masks) are
    resampled as numbers and the result is rounded to the nearest integer (:func:`torch.round`, halves to even)
    and clamped to the dtype's range, as torchvision's transforms do for integer tensors; a bool pixel is ``True``
    where the resampled value is above 1/2. ``nearest`` sampling therefore keeps integer labels exact.
    """

    is_finite = False
    exact = False

    @property
    def order(self) -> int:
        raise TypeError(
            f"{self!r} is a continuous group: it has no finite order and its elements cannot be listed; "
            "draw them with sample(k) (e.g. InvarianceLoss(..., elements=k)) or pass an explicit list"
        )

    def elements(self) -> tuple[int, ...]:
        return self.order  # raises the TypeError above

    def __len__(self) -> int:
        return self.order

    def _number(self, g: object) -> float:
        if isinstance(g, Tensor):
            if g.numel() != 1 or g.is_complex() or g.dtype == torch.bool:
                raise ValueError(f"{self!r} has real-number elements; got a tensor of shape {tuple(g.shape)}")
            g = g.item()
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(float(g)):
            raise ValueError(f"{self!r} has real-number elements; got {g!r}")
        return float(g)

    def _grid_sample(self, x: Tensor, theta: Tensor, interpolation: str) -> Tensor:
        """Resample the last two dims of ``x`` with the ``(2, 3)`` affine matrix ``theta`` (output -> input)."""
        shape = x.shape
        flat = x.reshape(-1, 1, shape[-2], shape[-1])
        wide = x.dtype in (torch.int32, torch.int64)  # float32 holds integers exactly only up to 2**24
        work = flat if flat.is_floating_point() else flat.to(torch.float64 if wide else torch.float32)
        grid = F.affine_grid(theta.to(work.dtype).expand(work.shape[0], 2, 3), list(work.shape), align_corners=False)
        out = F.grid_sample(work, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
        if not flat.is_floating_point():  # integer and bool images keep their dtype: rounded, within its range
            lo, hi = (0, 1) if x.dtype == torch.bool else (torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max)
            out = out.round().clamp(lo, hi)
        return out.to(x.dtype).reshape(shape)


#: The smallest scale factor (and the inverse of the largest) that :class:`Scale` accepts.
_MIN_FACTOR = 1e-6


def _mod360(angle: float) -> float:
    """``angle`` modulo 360 in :math:`[0, 360)`: Python's ``%`` rounds a tiny negative angle up to ``360.0``."""
    r = angle % 360.0
    return 0.0 if r >= 360.0 else r + 0.0  # + 0.0 turns -0.0 into 0.0


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


class SO2(ContinuousGroup):
    r"""Rotations of images ``(..., H, W)`` by any angle, in degrees, counter-clockwise (like ``rotation``).

    Elements are angles in :math:`[0, 360)`; :meth:`compose` adds and :meth:`inverse` negates them modulo 360. The
    action resamples with :func:`torch.nn.functional.grid_sample` (zero padding), so it is exact only for the
    identity. With ``mask="circle"``, every non-identity element also zeroes the pixels outside the inscribed disk
    (the corners, which a rotation cannot keep); the identity stays exact, so for exact comparisons give inputs that
    are zero outside the disk (:meth:`mask_input`).

    Args:
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        mask: ``"circle"`` or ``None``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> so2 = ti.get_group("so2")
        >>> so2.compose(350.0, 20.0), so2.inverse(30.0), so2.element_name(37.5)
        (10.0, 330.0, 'rot37.5')
        >>> x = so2.mask_input(torch.randn(2, 1, 16, 16))
        >>> torch.allclose(so2.act(90.0, x), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
        True
    """

    name = "so2"

    def __init__(self, interpolation: Interpolation = "bilinear", mask: Literal["circle"] | None = "circle") -> None:
        self.interpolation = _check_interpolation(interpolation)
        if mask not in ("circle", None):
            raise ValueError(f"mask must be 'circle' or None, got {mask!r}")
        self.mask = mask

    @property
    def identity(self) -> float:
        return 0.0

    def check_element(self, g: object) -> float:
        """Any finite real angle in degrees, returned modulo 360, in :math:`[0, 360)`."""
        return _mod360(self._number(g))

    def same_element(self, g: object, h: object) -> bool:
        d = (self.check_element(g) - self.check_element(h)) % 360.0
        return min(d, 360.0 - d) < 1e-9

    def compose(self, g: float, h: float) -> float:
        return _mod360(self.check_element(g) + self.check_element(h))

    def inverse(self, g: float) -> float:
        return _mod360(-self.check_element(g))

    def sample(self, k: int, generator: torch.Generator | None = None) -> list[float]:
        """``k`` angles drawn uniformly from :math:`[0, 360)`."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"sample() expects a non-negative int k, got {k!r}")
        return (torch.rand(k, generator=generator, dtype=torch.float64) * 360.0).tolist()

    def element_name(self, g: float) -> str:
        return f"rot{self.check_element(g):g}"

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{self!r} needs square images (..., H, W) with H == W; got shape {tuple(x.shape)}")

    def disk(self, size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``(size, size)`` mask of the pixels whose centers lie inside the inscribed disk."""
        c = (torch.arange(size, device=device, dtype=torch.float64) + 0.5) / size * 2 - 1
        return ((c[:, None] ** 2 + c[None, :] ** 2) <= 1.0).to(dtype)

    def mask_input(self, x: Tensor) -> Tensor:
        """``x`` with the pixels outside the inscribed disk set to 0, in ``x``'s dtype (``False`` for bool)."""
        self.check_input(x)
        return x.masked_fill(~self.disk(x.shape[-1], x.device, torch.bool), 0)

    def transform(self, g: float, x: Tensor) -> Tensor:
        if g == 0.0:
            return x
        a = math.radians(g)
        # affine_grid maps OUTPUT coordinates to input ones: rotating the image by +a samples at R(-a).
        # In normalized coordinates y points down, so a counter-clockwise turn on screen is R(+a) here.
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float64)
        out = self._grid_sample(x, theta.to(x.device), self.interpolation)
        return self.mask_input(out) if self.mask == "circle" else out

    def __repr__(self) -> str:
        return f"SO2(interpolation={self.interpolation!r}, mask={self.mask!r})"


class Scale(ContinuousGroup):
    r"""Scalings of images ``(..., H, W)`` about their center by a factor :math:`s > 0`.

    Elements are factors; :meth:`compose` multiplies and :meth:`inverse` takes :math:`1/s`. :meth:`sample` draws
    log-uniformly within ``[min_scale, max_scale]`` (the range the model should be invariant to). Zooming out pads
    with zeros, zooming in crops, so the round trip loses the border: the interpolation floor measures it.

    Args:
        min_scale: smallest factor drawn by :meth:`sample`.
        max_scale: largest factor drawn by :meth:`sample`.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.

    Example:
        >>> import torchinvariance as ti
        >>> scale = ti.get_group("scale", min_scale=0.8, max_scale=1.25)
        >>> scale.compose(2.0, 0.25), scale.inverse(4.0), scale.identity
        (0.5, 0.25, 1.0)
    """

    name = "scale"

    def __init__(self, min_scale: float = 0.8, max_scale: float = 1.25, interpolation: Interpolation = "bilinear"):
        if not (isinstance(min_scale, (int, float)) and isinstance(max_scale, (int, float))) or not (
            _MIN_FACTOR <= min_scale <= 1.0 <= max_scale <= 1.0 / _MIN_FACTOR
        ):
            raise ValueError(
                f"need {_MIN_FACTOR:g} <= min_scale <= 1 <= max_scale <= {1.0 / _MIN_FACTOR:g}; got "
                f"min_scale={min_scale!r}, max_scale={max_scale!r}"
            )
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.interpolation = _check_interpolation(interpolation)

    @property
    def identity(self) -> float:
        return 1.0

    def check_element(self, g: object) -> float:
        """A factor in :math:`[10^{-6}, 10^6]`, so that it and its inverse are finite and positive.

        A factor outside (``5e-324``, whose inverse is ``inf``, or ``1e300``) would make :meth:`act` sample at
        infinite coordinates and return NaN; beyond a million-fold zoom no image keeps a pixel to compare.
        """
        s = self._number(g)
        if s <= 0:
            raise ValueError(f"{self!r} has positive scale factors as elements; got {g!r}")
        if not _MIN_FACTOR <= s <= 1.0 / _MIN_FACTOR:
            raise ValueError(
                f"{self!r} has scale factors in [{_MIN_FACTOR:g}, {1.0 / _MIN_FACTOR:g}] as elements, so that a "
                f"factor and its inverse are finite; got {g!r} (inverse {1.0 / s:g})"
            )
        return s

    def same_element(self, g: object, h: object) -> bool:
        return abs(math.log(self.check_element(g)) - math.log(self.check_element(h))) < 1e-9

    def compose(self, g: float, h: float) -> float:
        return self.check_element(g) * self.check_element(h)

    def inverse(self, g: float) -> float:
        return 1.0 / self.check_element(g)

    def sample(self, k: int, generator: torch.Generator | None = None) -> list[float]:
        """``k`` factors drawn log-uniformly from ``[min_scale, max_scale]``."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"sample() expects a non-negative int k, got {k!r}")
        lo, hi = math.log(self.min_scale), math.log(self.max_scale)
        return torch.exp(lo + (hi - lo) * torch.rand(k, generator=generator, dtype=torch.float64)).tolist()

    def element_name(self, g: float) -> str:
        return f"scale{self.check_element(g):g}"

    def transform(self, g: float, x: Tensor) -> Tensor:
        if g == 1.0:
            return x
        theta = torch.tensor([[1.0 / g, 0.0, 0.0], [0.0, 1.0 / g, 0.0]], dtype=torch.float64)
        return self._grid_sample(x, theta.to(x.device), self.interpolation)

    def __repr__(self) -> str:
        return (
            f"Scale(min_scale={self.min_scale:g}, max_scale={self.max_scale:g}, interpolation={self.interpolation!r})"
        )
