"""Crash-safe result storage: every file is written to a temp file and renamed into place."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; results are ordinary files
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically."""
    text = json.dumps(_clean(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    _atomic(path, lambda fh: fh.write(text.encode()))


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    _atomic(path, lambda fh: fh.write(text.encode()))


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file atomically."""
    data = Path(src).read_bytes()
    _atomic(dst, lambda fh: fh.write(data))


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a plain ``state_dict`` atomically."""
    _atomic(path, lambda fh: torch.save(state, fh))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain ``state_dict`` with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_writable(directory: Path) -> None:
    """Raise a clear error if results cannot be written under ``directory``."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"error: results directory {directory} is not writable: {exc}") from None
