"""The start-up estimate: time a few real training steps of every ensemble a command will train, and extrapolate.

Nothing here is a constant typed in: each ensemble shape (group, model kind, number of members) is built as the
trainer builds it and a few of its steps are timed on this machine, as are the validation pass and the evaluation
(SI, the orbit forward of DI/LI/accuracy, the input Jacobian) on a handful of samples. The estimate is the sum of
those per-step and per-sample times times the work the command has left to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

import torchinvariance as ti
from benchmarks.paper.ensemble import Ensemble
from benchmarks.paper.labels import is_ir
from benchmarks.paper.profiles import Profile
from benchmarks.paper.train import (
    NOT_VECTORIZED,
    RunSpec,
    TrainingData,
    batches,
    make_model,
    step_losses,
)

TIMED_STEPS = 2  # timed steps per ensemble shape, after one warm-up step
DRIFT_LEVELS = 11  # beta = 0, 0.1, ..., 1 (pipeline.BETAS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Work:
    """What is left to do for one (group, model kind): ``members`` runs to train as one ensemble, evaluations."""

    group: str
    kind: str
    members: int = 0  # runs to train together
    runs_to_evaluate: int = 0  # full evaluations (Table 1)
    drift: bool = False  # the evaluations include the drift curves
    points_to_measure: int = 0  # tune points whose validation SI is measured


class Estimator:
    """Measures step and evaluation times once per shape and adds up :class:`Work` items."""

    def __init__(
        self,
        datasets: dict,
        profile: Profile,
        device: torch.device,
        max_members: int | None = None,
        workers: int = 1,
    ) -> None:
        self.datasets, self.profile, self.device, self.max_members = datasets, profile, device, max_members
        self.workers = workers
        # a CPU (or a pool of workers) trains each run alone (train.train); one GPU worker trains ensembles
        self.sequential = device.type == "cpu" or workers > 1
        self._td: dict[str, TrainingData] = {}
        self._epoch: dict[tuple[str, str, int], float] = {}
        self._eval: dict[tuple[str, str], dict[str, float]] = {}

    def _training_data(self, group: str) -> TrainingData:
        if group not in self._td:
            self._td[group] = TrainingData(self.datasets[("mnist", group)], self.device)
        return self._td[group]

    def epoch_seconds(self, group: str, kind: str, members: int) -> float:
        """Measured seconds of one epoch of an ensemble of ``members`` runs of ``kind``."""
        key = (group, kind, members)
        if key not in self._epoch:
            td = self._training_data(group)
            nu = 1.0 if is_ir(kind) else None
            specs = [RunSpec("mnist", group, kind, seed, nu) for seed in range(members)]
            if kind in NOT_VECTORIZED or self.sequential:
                self._epoch[key] = members * self._sequential_epoch(specs[0], td)
            else:
                ens = Ensemble(specs, td, self.profile, self.device)
                perm, els = ens.draws()
                ens.step(perm, els, 0)  # warm-up
                _sync(self.device)
                t = time.perf_counter()
                for s in range(TIMED_STEPS):
                    ens.step(perm, els, (s + 1) % ens.steps)
                _sync(self.device)
                step = (time.perf_counter() - t) / TIMED_STEPS
                t = time.perf_counter()
                ens.validate(1)
                _sync(self.device)
                self._epoch[key] = step * ens.steps + (time.perf_counter() - t)
        return self._epoch[key]

    def _sequential_epoch(self, spec: RunSpec, td: TrainingData) -> float:
        model = make_model(spec.model, td.group).to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=self.profile.lr)
        bs = self.profile.batch_size
        nu = torch.tensor(0.0, device=self.device)
        times = []
        for s in range(TIMED_STEPS + 1):
            idx = torch.arange(s * bs, (s + 1) * bs, device=self.device) % td.n
            t = time.perf_counter()
            loss = step_losses(model, td.group, spec.model, td.orbit[0, idx], td.y[idx], nu)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(self.device)
            times.append(time.perf_counter() - t)
        steps = -(-td.n // bs)
        return sum(times[1:]) / TIMED_STEPS * steps

    def eval_costs(self, group: str, kind: str) -> dict[str, float]:
        """Measured seconds per sample of SI, of the orbit forward (accuracy/DI/LI) and of the input Jacobian."""
        arch = "MLP" if kind == "DA" or is_ir(kind) else kind
        key = (group, arch)
        if key not in self._eval:
            data = self.datasets[("mnist", group)]
            model = make_model(kind, data.group).to(self.device).eval()
            x = data.test.subset(256)
            costs = {}
            t = time.perf_counter()
            loader = list(batches(x, 256, self.device))
            ti.evaluate_invariance(model, data.group, loader, device=self.device, progress=False)
            _sync(self.device)
            costs["forward"] = (time.perf_counter() - t) / len(x)
            xs = x.subset(8)
            t = time.perf_counter()
            ti.evaluate_invariance(
                model,
                data.group,
                list(batches(xs, 8, self.device)),
                metrics=("si",),
                device=self.device,
                progress=False,
            )
            _sync(self.device)
            costs["si"] = (time.perf_counter() - t) / len(xs)
            t = time.perf_counter()
            ti.jacobian_spectral_norm(model, xs.x.to(self.device))
            _sync(self.device)
            costs["jacobian"] = (time.perf_counter() - t) / len(xs)
            self._eval[key] = costs
        return self._eval[key]

    def seconds(self, work: Iterable[Work], workers: int | None = None) -> dict[str, float]:
        """``{"train": s, "evaluate": s}`` for the work items: wall time, the summed time of the runs divided by the
        number of workers (independent runs share the workers evenly; each worker times as one measured here)."""
        p = self.profile
        n_test = p.eval_test or p.sizes[1]
        train = evaluate = 0.0
        for w in work:
            if w.members:
                size = min(w.members, self.max_members or w.members)  # as runs.ensembles cuts them
                full, rest = divmod(w.members, size)
                train += full * self.epoch_seconds(w.group, w.kind, size) * p.epochs
                if rest:
                    train += self.epoch_seconds(w.group, w.kind, rest) * p.epochs
            if w.runs_to_evaluate or w.points_to_measure:
                c = self.eval_costs(w.group, w.kind)
                per_run = c["forward"] * n_test + c["si"] * p.eval_si + c["jacobian"] * p.eval_jacobian
                if w.drift:
                    per_run += c["forward"] * p.drift_n * DRIFT_LEVELS
                evaluate += w.runs_to_evaluate * per_run + w.points_to_measure * c["si"] * p.tune_si
        workers = self.workers if workers is None else workers
        return {"train": train / workers, "evaluate": evaluate / workers}


def describe(label: str, secs: dict[str, float], device: torch.device, workers: int = 1) -> str:
    """One log line: the estimate and its parts."""
    total = secs["train"] + secs["evaluate"]
    if workers > 1:
        where = f"{device}, {workers} workers of 1 thread"
    else:
        where = f"{device}" + (f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else "")
    return (
        f"estimated {label}: {total / 60:.1f} min on this machine ({where}): training {secs['train'] / 60:.1f} min, "
        f"evaluation {secs['evaluate'] / 60:.1f} min (extrapolated from timed steps and samples)"
    )
