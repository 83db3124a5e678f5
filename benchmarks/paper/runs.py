"""Run folders: what a trained run records, when it may be reused, and training the missing runs as ensembles.

A run folder (``runs/<key>/`` for the runs of Table 1, ``tune/<key>_nu<nu>/`` for the points of the nu sweep)
holds ``model.pt`` (the best-validation ``state_dict``) and ``train.json``, written last, with the run's training
settings: dataset, group, model, seed, nu, profile, epochs, split sizes, learning rate, batch size, the code
version (:func:`~benchmarks.paper.store.code_version`) and the torch version. A folder is reused only when every
one of them equals what the command would train now; otherwise the command refuses before training anything, names
the folders and the differing settings, and ``--force`` retrains (a run is never silently reused across settings).
Evaluations (``metrics.json``, ``point.json``) record the evaluation settings too and are recomputed when those
differ, or when the checkpoint was retrained.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import torchinvariance as ti
from benchmarks._common import log
from benchmarks.paper.data import TransformingDataset
from benchmarks.paper.ensemble import train_ensemble
from benchmarks.paper.profiles import Profile
from benchmarks.paper.store import code_version, differences, read_json, save_state, write_json
from benchmarks.paper.train import RunSpec

MODEL_FILE = "model.pt"
TRAIN_FILE = "train.json"
METRICS_FILE = "metrics.json"
POINT_FILE = "point.json"
CHECKPOINT_FILE = "checkpoint.pt"  # the training state of a run in progress (train.train(checkpoint=...))


def train_settings(spec: RunSpec, profile: Profile) -> dict[str, Any]:
    """The settings a trained checkpoint is only reused under (see the module docstring)."""
    return {
        "dataset": spec.dataset,
        "group": spec.group,
        "model": spec.model,
        "seed": spec.seed,
        "nu": spec.nu,
        "profile": profile.name,
        "epochs": profile.epochs,
        "sizes": list(profile.sizes),
        "lr": profile.lr,
        "batch_size": profile.batch_size,
        "code": code_version()["hash"],
        "torch": torch.__version__,
    }


def eval_settings(profile: Profile, *names: str) -> dict[str, Any]:
    """The profile fields ``names`` an evaluation depends on, with the code and torch versions."""
    out: dict[str, Any] = {n: getattr(profile, n) for n in names}
    out.update(code=code_version()["hash"], torch=torch.__version__)
    return out


@dataclass
class Mismatch:
    """A run folder whose recorded training settings differ from the wanted ones."""

    folder: Path
    diffs: dict[str, tuple[Any, Any]]

    def __str__(self) -> str:
        if all(old is None for old, _ in self.diffs.values()):
            return f"{self.folder}: records no training settings (made by an older version of the benchmark)"
        parts = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in self.diffs.items())
        return f"{self.folder}: {parts}"


@dataclass
class RunStore:
    """The run folders under ``results_dir`` and the rules for reusing them.

    ``fresh`` holds the folders trained by this process: under ``force`` they are still reused when their settings
    match (so ``run`` after an automatic ``tune`` in the same command does not retrain what the tune just trained).
    """

    results_dir: Path
    device: torch.device
    force: bool = False
    compile: bool = False
    max_members: int | None = None
    progress: bool = True
    fresh: set[Path] = field(default_factory=set)
    retrained: set[Path] = field(default_factory=set)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.results_dir / "runs" / spec.key

    def point_dir(self, spec: RunSpec) -> Path:
        return self.results_dir / "tune" / f"{spec.key}_nu{spec.nu:g}"

    def record(self, folder: Path) -> dict | None:
        """``train.json`` of a complete trained folder, else None."""
        if (folder / TRAIN_FILE).exists() and (folder / MODEL_FILE).exists():
            return read_json(folder / TRAIN_FILE)
        return None

    def status(self, folder: Path, spec: RunSpec, profile: Profile) -> str | Mismatch:
        """``"ok"`` (reusable), ``"absent"`` (to train) or the :class:`Mismatch`."""
        if (self.force and folder not in self.fresh) or not folder.exists():
            return "absent"
        rec = self.record(folder)
        wanted = train_settings(spec, profile)
        if rec is None:
            # results of an older version of the benchmark (an evaluation without training settings) are not
            # trusted; a checkpoint without its train.json is what a crash leaves behind: train it again
            legacy = (folder / METRICS_FILE).exists() or (folder / POINT_FILE).exists()
            return Mismatch(folder, differences(None, wanted)) if legacy else "absent"
        diffs = differences(rec.get("settings"), wanted)
        return Mismatch(folder, diffs) if diffs else "ok"

    def refuse(self, mismatches: Sequence[Mismatch], command: str) -> None:
        """Stop (before any training) when a run folder was made with other settings, naming them all."""
        if not mismatches:
            return
        lines = "\n  ".join(str(m) for m in mismatches)
        raise SystemExit(
            f"error: {len(mismatches)} run folder(s) under {self.results_dir} were trained with other settings than "
            f"this {command} would use:\n  {lines}\nNothing was reused or overwritten. Re-run with --force to retrain "
            "them (and everything else), or use another --results-dir."
        )

    def plan(
        self, pairs: Iterable[tuple[RunSpec, Path]], profile: Profile, reuse: Callable[[RunSpec], Path] | None = None
    ) -> tuple[list[tuple[RunSpec, Path]], list[Mismatch]]:
        """Which of ``(spec, folder)`` must be trained, and which folders mismatch.

        ``reuse(spec)`` may name a second folder (a tune point) whose checkpoint is copied when it matches.
        """
        todo, bad = [], []
        for spec, folder in pairs:
            st = self.status(folder, spec, profile)
            if isinstance(st, Mismatch):
                bad.append(st)
            elif st == "absent":
                other = reuse(spec) if reuse is not None and spec.nu is not None else None
                if other is not None and self.status(other, spec, profile) == "ok" and self.record(other):
                    self._copy(other, folder)
                    continue
                todo.append((spec, folder))
        return todo, bad

    def _copy(self, src: Path, dst: Path) -> None:
        _clear(dst)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / MODEL_FILE, dst / MODEL_FILE)
        shutil.copyfile(src / TRAIN_FILE, dst / TRAIN_FILE)  # last: its presence marks the folder trained
        self.fresh.add(dst)
        self.retrained.add(dst)
        log(f"reuse {src.name} for {dst.name}: the same run (all training settings equal)")

    def train(
        self,
        todo: Sequence[tuple[RunSpec, Path]],
        datasets: dict,
        profile: Profile,
        what: str = "runs",
        pool: Any = None,
    ) -> None:
        """Train ``todo``, saving every run as soon as it finishes.

        On a CPU (or with a ``pool`` of several workers) each run trains alone, resumable from its checkpoint
        (:meth:`train_one`), on the :mod:`~benchmarks.paper.workers` pool when one is given; otherwise (a GPU, one
        worker) as one vmapped ensemble per (dataset, group, model kind), cut into ensembles of at most
        ``max_members``.
        """
        if not todo:
            return
        if self.device.type == "cpu" or (pool is not None and pool.workers > 1):
            self._train_each(todo, datasets, profile, what, pool)
            return
        for (dataset, group, kind), members in ensembles(todo, self.max_members):
            for _, folder in members:
                _clear(folder)
            specs = [s for s, _ in members]
            data: TransformingDataset = datasets[(dataset, group)]
            log(f"train {what}: {dataset}/{group}/{kind}, ensemble of {len(specs)} ({_describe(specs)})")
            results = train_ensemble(specs, data, profile, self.device, compile=self.compile, progress=self.progress)
            for (spec, folder), (state, history) in zip(members, results):
                self.save(folder, spec, profile, state, history)
            h = results[0][1]
            seconds = h.get("ensemble", {}).get("seconds", h["seconds"] * len(specs))
            log(
                f"trained {dataset}/{group}/{kind} x{len(specs)} in {seconds:.0f}s; best epochs "
                + ", ".join(f"{r[1]['best_epoch']}/{r[1]['epochs']}" for r in results)
            )

    def _train_each(self, todo, datasets, profile, what, pool) -> None:
        log(f"train {what}: {len(todo)} run(s) on {pool.workers if pool else 1} worker(s)")
        if pool is None:
            for spec, folder in todo:
                self.train_one(spec, self.prepare(folder), datasets, profile)
            return
        futures = [(folder, pool.submit("train", spec, self.prepare(folder))) for spec, folder in todo]
        for folder, future in futures:
            future.result()
            self.fresh.add(folder)
            self.retrained.add(folder)

    def prepare(self, folder: Path) -> Path:
        """Ready ``folder`` for training: its records go (a crash then leaves it absent, never half-stale); its
        training checkpoint stays, to resume from, unless ``--force`` asked to retrain everything."""
        _clear(folder)
        if self.force:
            (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        return folder

    def train_one(
        self, spec: RunSpec, folder: Path, datasets: dict, profile: Profile, position: int | None = None
    ) -> dict:
        """Train one run alone into ``folder``, resuming from ``folder/checkpoint.pt`` when it holds this run's
        state; the checkpoint is removed once ``model.pt`` and ``train.json`` are written. Returns the history."""
        from benchmarks.paper.train import train

        _clear(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ckpt = folder / CHECKPOINT_FILE
        resumed = ckpt.exists()
        state, history = train(
            spec,
            datasets[(spec.dataset, spec.group)],
            profile,
            self.device,
            progress=self.progress,
            checkpoint=ckpt,
            position=position,
        )
        self.save(folder, spec, profile, state, history)
        ckpt.unlink(missing_ok=True)
        note = " (resumed from its checkpoint)" if resumed else ""
        log(
            f"trained {spec.key}{f' nu={spec.nu:g}' if spec.nu is not None else ''} in {history['seconds']:.0f}s"
            f"{note}; best epoch {history['best_epoch']}/{history['epochs']}, val acc {history['best_val_acc']:.2f}%"
        )
        return history

    def save(self, folder: Path, spec: RunSpec, profile: Profile, state: dict, history: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_state(folder / MODEL_FILE, state)
        record = {
            "settings": train_settings(spec, profile),
            "history": history,
            "recorded": {**code_version(), "device": str(self.device), "compile": self.compile},
            "parameters": sum(v.numel() for v in state.values()),
        }
        write_json(folder / TRAIN_FILE, record)  # last: its presence marks the folder trained
        self.fresh.add(folder)
        self.retrained.add(folder)

    def evaluation(self, folder: Path, name: str, wanted: dict, quiet: bool = False) -> dict | None:
        """The stored evaluation ``name`` of a folder, if it was made with ``wanted`` on the current checkpoint."""
        path = folder / name
        if folder in self.retrained or not path.exists() or (self.force and folder not in self.fresh):
            return None
        stored = read_json(path)
        rec = self.record(folder)
        if rec is None or stored.get("settings") != rec.get("settings"):
            return None
        diffs = differences(stored.get("eval_settings"), wanted)
        if diffs:
            if not quiet:
                log(f"re-evaluate {folder.name}: evaluation settings changed ({', '.join(diffs)})")
            return None
        return stored


def ensembles(todo: Sequence[tuple[RunSpec, Any]], max_members: int | None = None) -> list[tuple[tuple, list]]:
    """``todo`` grouped by (dataset, group, model kind), in order, each group cut into chunks of ``max_members``."""
    groups: dict[tuple[str, str, str], list] = {}
    for spec, extra in todo:
        groups.setdefault((spec.dataset, spec.group, spec.model), []).append((spec, extra))
    size = max_members or max((len(v) for v in groups.values()), default=1)
    return [(key, members[i : i + size]) for key, members in groups.items() for i in range(0, len(members), size)]


def _clear(folder: Path) -> None:
    """Remove a folder's records before it is retrained (a crash then leaves it absent, never half-stale)."""
    for name in (TRAIN_FILE, METRICS_FILE, POINT_FILE, MODEL_FILE):
        (folder / name).unlink(missing_ok=True)


def _describe(specs: Sequence[RunSpec]) -> str:
    seeds = sorted({s.seed for s in specs})
    nus = sorted({s.nu for s in specs if s.nu is not None})
    parts = [f"seeds {seeds}"]
    if nus:
        parts.append(f"nu {[float(f'{v:g}') for v in nus]}")
    return ", ".join(parts)


def load_trained(folder: Path, spec: RunSpec, group: ti.Group, device: torch.device) -> torch.nn.Module:
    """The trained model of a folder, in eval mode on ``device``."""
    from benchmarks.paper.store import load_state
    from benchmarks.paper.train import load_model

    return load_model(spec, group, load_state(folder / MODEL_FILE), device)
