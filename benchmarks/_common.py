"""What both benchmarks share: the device choice, crash-safe file writes, machine metadata and logging.

Only the public API of torchinvariance is used here and in every benchmark (``import torchinvariance as ti``), with
one exception: the crash-safe write, :func:`atomic_write`, is the private ``_io`` module of the library
(the audit writes its reports with it), so that the recipe lives in one place.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import torchinvariance as ti
from torchinvariance._io import atomic_write as atomic_write  # re-exported: the benchmarks write through it


def pick_device(name: str) -> torch.device:
    """The device called ``name``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: ``name`` is none of these, or it asks for a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but torch.cuda.is_available() is False on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ValueError(f"--device must be auto, cpu or cuda (or cuda:N); got {name!r}")


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit the benchmark code is checked out at, or ``None`` outside a git work tree."""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and with what a benchmark ran: date (UTC), device, CPU, torch threads, versions, git commit."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torchinvariance": ti.__version__,
        "git_commit": git_commit(),
    }


def log(msg: str) -> None:
    """A timestamped log line on stderr (keeps stdout for the tables)."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)
