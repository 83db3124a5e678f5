"""Many runs of one (group, model kind) trained as ONE vmapped ensemble: the speed lever of issue 10.

The members' parameters are stacked along a leading ensemble axis (``torch.func.stack_module_state``), one step
runs every member's loss at once (``torch.func.vmap`` over ``torch.func.functional_call``), and one
``torch.optim.Adam`` updates the stacked tensors. Adam is elementwise, so member ``e``'s slice of every stacked
tensor receives exactly the update a separate Adam would give it; the members share nothing but the step counter,
which every member advances together anyway.

Each member keeps its own:

- initialisation (the model is built right after ``torch.manual_seed(seed)``, as :func:`~.train.train` does);
- data order and augmentation draws (its own generator, seeded ``DATA_SEED + seed``);
- regularizer weight nu (a per-member vector, so one ensemble can be the whole nu grid of ``tune``);
- best-validation-accuracy checkpoint and epoch (tracked on the device, no host sync).

The loss of a member is :func:`~.train.step_losses`, the same function the sequential trainer calls, here on a
function of the input built with ``functional_call`` (so the regularizer is the library's
:class:`torchinvariance.InvarianceLoss`, vmapped). Nothing reads a value back to the host inside an epoch: the
losses are summed on the device and read once per epoch, with the validation accuracies.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from benchmarks.paper.data import TransformingDataset, epoch_draws
from benchmarks.paper.profiles import Profile
from benchmarks.paper.train import (
    DATA_SEED,
    NOT_VECTORIZED,
    RunSpec,
    TrainingData,
    check_nu,
    make_model,
    step_losses,
    train,
)


def _check_members(specs: Sequence[RunSpec]) -> None:
    if not specs:
        raise ValueError("an ensemble needs at least one run")
    kinds = {(s.dataset, s.group, s.model) for s in specs}
    if len(kinds) != 1:
        raise ValueError(f"an ensemble trains runs of one (dataset, group, model kind); got {sorted(kinds)}")
    keys = [(s.seed, s.nu) for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"an ensemble's members must differ in seed or nu; got {keys}")
    for s in specs:
        check_nu(s)


class Ensemble:
    """The state of an ensemble in training: stacked parameters, one Adam, per-member generators and best states.

    :func:`train_ensemble` drives it epoch by epoch; the start-up estimate times its :meth:`step`.
    """

    def __init__(
        self,
        specs: Sequence[RunSpec],
        td: TrainingData,
        profile: Profile,
        device: torch.device,
        compile: bool = False,
    ) -> None:
        _check_members(specs)
        kind = specs[0].model
        if kind in NOT_VECTORIZED:
            raise ValueError(f"{kind} does not run under torch.func.vmap; train it with train.train")
        self.specs, self.td, self.profile, self.device = list(specs), td, profile, device
        self.size = len(specs)
        group = td.group
        models = []
        for s in specs:
            torch.manual_seed(s.seed)
            models.append(make_model(kind, group).to(device))
        self.keys = list(models[0].state_dict())
        self.params, self.buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        self.base = base
        self.opt = torch.optim.Adam(list(self.params.values()), lr=profile.lr)
        self.gens = [torch.Generator(device=device).manual_seed(DATA_SEED + s.seed) for s in specs]
        self.nus = torch.tensor([s.nu or 0.0 for s in specs], dtype=torch.float32, device=device)

        def member_losses(p: dict, b: dict, x: Tensor, y: Tensor, nu: Tensor) -> Tensor:
            return step_losses(lambda inp: functional_call(base, (p, b), (inp,)), group, kind, x, y, nu)

        def member_predictions(p: dict, b: dict, x: Tensor) -> Tensor:
            return functional_call(base, (p, b), (x,)).argmax(-1)

        self._step = vmap(member_losses)
        self.cuda_graphs = compile and device.type == "cuda"
        if compile:
            self._step = torch.compile(self._step, mode="reduce-overhead" if self.cuda_graphs else None)
        self._predict = vmap(member_predictions, in_dims=(0, 0, None))
        self.best = {k: v.detach().clone() for k, v in {**self.params, **self.buffers}.items()}
        self.best_acc = torch.full((self.size,), -1.0, dtype=torch.float64, device=device)
        self.best_epoch = torch.full((self.size,), -1, dtype=torch.long, device=device)
        self.steps = math.ceil(td.n / profile.batch_size)

    def draws(self) -> tuple[Tensor, Tensor]:
        """This epoch's data order and augmentation elements of every member, ``(size, n)`` each."""
        draws = [epoch_draws(self.td.n, self.td.group.order, g) for g in self.gens]
        return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])

    def step(self, perm: Tensor, els: Tensor, s: int) -> Tensor:
        """Step ``s`` of the epoch drawn as ``(perm, els)``: one Adam step of every member; ``(size, 3)`` losses."""
        bs = self.profile.batch_size
        idx = slice(s * bs, (s + 1) * bs)
        x = self.td.orbit[els[:, idx], perm[:, idx]]  # (size, b, C, H, W): every member's own augmented batch
        y = self.td.y[perm[:, idx]]
        self.base.train()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        losses = self._step(self.params, self.buffers, x, y, self.nus)
        self.opt.zero_grad(set_to_none=True)
        losses[:, 0].sum().backward()  # members share no parameter: each gets exactly its own gradient
        self.opt.step()
        return losses.detach()

    def epoch(self) -> Tensor:
        """One epoch of every member; the ``(size, 3)`` mean losses, still on the device."""
        perm, els = self.draws()
        total = torch.zeros(self.size, 3, device=self.device)
        for s in range(self.steps):
            total += self.step(perm, els, s)
        return total / self.steps

    @torch.no_grad()
    def validate(self, epoch: int) -> Tensor:
        """Validation accuracy (%) of every member; a strictly better one replaces the member's best state."""
        self.base.eval()
        correct = (self._predict(self.params, self.buffers, self.td.val_x) == self.td.val_y).sum(1)
        acc = correct.double() * 100.0 / len(self.td.val_y)
        improved = acc > self.best_acc
        self.best_acc = torch.where(improved, acc, self.best_acc)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        for k, v in {**self.params, **self.buffers}.items():
            self.best[k] = torch.where(improved.view(-1, *[1] * (v.dim() - 1)), v.detach(), self.best[k])
        return acc

    def best_state(self, member: int) -> dict[str, Tensor]:
        """Member ``member``'s best checkpoint as a plain ``state_dict`` on the CPU."""
        return {k: self.best[k][member].detach().cpu().clone() for k in self.keys}


def train_ensemble(
    specs: Sequence[RunSpec],
    data: TransformingDataset,
    profile: Profile,
    device: torch.device,
    epochs: int | None = None,
    compile: bool = False,
    progress: bool = True,
) -> list[tuple[dict[str, Tensor], dict]]:
    """Train the runs ``specs`` (one dataset, group and model kind) together; one result per run, in order.

    Args:
        specs: the members; they may differ in seed and nu.
        data: the dataset of their group.
        profile: learning rate, batch size and (unless ``epochs``) the number of epochs.
        device: where to train.
        epochs: overrides ``profile.epochs``.
        compile: run the vmapped step through ``torch.compile`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on
            CUDA; the default mode elsewhere).
        progress: show a progress bar over the epochs.

    Returns:
        ``[(state_dict, history), ...]`` as :func:`benchmarks.paper.train.train` returns for one run: each member's
        best-validation-accuracy ``state_dict`` (on the CPU) and its history, plus ``history["ensemble"]`` (the
        ensemble's size and wall time; ``history["seconds"]`` is that wall time divided by the size).
    """
    _check_members(specs)
    epochs = profile.epochs if epochs is None else epochs
    if specs[0].model in NOT_VECTORIZED:
        return [train(s, data, profile, device, epochs=epochs, progress=progress) for s in specs]
    started = time.perf_counter()
    ens = Ensemble(specs, TrainingData(data, device), profile, device, compile=compile)
    rows = []
    label = f"{specs[0].dataset}_{specs[0].group}_{specs[0].model} x{ens.size}"
    bar = tqdm(range(epochs), desc=label, leave=False, disable=not progress, unit="ep")
    best = -1.0
    for epoch in bar:
        losses = ens.epoch()
        acc = ens.validate(epoch + 1)
        rows.append((losses.tolist(), acc.tolist()))  # the one read of the epoch
        best = max(best, *rows[-1][1])
        bar.set_postfix(best=f"{best:.1f}")
    bar.close()
    seconds = time.perf_counter() - started
    best_acc, best_epoch = ens.best_acc.tolist(), ens.best_epoch.tolist()
    results = []
    for e in range(ens.size):
        history = {
            "epoch": list(range(1, epochs + 1)),
            "train_loss": [r[0][e][0] for r in rows],
            "train_reg": [r[0][e][2] for r in rows],
            "val_acc": [r[1][e] for r in rows],
            "best_val_acc": best_acc[e],
            "best_epoch": best_epoch[e],
            "seconds": seconds / ens.size,
            "epochs": epochs,
            "ensemble": {"size": ens.size, "seconds": seconds, "member": e, "compile": compile},
        }
        results.append((ens.best_state(e), history))
    return results
