"""``python -m benchmarks.paper``: reproduce Table 1 and Figures 2-5 of the paper.

Sub-commands:

- ``run`` (default): train every (dataset, group, model, seed) run that is not finished yet, evaluate it,
  and write Table 1, the figures, ``results.json`` and the PASS/FAIL checks of the paper's claims;
- ``tune``: sweep the regularizer weight nu and write the smallest nu on the grid whose model reaches
  SI >= 0.95 on the validation split, with the evidence, to the nu config file that ``run`` reads;
- ``publish``: copy a finished run's tables, figures and ``results.json`` (no checkpoints) to ``--to``.

This module only reads the command line: it is parsed once into a frozen configuration
(:class:`~benchmarks.paper.config.RunConfig` or :class:`~benchmarks.paper.config.PublishConfig`), which
:mod:`benchmarks.paper.pipeline` and :mod:`benchmarks.paper.tune` receive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._common import pick_device
from benchmarks.paper import data as D
from benchmarks.paper import pipeline, tune
from benchmarks.paper.config import PublishConfig, RunConfig
from benchmarks.paper.profiles import PROFILES, get_profile
from benchmarks.paper.train import GROUPS


def _non_negative_int(text: str) -> int:
    """argparse type: an int >= 0, else a usage error that says what was expected (no traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 1 (or 0 for torch's choice), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=("run", "tune", "publish"), help="default: run")
    p.add_argument("--profile", default="quick", help=f"one of {sorted(PROFILES)} (default: quick)")
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
        help="tuned nu values (default: benchmarks/paper/nu.json)",
    )
    p.add_argument("--groups", nargs="+", default=list(GROUPS), help="subset of: rotation translation")
    p.add_argument("--seed", type=int, default=0, help="global seed (runs use their own seeds from the profile)")
    p.add_argument("--force", action="store_true", help="recompute finished runs")
    p.add_argument(
        "--threads", type=_non_negative_int, default=0, help="torch CPU threads, >= 1 (default 0: torch's choice)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--to", default="docs/results/quick", help="publish: destination folder")
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
        return PublishConfig(results_dir=results_dir, to=Path(args.to))
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    # the smoke profile without --nu-config tunes its own values into its results folder (run: first)
    own_nu = profile.name == "smoke" and args.nu_config is None
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
        tune_first=own_nu and args.command == "run",
        groups=tuple(args.groups),
        seed=args.seed,
        force=args.force,
        threads=args.threads,
        progress=args.progress,
        command_line=" ".join(["python -m benchmarks.paper", *argv]),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the command line once, then dispatch its sub-command."""
    cfg = parse(argv)
    if isinstance(cfg, PublishConfig):
        return pipeline.publish(cfg)
    datasets = pipeline.prepare(cfg)
    if cfg.command == "tune":
        tune.tune(cfg, datasets)
        return 0
    return pipeline.run(cfg, datasets)
