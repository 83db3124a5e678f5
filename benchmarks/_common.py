"""What both benchmarks share: the device choice, crash-safe file writes, machine metadata and logging.

Only the public API of torchinvariance is used here and in every benchmark (``import torchinvariance as ti``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import torchinvariance as ti


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


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that the file is either complete or not changed at all.

    The bytes (text is UTF-8 encoded) go to a temp file in the same folder (``tempfile.mkstemp``), are
    flushed and fsynced, and the temp file is renamed over ``path`` (``os.replace``, atomic on POSIX). On any
    error, ``KeyboardInterrupt`` included, the temp file is removed and ``path`` keeps its old content.
    Parent folders are created; the file gets the ordinary permissions of the umask, not mkstemp's 0600.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), 0o666 & ~umask)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
