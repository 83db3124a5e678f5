"""``python -m benchmarks.paper``: reproduce Table 1 and Figures 2-5 of the paper.

Sub-commands:

- ``run`` (default): train every (dataset, group, model, seed) run that is not finished yet, evaluate it,
  and write Table 1, the figures, ``results.json`` and the PASS/FAIL checks of the paper's claims;
- ``tune``: train the regularizer weight nu's grid at the profile's own length (one ensemble per group and
  regularizer) and the DA reference, pick nu by the guarded rule (:func:`benchmarks.paper.tune.choose_nu`) and
  write it, with the evidence, to the profile's section of the nu config file that ``run`` reads;
- ``ablate-si``: the SI-recipe ablation on the trained DA and IR models (``si_ablation.md``);
- ``robustness``: the worst element, the smallest flip and the LieGG-discovered symmetry of the first seed's
  trained DA, IR and WT models (``robustness.md``, :mod:`benchmarks.paper.robustness`);
- ``publish``: copy a finished run's tables, figures and ``results.json`` (no checkpoints) to ``--to``.

This module only reads the command line: it is parsed once into a frozen configuration
(:class:`~benchmarks.paper.config.RunConfig` or :class:`~benchmarks.paper.config.PublishConfig`), which
:mod:`benchmarks.paper.pipeline` and :mod:`benchmarks.paper.tune` receive.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks._common import pick_device
from benchmarks.paper import ablation, pipeline, robustness, tune
from benchmarks.paper import data as D
from benchmarks.paper.config import PublishConfig, RunConfig
from benchmarks.paper.profiles import PROFILES, get_profile
from benchmarks.paper.train import GROUPS
from benchmarks.paper.workers import default_workers


def physical_cores(cpus: set[int]) -> int | None:
    """How many physical cores the logical CPUs ``cpus`` sit on (Linux ``/proc/cpuinfo``), or None if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, current = set(), {}
    for block in text.split("\n\n"):
        current = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        current = {k.strip(): v.strip() for k, v in current.items()}
        if "processor" in current and int(current["processor"]) in cpus:
            cores.add((current.get("physical id", "0"), current.get("core id", current["processor"])))
    return len(cores) or None


def default_threads() -> int:
    """The ``--threads auto`` choice: 1 on a machine with at most 2 usable CPUs, else one per physical core.

    On the team's shared 2-core machine torch's own choice (2 threads) made the quick profile 8x slower while other
    jobs ran (25 min instead of 3, issue 10): two busy threads that wait for each other at every operation lose
    badly to any other process on the second core, while the benchmark's small matrices (512-row batches of a
    128-wide MLP) gain little from a second thread when the machine is idle. The load of other jobs is not
    subtracted: inside a container ``os.getloadavg`` reports the host's load, not the CPUs this process may use.
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if len(cpus) <= 2:
        return 1
    return max(1, min(len(cpus), physical_cores(set(cpus)) or len(cpus)))


def _threads(text: str) -> int:
    """argparse type: ``auto`` (see :func:`default_threads`) or an int >= 0, else a usage error (no traceback)."""
    if text == "auto":
        return default_threads()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number of threads, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 1 (or 0 for torch's choice), got {value}")
    return value


def _workers(text: str) -> int | str:
    """argparse type: ``auto`` (resolved once the device is known) or an int >= 1."""
    return text if text == "auto" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "tune", "ablate-si", "robustness", "publish"),
        help="default: run",
    )
    p.add_argument(
        "--profile",
        default="paper",
        help=f"one of {sorted(PROFILES)} (default: paper, the protocol of the paper's §4.1 with one seed)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder with MNIST/raw and FashionMNIST/raw "
        "(default: $TORCHINVARIANCE_DATA, else ~/.cache/torchinvariance/data)",
    )
    p.add_argument("--results-dir", default=None, help="default: results/<profile>/")
    p.add_argument(
        "--nu-config",
        default=None,
        help="tuned nu values (default: benchmarks/paper/nu.json; the smoke profile: <results-dir>/nu.json)",
    )
    p.add_argument(
        "--nu-from",
        default=None,
        metavar="PROFILE",
        help="run with the nu values tuned for another profile, explicitly (default: the profile's own)",
    )
    p.add_argument("--groups", nargs="+", default=list(GROUPS), help="subset of: rotation translation")
    p.add_argument(
        "--detached",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train IR with the normalized-L2 divergence and a detached denominator "
        "(default: on for paper/full, off for quick/smoke)",
    )
    p.add_argument("--seed", type=int, default=0, help="global seed (runs use their own seeds from the profile)")
    p.add_argument(
        "--force",
        action="store_true",
        help="retrain and re-evaluate everything (default: reuse run folders whose recorded settings match, refuse "
        "those whose settings differ)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help='torch.compile the ensembles\' training step (mode="reduce-overhead", CUDA graphs, on CUDA)',
    )
    p.add_argument(
        "--max-members",
        type=_positive_int,
        default=None,
        help="at most this many runs per vmapped ensemble (default: all runs of a group and model kind in one)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimates, train nothing")
    p.add_argument(
        "--si-samples",
        type=_positive_int,
        default=None,
        help="ablate-si: test samples (default: the profile's eval_si)",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=2000,
        help="robustness: test samples for the worst case and the smallest flips (default: 2000)",
    )
    p.add_argument(
        "--discover-samples",
        type=_positive_int,
        default=500,
        help="robustness: test samples for the LieGG symmetry spectrum (default: 500)",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        help="torch CPU threads: auto (default: 1 on <= 2 CPUs, else one per physical core), "
        "a number >= 1, or 0 for torch's choice",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="processes training and evaluating independent runs at once, one torch thread each: auto (default: "
        "the usable CPUs on a CPU, 1 on a GPU, where runs train as vmapped ensembles) or a number >= 1",
    )
    p.add_argument(
        "--search",
        choices=("adaptive", "grid"),
        default="adaptive",
        help="tune: bisect the nu grid (adaptive, default: about 4 of 9 values per regularizer) or train all of it",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--to", default=None, help="publish: destination folder (default: docs/results/<profile>)")
    return p


def _results_dir(args: argparse.Namespace) -> Path:
    return Path(args.results_dir) if args.results_dir is not None else Path("results") / args.profile


def parse(argv: list[str] | None = None) -> RunConfig | PublishConfig:
    """Parse the command line once into the frozen configuration of its sub-command.

    Exits with a clear message on an unknown profile, group or device.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        profile = get_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    bad = [g for g in args.groups if g not in GROUPS]
    if bad:
        raise SystemExit(f"error: unknown group(s) {bad}; expected some of {sorted(GROUPS)}")
    results_dir = _results_dir(args)
    if args.command == "publish":
        to = Path(args.to) if args.to is not None else Path("docs") / "results" / profile.name
        return PublishConfig(results_dir=results_dir, to=to)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.nu_from is not None:
        try:
            get_profile(args.nu_from)
        except ValueError as exc:
            raise SystemExit(f"error: --nu-from: {exc}") from None
    # the smoke profile without --nu-config tunes its own values into its results folder (run: first)
    own_nu = profile.name == "smoke" and args.nu_config is None and args.nu_from is None
    if args.nu_config is not None:
        nu_config = Path(args.nu_config)
    else:
        nu_config = results_dir / "nu.json" if own_nu else tune.NU_CONFIG
    return RunConfig(
        command=args.command,
        profile=profile,
        device=device,
        data_root=Path(args.data_root) if args.data_root else D.default_data_root(),
        results_dir=results_dir,
        nu_config=nu_config,
        nu_from=args.nu_from,
        tune_first=own_nu and args.command == "run",
        groups=tuple(args.groups),
        detached=profile.detached_variant if args.detached is None else args.detached,
        seed=args.seed,
        force=args.force,
        compile=args.compile,
        max_members=args.max_members,
        dry_run=args.dry_run,
        ablation_samples=args.si_samples,
        robustness_samples=args.samples,
        discover_samples=args.discover_samples,
        threads=args.threads,
        workers=default_workers(device) if args.workers == "auto" else args.workers,
        search=args.search,
        progress=args.progress,
        command_line=" ".join(["python -m benchmarks.paper", *argv]),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the command line once, then dispatch its sub-command."""
    cfg = parse(argv)
    if isinstance(cfg, PublishConfig):
        return pipeline.publish(cfg)
    datasets = pipeline.prepare(cfg)
    if cfg.dry_run:
        return pipeline.dry_run(cfg, datasets)
    store = pipeline.make_store(cfg)
    if cfg.command == "tune":
        tune.tune(cfg, datasets, store)
        return 0
    if cfg.command == "ablate-si":
        return ablation.ablate(cfg, datasets, store)
    if cfg.command == "robustness":
        return robustness.robustness(cfg, datasets, store)
    return pipeline.run(cfg, datasets, store)
