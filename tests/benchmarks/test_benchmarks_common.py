"""What both benchmarks share (benchmarks/_common.py), the paper benchmark's labels, and the rule that the
benchmarks use only the public API of torchinvariance."""

import ast
import os
import stat
from pathlib import Path

import pytest
import torch

import torchinvariance as ti
from benchmarks import _common
from benchmarks._common import atomic_write, machine_info, pick_device
from benchmarks.paper import labels, train
from benchmarks.paper.profiles import PROFILES
from benchmarks.paper.store import copy_file, save_state, write_text

BENCHMARKS = Path(_common.__file__).parent


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "a.txt"  # parent folders are created
    atomic_write(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    payload = os.urandom(3 << 20)  # several MiB: written completely, not a prefix
    atomic_write(path, payload)
    assert path.read_bytes() == payload
    assert _names(path.parent) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
@pytest.mark.parametrize("existed", [True, False])
def test_atomic_write_leaves_the_old_file_or_none(tmp_path, monkeypatch, fail_at, existed):
    path = tmp_path / "r.json"
    if existed:
        atomic_write(path, b"old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # even an interrupt (BaseException) cleans up

    real_fdopen = os.fdopen

    class HalfWritten:  # the first byte reaches the temp file, then the write is interrupted
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def fileno(self):
            return self.fh.fileno()

        def write(self, data):
            self.fh.write(data[:1])
            self.fh.flush()
            raise KeyboardInterrupt

    if fail_at == "write":
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWritten(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, fail_at, boom)
    data = b"new content"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, data)
    monkeypatch.undo()
    if existed:
        assert path.read_bytes() == b"old"  # complete old content, never a mix
    else:
        assert not path.exists()
    assert _names(tmp_path) == (["r.json"] if existed else [])  # no temp file left behind


def test_every_benchmark_writer_goes_through_atomic_write(tmp_path, monkeypatch):
    calls = []
    real = _common.atomic_write

    def spy(path, data):
        calls.append(Path(path).name)
        real(path, data)

    import benchmarks.paper.figures as figures
    import benchmarks.paper.store as store
    import benchmarks.speed.cli as speed_cli

    monkeypatch.setattr(store, "atomic_write", spy)
    monkeypatch.setattr(figures, "atomic_write", spy)
    write_text(tmp_path / "t.md", "x")
    copy_file(tmp_path / "t.md", tmp_path / "c.md")
    save_state(tmp_path / "m.pt", {"w": torch.ones(2)})
    figures.figure5(
        {"rotation": {"DA": {"sigma_max": {"mean": 2.0, "std": 0.1}}}},
        tmp_path / "f.png",
    )
    assert calls == ["t.md", "c.md", "m.pt", "f.png"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert speed_cli.atomic_write is real
    assert not list(tmp_path.glob(".*.tmp"))


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "", "CPU"):
        with pytest.raises(ValueError, match="must be auto, cpu or cuda"):
            pick_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"--device cuda.*is_available\(\) is False"):
            pick_device(name)


def test_machine_info():
    info = machine_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["gpu"] is None
    assert info["torch"] == torch.__version__ and info["torchinvariance"] == ti.__version__
    assert info["threads"] == torch.get_num_threads() and info["cpu"] and info["python"].count(".") == 2
    assert info["git_commit"] is None or len(info["git_commit"]) == 40


def test_labels_come_from_one_place_and_the_library():
    assert labels.DIVERGENCES == tuple(ti.losses.DIVERGENCES)
    assert set(labels.IR_MODELS.values()) == set(labels.DIVERGENCES)
    assert set(labels.GROUP_LABELS) == set(train.GROUPS)
    assert set(labels.MODEL_LABELS) == set(labels.MODELS)
    assert set(labels.TABLE_MODELS) <= set(labels.MODELS)
    for name in ("figures", "report", "train", "tune", "pipeline"):
        tree = ast.parse((BENCHMARKS / "paper" / f"{name}.py").read_text())
        defined = {
            t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets if hasattr(t, "id")
        }
        assert not defined & {"GROUP_LABELS", "DIVERGENCES", "IR_MODELS", "MODEL_LABELS", "TABLE_MODELS"}, name
    # every run the profiles plan has a label
    from benchmarks.paper.pipeline import plan

    nu = {g: dict.fromkeys(labels.DIVERGENCES, 1.0) for g in train.GROUPS}
    for spec in plan(PROFILES["smoke"], tuple(train.GROUPS), nu, escnn=True):
        assert spec.model in labels.MODEL_LABELS and spec.group in labels.GROUP_LABELS


def _private_uses(source: str) -> list[str]:
    """Imports of private torchinvariance modules/names and ``ti._x`` attribute uses in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchinvariance"):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [
                f"from {node.module} import {a.name}" for a in node.names if any(p.startswith("_") for p in parts)
            ]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("torchinvariance") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("ti", "torchinvariance"):
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_benchmarks_use_only_the_public_api():
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(BENCHMARKS)): _private_uses(f.read_text()) for f in files}
    # the one exception, in one file: the crash-safe write shared with the audit (a file utility, not a metric)
    shared = "from torchinvariance._io import atomic_write"
    assert bad.pop("_common.py") == [shared]
    assert {k: v for k, v in bad.items() if v} == {}
    # the checker itself can fail
    assert _private_uses("from torchinvariance.metrics._functional import x") != []
    assert _private_uses("from torchinvariance import _hooks") != []
    assert _private_uses("import torchinvariance as ti\nti._BROADCAST") == ["ti._BROADCAST"]
    assert _private_uses("from torchinvariance.losses import DIVERGENCES") == []
