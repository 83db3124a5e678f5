"""Crash-safe result storage: every file goes through :func:`benchmarks._common.atomic_write`."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import atomic_write, git_commit


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tensors become lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically."""
    text = json.dumps(_clean(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, text)


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, text)


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file atomically."""
    atomic_write(dst, Path(src).read_bytes())


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a plain ``state_dict`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain ``state_dict`` with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_writable(directory: Path) -> None:
    """Raise a clear error if results cannot be written under ``directory``.

    Probes with a fresh ``tempfile.mkstemp`` file (never a fixed name, so a planted symlink is never followed)
    and removes it.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SystemExit(f"error: results directory {directory} is not writable: {exc}") from None


# The sources whose change can change what a run trains or measures: the library and the benchmark's data,
# models, training and evaluation. Tables, figures and the command line are not among them.
_BENCHMARK_SOURCES = ("data.py", "train.py", "ensemble.py", "labels.py")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The version of the code that trains and evaluates a run.

    ``hash`` (compared when a run folder is reused) is a SHA-256 over the Python sources of the installed
    ``torchinvariance`` package and of ``benchmarks/paper/{data,train,ensemble,labels}.py``, so any change to the
    code that produced a run, committed or not, makes the run stale; ``git_commit``, ``torchinvariance`` (the
    package version) and ``torch`` are recorded beside it (``torch`` is compared too: kernels change numbers).
    """
    import torchinvariance as ti

    digest = hashlib.sha256()
    package = Path(ti.__file__).resolve().parent
    here = Path(__file__).resolve().parent
    files = [(f"torchinvariance/{p.relative_to(package)}", p) for p in sorted(package.rglob("*.py"))]
    files += [(f"benchmarks/paper/{name}", here / name) for name in _BENCHMARK_SOURCES]
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "hash": digest.hexdigest()[:16],
        "git_commit": git_commit(),
        "torchinvariance": ti.__version__,
        "torch": torch.__version__,
    }


def differences(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields whose recorded value differs from the wanted one: ``{field: (recorded, wanted)}``.

    ``recorded=None`` (a folder from before settings were recorded) differs in every field. Values are compared
    as JSON would store them (tuples equal lists).
    """
    if recorded is None:
        return {k: (None, v) for k, v in wanted.items()}
    clean = _clean(wanted)
    return {k: (recorded.get(k), wanted[k]) for k in wanted if recorded.get(k) != clean[k]}
