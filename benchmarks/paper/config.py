"""The configurations of the sub-commands: the command line, parsed once and never changed afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks.paper.profiles import Profile


@dataclass(frozen=True)
class RunConfig:
    """Everything the ``run`` and ``tune`` sub-commands need, resolved from the command line.

    Attributes:
        command: ``run`` (train, evaluate, report) or ``tune`` (the nu sweep only).
        profile: how much of the paper's protocol to run.
        device: the resolved torch device.
        data_root: folder with ``MNIST/raw`` and ``FashionMNIST/raw``.
        results_dir: where runs, tables, figures and ``results.json`` go.
        nu_config: the tuned nu values that ``run`` reads and ``tune`` writes.
        tune_first: ``run`` tunes nu into ``nu_config`` before training (the smoke profile without
            ``--nu-config`` tunes its own values into the results folder).
        groups: the paper's groups to run, in order.
        seed: the global seed; run seeds are ``seed + profile.seeds``.
        force: recompute finished runs and cached tune points.
        threads: torch CPU threads (0: torch's choice).
        progress: show progress bars.
        command_line: the command as typed, recorded in the outputs.
    """

    command: Literal["run", "tune"]
    profile: Profile
    device: torch.device
    data_root: Path
    results_dir: Path
    nu_config: Path
    tune_first: bool
    groups: tuple[str, ...]
    seed: int = 0
    force: bool = False
    threads: int = 0
    progress: bool = True
    command_line: str = "python -m benchmarks.paper"


@dataclass(frozen=True)
class PublishConfig:
    """The ``publish`` sub-command: copy a finished run's tables, figures and results from ``results_dir`` to ``to``."""

    results_dir: Path
    to: Path
