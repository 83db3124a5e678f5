"""The configurations of the sub-commands: the command line, parsed once and never changed afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks.paper.profiles import Profile


@dataclass(frozen=True)
class RunConfig:
    """Everything the ``run``, ``tune``, ``ablate-si`` and ``robustness`` sub-commands need, from the command line.

    Attributes:
        command: ``run`` (train, evaluate, report), ``tune`` (the nu sweep only), ``ablate-si`` (the SI-recipe
            ablation on the trained DA and IR models) or ``robustness`` (worst case, smallest flip and discovered
            symmetry of the trained models, :mod:`benchmarks.paper.robustness`).
        profile: how much of the paper's protocol to run.
        device: the resolved torch device.
        data_root: folder with ``MNIST/raw`` and ``FashionMNIST/raw``.
        results_dir: where runs, tune points, tables, figures and ``results.json`` go.
        nu_config: the tuned nu values that ``run`` reads and ``tune`` writes.
        nu_from: the ``nu_config`` section ``run`` reads; ``None`` reads the profile's own section (and stops if
            it has none), a name reads that profile's values, explicitly.
        tune_first: ``run`` tunes nu into ``nu_config`` before training (the smoke profile without
            ``--nu-config`` tunes its own values into the results folder).
        groups: the paper's groups to run, in order.
        detached: also train the ``IR-normalized_l2_detached`` variant (default: the profile's choice).
        seed: the global seed; run seeds are ``seed + profile.seeds``.
        force: retrain and re-evaluate everything instead of refusing run folders whose recorded settings differ.
        compile: run the ensembles' training step through ``torch.compile``.
        max_members: train at most this many runs per ensemble (``None``: every run of a (group, model kind) in one).
        dry_run: print the plan and the time estimates of ``tune`` and ``run``, train nothing.
        ablation_samples: test samples of the SI-recipe ablation (``None``: the profile's ``eval_si``).
        robustness_samples: test samples of ``robustness``'s worst case and smallest flips.
        discover_samples: test samples of ``robustness``'s LieGG symmetry spectrum.
        threads: torch CPU threads of this process (0: torch's own choice); each worker process runs one.
        workers: processes that train and evaluate independent runs at once (:mod:`benchmarks.paper.workers`).
        search: ``adaptive`` (the bisection of :func:`benchmarks.paper.tune.search_next`) or ``grid`` (every value).
        progress: show progress bars.
        command_line: the command as typed, recorded in the outputs.
    """

    command: Literal["run", "tune", "ablate-si", "robustness"]
    profile: Profile
    device: torch.device
    data_root: Path
    results_dir: Path
    nu_config: Path
    tune_first: bool
    groups: tuple[str, ...]
    nu_from: str | None = None
    detached: bool = False
    seed: int = 0
    force: bool = False
    compile: bool = False
    max_members: int | None = None
    dry_run: bool = False
    ablation_samples: int | None = None
    robustness_samples: int = 2000
    discover_samples: int = 500
    threads: int = 1
    workers: int = 1
    search: Literal["adaptive", "grid"] = "adaptive"
    progress: bool = True
    command_line: str = "python -m benchmarks.paper"


@dataclass(frozen=True)
class PublishConfig:
    """The ``publish`` sub-command: copy a finished run's tables, figures and results from ``results_dir`` to ``to``."""

    results_dir: Path
    to: Path
