"""Example torchinvariance plugin: finite groups acting on 1-D signals ``(..., T)``."""

from __future__ import annotations

from torch import Tensor

import torchinvariance as ti

__all__ = ["TimeReversal", "TimeShift", "torchinvariance_register_groups"]


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


@ti.hookimpl
def torchinvariance_register_groups(register):
    """Register this package's groups with torchinvariance."""
    register("time_reversal", TimeReversal)
    register("time_shift", TimeShift)
