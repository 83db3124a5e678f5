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
