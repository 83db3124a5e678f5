"""Exact finite groups acting on images ``(..., H, W)`` by permuting pixels."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from torchinvariance.groups._base import CyclicGroup, Group

__all__ = ["Dihedral", "Flip", "Rotation", "Translation"]

_AXES = {"x": -1, "y": -2}


def _check_axis(axis: str) -> int:
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
    return _AXES[axis]


def _so2_hint(order: object) -> str:
    """How to get ``order`` rotations anyway: the continuous group ``so2`` at the multiples of ``360 / order``."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 3:
        return ""
    angles = [f"{360 * k / order:g}" for k in range(order)]
    shown = angles if order <= 8 else [*angles[:3], "...", angles[-1]]
    return (
        f". Rotations by multiples of {360 / order:g} degrees interpolate on the pixel grid: use the continuous group "
        f"so2 with those angles as elements, e.g. get_group('so2') with elements=[{', '.join(shown)}] "
        f"(in the audit: --group so2:angles={','.join(shown) if order <= 8 else ','.join(angles)}); so2 is exact at "
        "multiples of 90 degrees on inputs that are zero outside the inscribed disk"
    )


class Rotation(CyclicGroup):
    r"""Exact rotations of the pixel grid by multiples of :math:`360^\circ / n`.

    Element ``k`` rotates counter-clockwise by :math:`k \cdot 360^\circ / n`
    with :func:`torch.rot90` (``order=4`` is the paper's :math:`\mathbb{R}^2_4`).

    Args:
        order: 2 (180 degrees) or 4 (90 degrees); other orders are not exact on
            a square grid: for them use ``so2`` with the multiples of
            ``360 / order`` degrees as elements (:class:`~torchinvariance.SO2`).

    Raises:
        ValueError: for another order (naming the so2 angles to use instead),
            or (on :meth:`act`) for non-square input.

    Example:
        >>> import torch
        >>> from torchinvariance.groups import Rotation
        >>> x = torch.tensor([[1, 2], [3, 4]])
        >>> Rotation(4).act(1, x)
        tensor([[2, 4],
                [1, 3]])
    """

    name = "rotation"

    def __init__(self, order: int = 4) -> None:
        if order not in (2, 4) or isinstance(order, bool) or not isinstance(order, int):
            raise ValueError(
                f"exact rotations of the pixel grid need order in {{2, 4}}; got order={order!r}{_so2_hint(order)}"
            )
        super().__init__(order)
        self._quarter_turns = 4 // order

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{self!r} needs square images (..., H, W) with H == W; got shape {tuple(x.shape)}")

    def transform(self, g: int, x: Tensor) -> Tensor:
        k = g * self._quarter_turns
        return x if k == 0 else torch.rot90(x, k, dims=(-2, -1))

    def element_name(self, g: int) -> str:
        return f"rot{self.check_element(g) * 360 // self.order}"


class Translation(CyclicGroup):
    r"""Cyclic translations by ``size / order`` pixels along one axis.

    Element ``k`` shifts the image by :math:`k \cdot \text{size}/n` pixels with
    :func:`torch.roll` (``order=3, axis="x"`` on 36-pixel-wide images is the
    paper's :math:`\mathbb{T}^2_3`).

    Args:
        order: number of shifts ``n``; the image size along ``axis`` must be
            divisible by it.
        axis: ``"x"`` (width, last dim) or ``"y"`` (height).

    Example:
        >>> import torch
        >>> from torchinvariance.groups import Translation
        >>> Translation(3, axis="x").act(1, torch.arange(6.0).reshape(1, 6))
        tensor([[4., 5., 0., 1., 2., 3.]])
    """

    name = "translation"

    def __init__(self, order: int = 3, axis: Literal["x", "y"] = "x") -> None:
        super().__init__(order)
        self.axis = axis
        self._dim = _check_axis(axis)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        size = x.shape[self._dim]
        if size % self.order != 0:
            raise ValueError(
                f"{self!r} shifts by size/order pixels, so the size along axis "
                f"{self.axis!r} must be divisible by {self.order}; got shape {tuple(x.shape)}"
            )

    def transform(self, g: int, x: Tensor) -> Tensor:
        shift = g * x.shape[self._dim] // self.order
        return x if shift == 0 else torch.roll(x, shifts=shift, dims=self._dim)

    def element_name(self, g: int) -> str:
        return f"shift{self.axis}{self.check_element(g)}/{self.order}"

    def __repr__(self) -> str:
        return f"Translation(order={self.order}, axis={self.axis!r})"


class Flip(CyclicGroup):
    """Reflection of the image, order 2.

    Args:
        axis: ``"x"`` mirrors left-right (reverses the last dim), ``"y"``
            mirrors up-down.

    Example:
        >>> import torch
        >>> from torchinvariance.groups import Flip
        >>> Flip().act(1, torch.tensor([[1, 2, 3]]))
        tensor([[3, 2, 1]])
    """

    name = "flip"

    def __init__(self, axis: Literal["x", "y"] = "x") -> None:
        super().__init__(2)
        self.axis = axis
        self._dim = _check_axis(axis)

    def transform(self, g: int, x: Tensor) -> Tensor:
        return x.flip(self._dim) if g else x

    def element_name(self, g: int) -> str:
        return f"flip{self.axis}" if self.check_element(g) else "id"

    def __repr__(self) -> str:
        return f"Flip(axis={self.axis!r})"


class Dihedral(Group):
    r"""The dihedral group :math:`D_4`: the 8 symmetries of the square.

    Element ``r + 4 s`` (``r`` in 0..3, ``s`` in 0..1) acts as
    :math:`\rho^r \mu^s`: first mirror left-right ``s`` times, then rotate by
    ``r`` quarter turns. With :math:`\mu \rho \mu = \rho^{-1}`,

    .. math::
        (r_1, s_1)(r_2, s_2) = (r_1 + (-1)^{s_1} r_2 \bmod 4,\; s_1 + s_2 \bmod 2).

    Example:
        >>> from torchinvariance.groups import Dihedral
        >>> d4 = Dihedral()
        >>> d4.order, d4.compose(1, 4), d4.inverse(5)
        (8, 5, 5)
    """

    name = "dihedral"

    @property
    def order(self) -> int:
        return 8

    def compose(self, g: int, h: int) -> int:
        r1, s1 = divmod(self.check_element(g), 4)[::-1]
        r2, s2 = divmod(self.check_element(h), 4)[::-1]
        r = (r1 + (r2 if s1 == 0 else -r2)) % 4
        return r + 4 * ((s1 + s2) % 2)

    def inverse(self, g: int) -> int:
        r, s = divmod(self.check_element(g), 4)[::-1]
        return g if s else (-r) % 4

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{self!r} needs square images (..., H, W) with H == W; got shape {tuple(x.shape)}")

    def transform(self, g: int, x: Tensor) -> Tensor:
        s, r = divmod(g, 4)
        y = x.flip(-1) if s else x
        if r:
            return torch.rot90(y, r, dims=(-2, -1))
        return y

    def element_name(self, g: int) -> str:
        s, r = divmod(self.check_element(g), 4)
        return f"rot{90 * r}" + ("+flipx" if s else "")

    def __repr__(self) -> str:
        return "Dihedral()"
