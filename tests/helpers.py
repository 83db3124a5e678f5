"""Shared test machinery: seeded models, exactly invariant references."""

from __future__ import annotations

import torch
from torch import nn

import torchinvariance as ti

BUILTIN_GROUPS = [
    ("rotation", {"order": 2}),
    ("rotation", {"order": 4}),
    ("translation", {"order": 3, "axis": "x"}),
    ("translation", {"order": 2, "axis": "y"}),
    ("flip", {"axis": "x"}),
    ("flip", {"axis": "y"}),
    ("dihedral", {}),
]


def group_id(spec):
    name, params = spec
    return name + "".join(f"-{k}{v}" for k, v in params.items())


def make_group(spec):
    name, params = spec
    return ti.get_group(name, **params)


class Reverse(ti.CyclicGroup):
    """A test-only 1-D group (time reversal of ``(..., T)`` signals), as a plugin would define one."""

    event_ndim = 1

    def __init__(self) -> None:
        super().__init__(2)

    def transform(self, g, x):
        return x.flip(-1) if g else x


class Listed(ti.CyclicGroup):
    """Z_4 acting by quarter turns whose ``elements()`` returns ``listing`` (to test wrong listings)."""

    def __init__(self, listing):
        super().__init__(4)
        self.listing = tuple(listing)

    def elements(self):
        return self.listing

    def transform(self, g, x):
        return torch.rot90(x, g, dims=(-2, -1))


def image_batch(b=4, c=1, h=6, w=6, seed=0, dtype=torch.float64):
    """A seeded batch of random images ``(b, c, h, w)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype)


class Rows(nn.Module):
    """Wraps a model and records the number of rows of every forward call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.inner(x)


class FakeEntryPoint:
    """An entry point of the ``torchinvariance`` group that loads ``obj`` or raises ``exc``."""

    def __init__(self, name, obj=None, exc=None):
        self.name, self.group, self.value = name, "torchinvariance", f"fake_module_{name}"
        self._obj, self._exc = obj, exc

    def load(self):
        if self._exc is not None:
            raise self._exc
        return self._obj


class FakeDistribution:
    """An installed distribution with the given entry points (for ``importlib.metadata.distributions``)."""

    def __init__(self, name, entry_points):
        self.metadata = {"name": name}
        self.entry_points = entry_points


def fake_distributions(monkeypatch, dists):
    """Make ``importlib.metadata.distributions()`` yield ``dists`` only."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))


def mlp(in_features: int, classes: int = 5, hidden: int = 16, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)


class OrbitAveraged(nn.Module):
    """Exactly invariant reference: average the model's outputs over the orbit (test-only)."""

    def __init__(self, model: nn.Module, group: ti.Group) -> None:
        super().__init__()
        self.model, self.group = model, group

    def forward(self, x):
        return ti.orbit_forward(self.model, self.group, x).mean(0)


def train_non_invariant(model: nn.Module, group: ti.Group, x, steps: int = 4, lr: float = 1e-2, classes: int = 5):
    """A few Adam steps on a NON-invariant target (predict which element transformed the input).

    Asserts that the weights really changed, so invariance checks after training are not vacuous.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    orbit = group.orbit(x).flatten(0, 1)
    labels = torch.arange(group.order).repeat_interleave(x.shape[0]) % classes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(orbit), labels).backward()
        opt.step()
    after = model.state_dict()
    changed = max((after[k] - v).abs().max().item() for k, v in before.items() if v.is_floating_point())
    assert changed > 1e-3, "training did not change the weights"
