"""The shared state of a speed run and the training-step workloads the sections time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinvariance as ti
from benchmarks.speed.timing import Config, Stats, cuda_peak_bytes, mb, saved_bytes

NU = 0.1  # regularization weight; it does not change the cost


class Bench:
    """Shared state of one run: device, config, data, models, results."""

    def __init__(self, cfg: Config, device: torch.device, threads: int) -> None:
        self.cfg, self.device, self.threads = cfg, device, threads
        gen = torch.Generator().manual_seed(0)
        shape = (1, cfg.size, cfg.size)
        self.in_shape = shape
        self.x = torch.randn(cfg.batch, *shape, generator=gen).to(device)
        self.y = torch.randint(cfg.classes, (cfg.batch,), generator=gen).to(device)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    def mlp(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        c = self.cfg
        return ti.MLP(in_shape=self.in_shape, num_classes=c.classes, hidden=c.hidden, depth=c.depth).to(self.device)

    def note(self, text: str) -> None:
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)


def train_step(model: nn.Module, loss_fn: Callable[[], Tensor]) -> Callable[[], None]:
    """A training step: zero grads, loss, backward, SGD update (the same for every variant)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def training_losses(model: nn.Module, group: ti.Group, x: Tensor, y: Tensor) -> dict[str, Callable[[], Tensor]]:
    """The section-1 losses for one model/group/batch (each returns the scalar to backpropagate)."""
    n = group.order
    gen = torch.Generator().manual_seed(1)
    reg = ti.InvarianceLoss(model, group)
    y_orbit = y.repeat(n)
    nonid = [g for g in group.elements() if g != group.identity]

    def plain() -> Tensor:
        xa = group.act_per_sample(group.sample(x.shape[0], generator=gen), x)
        return F.cross_entropy(model(xa), y)

    def bound() -> Tensor:
        orbit = group.orbit(x).reshape(n * x.shape[0], *x.shape[1:])
        return F.cross_entropy(model(orbit), y_orbit)

    def ir() -> Tensor:
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * reg(x, logits=logits)

    def naive() -> Tensor:
        logits = model(x)
        fx = model(x)  # the regularizer recomputes f(x)
        inv = 0.0
        for g in group.elements():
            inv = inv + 0.5 * (fx - model(group.act(g, x))).pow(2).sum(1).mean()
        return F.cross_entropy(logits, y) + NU * inv / n

    one = ti.InvarianceLoss(model, group, elements=[nonid[0]])
    sampled = ti.InvarianceLoss(model, group, elements=1, generator=torch.Generator().manual_seed(2))
    y2 = y.repeat(2)

    def ir_k1() -> Tensor:  # one fixed non-identity element: exactly 2B rows through the model
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * one(x, logits=logits)

    def ir_k1_sampled() -> Tensor:  # elements=1 as users call it (a drawn identity costs nothing)
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * sampled(x, logits=logits)

    def floor_k1() -> Tensor:  # "bound at 2B": x and one transformed copy, one forward/backward
        rows = group.orbit(x, [group.identity, nonid[0]]).reshape(2 * x.shape[0], *x.shape[1:])
        return F.cross_entropy(model(rows), y2)

    return {
        "plain": plain,
        "bound": bound,
        "ir": ir,
        "naive": naive,
        "ir_k1": ir_k1,
        "ir_k1_sampled": ir_k1_sampled,
        "floor_k1": floor_k1,
    }


def step_rows(b: Bench, stats: dict[str, Stats], losses: dict, steps: dict, params: list) -> list[dict]:
    """One table row per training-step case: time, noise, saved-tensor memory and the CUDA peak."""
    return [
        {
            "case": name,
            "median_ms": st.median * 1e3,
            "iqr_rel": st.spread,
            "blocks": st.blocks,
            "saved_mb": mb(saved_bytes(losses[name], params)),
            "cuda_peak_mb": mb(cuda_peak_bytes(steps[name], b.device)),
        }
        for name, st in stats.items()
    ]
