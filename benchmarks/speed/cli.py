"""``python -m benchmarks.speed``: the command line, the run of the chosen sections, the written report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import atomic_write, machine_info, pick_device
from benchmarks.speed.report import markdown, target_table, targets
from benchmarks.speed.sections import SECTIONS
from benchmarks.speed.timing import PROFILES
from benchmarks.speed.workloads import Bench

DESCRIPTION = "Speed benchmark of the invariance regularizer, the metrics and the weight-tying baselines (issue 7)."


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=DESCRIPTION)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="short timings for CI (about 2 minutes in total)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test: tiny sizes
    p.add_argument("--out", default="results/speed", help="directory for speed.md and speed.json")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, as torch.utils.benchmark.Timer: on a machine shared with other "
        "jobs, a thread pool wider than the idle cores times the scheduler, not the code)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    return p


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the sections, write ``speed.md`` and ``speed.json``; return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = build_parser()
    args = p.parse_args(argv)
    profile = "tiny" if args.tiny else "quick" if args.quick else "default"
    cfg = PROFILES[profile]
    if args.no_compile:
        cfg = dataclasses.replace(cfg, compile=False)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; expected a subset of {list(SECTIONS)}")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    bench = Bench(cfg, device, args.threads)
    print(f"device {device}, {args.threads} threads, profile {profile}", flush=True)
    load_start = _load()
    with _threads(args.threads):
        for name in sections:
            SECTIONS[name](bench)
        machine = machine_info(device)  # inside: its thread count is the one the sections ran with
    report = {
        "meta": {
            "command": " ".join(["python -m benchmarks.speed", *argv]),
            **machine,
            "profile": profile,
            "load_start": load_start,  # other jobs on a shared machine: the load average before and after
            "load_end": _load(),
            "config": dataclasses.asdict(cfg),
        },
        "results": bench.results,
        "targets": targets(bench.results, device),
        "notes": bench.notes,
    }
    out = Path(args.out)
    atomic_write(out / "speed.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "speed.md", markdown(report))
    print("\n" + "\n".join(target_table(report["targets"], ["target", "value", "min", "max", "op", "limit", "status"])))
    print(f"\nwrote {out / 'speed.md'} and {out / 'speed.json'}")
    return report


def main() -> None:
    """Entry point of ``python -m benchmarks.speed``."""
    run()
