"""Example torchinvariance plugin: groups acting on 1-D signals ``(..., T)``.

Two finite groups that move samples (``time_reversal``, ``time_shift``), one that acts on values only
(``polarity``: ``spatial = False``) and one continuous group (``fractional_shift``: shifts by any fraction of the
period, through the Fourier transform, so ``exact = False``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import torchinvariance as ti

__all__ = ["FractionalShift", "Polarity", "TimeReversal", "TimeShift", "torchinvariance_register_groups"]


class TimeReversal(ti.CyclicGroup):
    """Time reversal ``x(t) -> x(T - 1 - t)`` of signals ``(..., T)``; order 2."""

    name = "time_reversal"
    event_ndim = 1

    def __init__(self) -> None:
        super().__init__(2)

    def transform(self, g: int, x: Tensor) -> Tensor:
        return x.flip(-1) if g else x

    def element_name(self, g: int) -> str:
        return "reverse" if self.check_element(g) else "id"

    def __repr__(self) -> str:
        return "TimeReversal()"


class TimeShift(ti.CyclicGroup):
    """Cyclic shifts of signals ``(..., T)`` by ``T / order`` samples."""

    name = "time_shift"
    event_ndim = 1

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[-1] % self.order:
            raise ValueError(f"{self!r} needs a signal length divisible by {self.order}; got shape {tuple(x.shape)}")

    def transform(self, g: int, x: Tensor) -> Tensor:
        shift = g * x.shape[-1] // self.order
        return x.roll(shift, dims=-1) if shift else x


class Polarity(ti.CyclicGroup):
    """Sign inversion ``x -> -x``; order 2. It acts on values only, so saliency maps stay in place."""

    name = "polarity"
    event_ndim = 1
    spatial = False

    def __init__(self) -> None:
        super().__init__(2)

    def transform(self, g: int, x: Tensor) -> Tensor:
        return -x if g else x

    def element_name(self, g: int) -> str:
        return "invert" if self.check_element(g) else "id"


class FractionalShift(ti.ContinuousGroup):
    r"""Cyclic shifts of signals ``(..., T)`` by any fraction ``s`` of the period (``s`` in ``[0, 1)``).

    The shift multiplies the Fourier coefficients by :math:`e^{-2 \pi i k s}`; it is exact for band-limited
    signals without a Nyquist component, hence ``exact = False``.
    """

    name = "fractional_shift"
    event_ndim = 1

    @property
    def identity(self) -> float:
        return 0.0

    def check_element(self, g: object) -> float:
        return self._number(g) % 1.0

    def same_element(self, g: object, h: object) -> bool:
        d = (self.check_element(g) - self.check_element(h)) % 1.0
        return min(d, 1.0 - d) < 1e-12

    def compose(self, g: float, h: float) -> float:
        return (self.check_element(g) + self.check_element(h)) % 1.0

    def inverse(self, g: float) -> float:
        return (-self.check_element(g)) % 1.0

    def sample(self, k: int, generator: torch.Generator | None = None) -> list[float]:
        return torch.rand(k, generator=generator, dtype=torch.float64).tolist()

    def element_name(self, g: float) -> str:
        return f"shift{self.check_element(g):g}"

    def transform(self, g: float, x: Tensor) -> Tensor:
        if g == 0.0:
            return x
        n = x.shape[-1]
        k = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64).to(x.device)
        phase = torch.polar(torch.ones_like(k), -2 * math.pi * k * g)
        return torch.fft.irfft(torch.fft.rfft(x.double(), dim=-1) * phase, n=n, dim=-1).to(x.dtype)


@ti.hookimpl
def torchinvariance_register_groups(register):
    """Register this package's groups with torchinvariance."""
    register("time_reversal", TimeReversal)
    register("time_shift", TimeShift)
    register("polarity", Polarity)
    register("fractional_shift", FractionalShift)
