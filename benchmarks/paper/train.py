"""The training protocol of the paper's runs (§4.1), its sequential reference trainer, and the evaluation of a run.

The protocol, shared by :func:`train` (one run, a plain ``nn.Module``) and
:func:`benchmarks.paper.ensemble.train_ensemble` (many runs as one vmapped ensemble):

- the model is built right after ``torch.manual_seed(seed)``;
- Adam (``profile.lr``), mini-batches of ``profile.batch_size``;
- every epoch, one generator per run (seeded ``DATA_SEED + seed``, on the training device) draws the epoch's data
  order and one group element per sample at once (:func:`~benchmarks.paper.data.epoch_draws`); a step gathers its
  augmented batch from the orbit of the training split, computed once;
- the loss of a step is :func:`step_losses`: cross-entropy, plus ``nu`` times :class:`torchinvariance.InvarianceLoss`
  through its single-forward path (``forward_with_logits``: ONE model call on the stacked ``[x; g_1 x; ...]``) for
  the IR models;
- losses are summed on the device and read once per epoch; after each epoch the validation accuracy decides
  whether the run's best checkpoint is replaced (strictly better only).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import torchinvariance as ti
from benchmarks._common import log
from benchmarks.paper.data import NUM_CLASSES, Split, TransformingDataset, epoch_draws
from benchmarks.paper.labels import IR_MODELS, IR_VARIANTS, is_ir
from benchmarks.paper.profiles import Profile
from benchmarks.paper.report import paper_mean
from benchmarks.paper.store import code_version, save_state

IN_SHAPE = (1, 36, 36)
GROUPS = {
    "rotation": {"name": "rotation", "order": 4},  # R^2_4
    "translation": {"name": "translation", "order": 3, "axis": "x"},  # T^2_3
}
DATA_SEED = 10_000  # a run's data-order/augmentation generator is seeded DATA_SEED + its seed
NOT_VECTORIZED = ("WT-escnn",)  # escnn modules do not run under torch.func.vmap: these train one by one
CHECKPOINT_EVERY = 5  # epochs between the training checkpoints of a resumable run (train(checkpoint=...))


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
    model: str  # DA, WT, WT-escnn, IR-l2, IR-kl, IR-normalized_l2, IR-normalized_l2_detached
    seed: int
    nu: float | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}_{self.group}_{self.model}_s{self.seed}"

    @property
    def regularizer(self) -> str | None:
        """The key of the model's nu in ``nu.json`` (``l2``, ..., ``normalized_l2_detached``); None for DA/WT."""
        return self.model.removeprefix("IR-") if is_ir(self.model) else None


def make_model(model: str, group: ti.Group) -> nn.Module:
    """The network of a model kind: MLP for DA/IR, weight-tied MLPs for WT."""
    if model == "DA" or is_ir(model):
        return ti.MLP(in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    if model == "WT":
        return ti.GroupInvariantMLP(group, in_shape=IN_SHAPE, num_classes=NUM_CLASSES, pool="max")
    if model == "WT-escnn":
        return ti.EscnnInvariantMLP(order=group.order, in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    known = sorted([*IR_MODELS, *IR_VARIANTS])
    raise ValueError(f"unknown model kind {model!r}; expected DA, WT, WT-escnn or one of {known}")


def make_divergence(model: str) -> str | Callable[[Tensor, Tensor], Tensor] | None:
    """The regularizer's divergence of a model kind: a library name, a configured library function, or None."""
    if model in IR_MODELS:
        return IR_MODELS[model]
    if model in IR_VARIANTS:
        name, options = IR_VARIANTS[model]
        return functools.partial(getattr(ti, f"{name}_divergence"), **options)
    return None


def step_losses(
    model: Callable[[Tensor], Tensor], group: ti.Group, kind: str, x: Tensor, y: Tensor, nu: Tensor
) -> Tensor:
    """``(total, task, regularizer)`` of one training step of one run, stacked: the one loss of the protocol.

    ``total = cross_entropy(f(x), y) + nu * I_f(x)`` for the IR kinds, with :class:`torchinvariance.InvarianceLoss`
    (the whole group, ``reduction="mean"``) through ``forward_with_logits`` (one model call on ``x`` and its
    orbit); ``total = cross_entropy(f(x), y)`` and a regularizer of 0 otherwise. ``model`` may be a module or, in
    an ensemble, a function of the input built with ``torch.func.functional_call`` inside ``torch.func.vmap``.
    """
    divergence = make_divergence(kind)
    if divergence is None:
        task = F.cross_entropy(model(x), y)
        return torch.stack([task, task, torch.zeros_like(task)])
    reg, logits = ti.InvarianceLoss(model, group, divergence=divergence).forward_with_logits(x)
    task = F.cross_entropy(logits, y)
    return torch.stack([task + nu * reg, task, reg])


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


class TrainingData:
    """What every run of one dataset needs on the training device, computed once.

    ``orbit[g, i]`` is ``g`` acting on training sample ``i`` (so a step only gathers), ``y`` the training labels,
    ``val_x``/``val_y`` the validation split.
    """

    def __init__(self, data: TransformingDataset, device: torch.device) -> None:
        self.group = data.group
        self.orbit = data.group.orbit(data.train.x.to(device))  # (order, n, C, H, W)
        self.y = data.train.y.to(device)
        self.val_x = data.val.x.to(device)
        self.val_y = data.val.y.to(device)
        self.n = len(data.train)


def check_nu(spec: RunSpec) -> None:
    """An IR run needs a finite ``nu >= 0``; the others must not have one."""
    if is_ir(spec.model) and (spec.nu is None or not math.isfinite(spec.nu) or spec.nu < 0):
        raise ValueError(f"run {spec.key} needs a finite regularizer weight nu >= 0, got {spec.nu!r}")


def checkpoint_settings(spec: RunSpec, profile: Profile, epochs: int) -> dict:
    """What a training checkpoint must have been made under to be resumed: the run and its protocol."""
    return {
        "key": spec.key,
        "model": spec.model,
        "seed": spec.seed,
        "nu": spec.nu,
        "epochs": epochs,
        "sizes": list(profile.sizes),
        "lr": profile.lr,
        "batch_size": profile.batch_size,
        "torch": str(torch.__version__),  # a plain str: torch.load(weights_only=True) refuses TorchVersion
        "code": code_version()["hash"],
    }


def _load_checkpoint(path: Path | None, wanted: dict) -> dict | None:
    """The checkpoint at ``path`` if it was made under ``wanted`` (else None, said in the log: the run starts over)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than trust it
        log(f"{path}: not a readable training checkpoint ({type(exc).__name__}); the run starts over")
        return None
    if not isinstance(state, dict) or state.get("settings") != wanted:
        got = state.get("settings") if isinstance(state, dict) else None
        diffs = sorted(k for k in wanted if not isinstance(got, dict) or got.get(k) != wanted[k])
        log(f"{path}: a checkpoint of other settings ({', '.join(diffs)}); the run starts over")
        return None
    log(f"{path}: resuming {wanted['key']} after epoch {state['epoch']} of {wanted['epochs']}")
    return state


def train(
    spec: RunSpec,
    data: TransformingDataset,
    profile: Profile,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
    checkpoint_every: int | None = None,
    on_epoch: Callable[[int], None] | None = None,
    position: int | None = None,
) -> tuple[dict[str, Tensor], dict]:
    """Train one run alone, the reference of the protocol (see the module docstring).

    The GPU path trains through :func:`benchmarks.paper.ensemble.train_ensemble`, which gives each member what
    this function gives it; this function is the reference its tests compare against, the trainer of the kinds
    in :data:`NOT_VECTORIZED`, and what each worker process runs on a CPU (:mod:`benchmarks.paper.workers`).

    Resuming: with ``checkpoint`` (a file path), the whole training state (model, Adam, the data generator, the
    best checkpoint so far, the history) is written there atomically every ``checkpoint_every`` epochs (default
    :data:`CHECKPOINT_EVERY`) and after the last one. A later call with the same path and the same run and protocol
    (:func:`checkpoint_settings`) continues from it, and ends with exactly what an uninterrupted call returns
    (the same parameters bit for bit, the same history but for the wall time); a checkpoint made under other
    settings, or unreadable, is ignored and the run starts over.

    Args:
        on_epoch: called with the number of finished epochs after each epoch (and its checkpoint, if due).
        position: the line of the progress bar (one per worker process).

    Returns:
        The best-validation-accuracy ``state_dict`` (on the CPU) and the history.
    """
    check_nu(spec)
    epochs = profile.epochs if epochs is None else epochs
    checkpoint_every = CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 epoch, got {checkpoint_every!r}")
    td = TrainingData(data, device)
    group, n, bs = td.group, td.n, profile.batch_size
    torch.manual_seed(spec.seed)
    model = make_model(spec.model, group).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr)
    gen = torch.Generator(device=device).manual_seed(DATA_SEED + spec.seed)
    nu = torch.tensor(spec.nu or 0.0, dtype=torch.float32, device=device)
    steps = math.ceil(n / bs)
    history: dict = {"epoch": [], "train_loss": [], "train_reg": [], "val_acc": []}
    best_acc, best_state, best_epoch = -1.0, None, -1
    first, spent = 0, 0.0
    wanted = checkpoint_settings(spec, profile, epochs)
    resumed = _load_checkpoint(checkpoint, wanted)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        gen.set_state(resumed["generator"])
        history, best_acc, best_epoch = resumed["history"], resumed["best_acc"], resumed["best_epoch"]
        best_state, first, spent = resumed["best_state"], resumed["epoch"], resumed["seconds"]
    started = time.perf_counter()
    bar = tqdm(
        range(first, epochs),
        desc=spec.key,
        leave=False,
        disable=not progress,
        unit="ep",
        initial=first,
        total=epochs,
        position=position,
    )
    for epoch in bar:
        model.train()
        perm, els = epoch_draws(n, group.order, gen)
        total = torch.zeros(3, device=device)
        for s in range(steps):
            idx = slice(s * bs, (s + 1) * bs)
            losses = step_losses(model, group, spec.model, td.orbit[els[idx], perm[idx]], td.y[perm[idx]], nu)
            opt.zero_grad(set_to_none=True)
            losses[0].backward()
            opt.step()
            total += losses.detach()
        with torch.no_grad():
            model.eval()
            correct = int((model(td.val_x).argmax(-1) == td.val_y).sum())
        val_acc = 100.0 * correct / len(td.val_y)
        loss, _, reg = (total / steps).tolist()  # the one read of the epoch
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(loss)
        history["train_reg"].append(reg)
        history["val_acc"].append(val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_acc:.1f}", best=f"{best_acc:.1f}")
        done = epoch + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == epochs):
            state = {
                "settings": wanted,
                "epoch": done,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                "history": history,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "seconds": spent + time.perf_counter() - started,
            }
            save_state(checkpoint, state)
        if on_epoch is not None:
            on_epoch(done)
    bar.close()
    assert best_state is not None
    seconds = spent + time.perf_counter() - started
    history = dict(history)
    history.update(best_val_acc=best_acc, best_epoch=best_epoch, seconds=seconds, epochs=epochs)
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
    out: dict = {
        "test_acc": accuracy(model, test, device),
        "n_test": len(test),
        # per-element values are stored as the library reports them; index of the identity among them, for the
        # paper's convention (report.paper_mean)
        "identity_index": list(group.elements()).index(group.identity),
    }
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
    """DI (the paper's convention, non-identity mean) and accuracy on the drifted test sets ``D(beta)`` (§4.3)."""
    identity = list(data.group.elements()).index(data.group.identity)
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
        di = report["di"]["per_element"]
        curve.append(
            {"beta": beta, "di": paper_mean(di, identity), "di_per_element": di, "acc": accuracy(model, split, device)}
        )
    base = curve[0]["acc"] if curve and curve[0]["beta"] == 0.0 else None
    for point in curve:
        point["acc_ratio"] = point["acc"] / base if base else float("nan")
    return {"curve": curve, "n": len(next(iter(drifted.values()))) if drifted else 0}
