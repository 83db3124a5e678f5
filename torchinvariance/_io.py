"""Crash-safe file writes, shared by the audit and the repository's benchmarks.

Private: not part of the public API (the benchmarks import it as the one exception to their public-API-only rule,
so that the recipe lives in one place).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` whole or not at all, never through a symlink planted at ``path``.

    The bytes (text is UTF-8 encoded) go to a fresh ``tempfile.mkstemp`` file in the same folder, are flushed and
    fsynced, and the temp file is renamed over ``path`` (``os.replace``: atomic on POSIX, and it replaces a symlink
    itself instead of writing to its target). On any error, ``KeyboardInterrupt`` included, the temp file is
    removed and ``path`` keeps its old content. Parent folders are created; the file gets the ordinary permissions
    of the umask, not mkstemp's 0600.
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
