"""Training and evaluation of one (dataset, group, model, seed) run, paper §4.1."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import torchinvariance as ti
from benchmarks.paper.data import NUM_CLASSES, Split, TransformingDataset, augment
from benchmarks.paper.labels import IR_MODELS
from benchmarks.paper.profiles import Profile

IN_SHAPE = (1, 36, 36)
GROUPS = {
    "rotation": {"name": "rotation", "order": 4},  # R^2_4
    "translation": {"name": "translation", "order": 3, "axis": "x"},  # T^2_3
}


def make_group(name: str) -> ti.Group:
    """The paper's group called ``name`` (``rotation`` or ``translation``)."""
    if name not in GROUPS:
        raise ValueError(f"unknown group {name!r}; expected one of {sorted(GROUPS)}")
    params = dict(GROUPS[name])
    return ti.get_group(params.pop("name"), **params)


@dataclass(frozen=True)
class RunSpec:
    """One training run."""

    dataset: str
    group: str
    model: str  # DA, WT, WT-escnn, IR-l2, IR-kl, IR-normalized_l2
    seed: int
    nu: float | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}_{self.group}_{self.model}_s{self.seed}"

    @property
    def divergence(self) -> str | None:
        return IR_MODELS.get(self.model)


def make_model(model: str, group: ti.Group) -> nn.Module:
    """The network of a model kind: MLP for DA/IR, weight-tied MLPs for WT."""
    if model == "DA" or model in IR_MODELS:
        return ti.MLP(in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    if model == "WT":
        return ti.GroupInvariantMLP(group, in_shape=IN_SHAPE, num_classes=NUM_CLASSES, pool="max")
    if model == "WT-escnn":
        return ti.EscnnInvariantMLP(order=group.order, in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    raise ValueError(f"unknown model kind {model!r}; expected DA, WT, WT-escnn or one of {sorted(IR_MODELS)}")


def batches(split: Split, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Ordered mini-batches of a split, moved to ``device``."""
    for i in range(0, len(split), batch_size):
        yield split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device: torch.device, batch_size: int = 2048) -> float:
    """Top-1 accuracy (%) on a split as it is (val/test carry their fixed transforms)."""
    model.eval()
    correct = 0
    for xb, yb in batches(split, batch_size, device):
        correct += (model(xb).argmax(1) == yb).sum().item()
    return 100.0 * correct / max(len(split), 1)


def train(
    spec: RunSpec,
    data: TransformingDataset,
    profile: Profile,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict]:
    """Train one run; return the best-validation-accuracy ``state_dict`` and the history.

    Adam (lr 8e-4), batch 512, augmentation with a uniformly drawn group element re-drawn every epoch,
    plus ``nu * InvarianceLoss`` for IR models; model selected by the best validation accuracy.
    """
    epochs = profile.epochs if epochs is None else epochs
    torch.manual_seed(spec.seed)
    group = data.group
    model = make_model(spec.model, group).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr)
    reg = None
    if spec.divergence is not None:
        if spec.nu is None:
            raise ValueError(f"run {spec.key} needs a regularizer weight nu")
        reg = ti.InvarianceLoss(model, group, divergence=spec.divergence)
    gen = torch.Generator().manual_seed(10_000 + spec.seed)
    n = len(data.train)
    steps = math.ceil(n / profile.batch_size)
    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "train_reg": [], "val_acc": []}
    best_acc, best_state, best_epoch = -1.0, None, -1
    started = time.perf_counter()
    bar = tqdm(range(epochs), desc=spec.key, leave=False, disable=not progress, unit="ep")
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_reg = 0.0
        for s in range(steps):
            idx = perm[s * profile.batch_size : (s + 1) * profile.batch_size]
            xb = augment(group, data.train.x[idx], gen).to(device)
            yb = data.train.y[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if reg is not None:
                r = reg(xb, logits=logits)
                loss = loss + spec.nu * r
                tot_reg += r.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item()
        val_acc = accuracy(model, data.val, device)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(tot_loss / steps)
        history["train_reg"].append(tot_reg / steps)
        history["val_acc"].append(val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        bar.set_postfix(loss=f"{tot_loss / steps:.3f}", val=f"{val_acc:.1f}", best=f"{best_acc:.1f}")
    bar.close()
    assert best_state is not None
    history.update(best_val_acc=best_acc, best_epoch=best_epoch, seconds=time.perf_counter() - started, epochs=epochs)
    return best_state, history


def load_model(spec: RunSpec, group: ti.Group, state: dict[str, Tensor], device: torch.device) -> nn.Module:
    """Rebuild a trained model from its plain ``state_dict``."""
    model = make_model(spec.model, group)
    model.load_state_dict(state)
    return model.to(device).eval()


def _stats(values: Tensor) -> dict[str, float]:
    values = values.double()
    return {
        "mean": values.mean().item(),
        "std": values.std(unbiased=False).item() if len(values) > 1 else 0.0,
    }


def evaluate(
    model: nn.Module,
    data: TransformingDataset,
    profile: Profile,
    device: torch.device,
    progress: bool = True,
) -> dict:
    """Test accuracy, LI/DI over the test orbit, SI on a subset, and sigma_max of the input Jacobian."""
    group = data.group
    test = data.test.subset(profile.eval_test)
    out: dict = {"test_acc": accuracy(model, test, device), "n_test": len(test)}
    report = ti.evaluate_invariance(
        model,
        group,
        list(batches(test, 1024, device)),
        metrics=("accuracy", "di", "li"),
        device=device,
        progress=progress,
    )
    out["invariance"] = report.to_dict()
    si_split = test.subset(profile.eval_si)
    si = ti.evaluate_invariance(
        model, group, list(batches(si_split, 256, device)), metrics=("si",), device=device, progress=progress
    )
    out["saliency"] = si.to_dict()
    out["n_si"] = len(si_split)
    xj = test.x[: profile.eval_jacobian].to(device)
    sig = torch.cat([ti.jacobian_spectral_norm(model, xb) for xb in xj.split(256)]).cpu()
    out["sigma_max"] = _stats(sig)
    out["n_jacobian"] = len(xj)
    out["weight_spectral_norms"] = ti.weight_spectral_norms(model)
    return out


def evaluate_drift(
    model: nn.Module,
    data: TransformingDataset,
    drifted: dict[float, Split],
    device: torch.device,
    progress: bool = True,
) -> dict:
    """DI and accuracy on the drifted test sets ``D(beta)`` (paper §4.3)."""
    curve = []
    for beta, split in drifted.items():
        report = ti.evaluate_invariance(
            model,
            data.group,
            list(batches(split, 1024, device)),
            metrics=("di",),
            device=device,
            progress=False,
        ).to_dict()
        curve.append({"beta": beta, "di": report["di"]["mean"], "acc": accuracy(model, split, device)})
    base = curve[0]["acc"] if curve and curve[0]["beta"] == 0.0 else None
    for point in curve:
        point["acc_ratio"] = point["acc"] / base if base else float("nan")
    return {"curve": curve, "n": len(next(iter(drifted.values()))) if drifted else 0}
