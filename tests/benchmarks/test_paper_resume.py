"""Issue 19: a run interrupted at any epoch (Ctrl-C, a kill, the end of a session) resumes from its checkpoint and
ends with exactly what an uninterrupted run gives; the worker pool gives what one process gives."""

import dataclasses
import json

import pytest
import torch

from benchmarks.paper import cli
from benchmarks.paper import data as D
from benchmarks.paper import train as T
from benchmarks.paper.profiles import PROFILES
from benchmarks.paper.train import RunSpec, make_group, train

CPU = torch.device("cpu")
TINY = dataclasses.replace(
    PROFILES["smoke"],
    name="tiny",
    epochs=3,
    sizes=(384, 256, 128),
    batch_size=96,
    eval_si=8,
    eval_jacobian=8,
    drift_n=32,
    tune_si=8,
    nu_grid=(0.1, 10.0),
    tsne_samples=12,
    saliency_samples=1,
)


@pytest.fixture(scope="module")
def rot():
    return D.build("mnist", make_group("rotation"), D.default_data_root(), TINY.sizes)


class Stop(KeyboardInterrupt):
    """What Ctrl-C raises, from a chosen epoch."""


def _stop_at(epoch):
    def hook(done):
        if done == epoch:
            raise Stop

    return hook


CUTS = [("IR-l2", 3.0, 1, 2), ("WT", None, 2, 3), ("DA", None, 1, 1)]


@pytest.mark.parametrize(("kind", "nu", "every", "stop"), CUTS)
def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit(rot, tmp_path, kind, nu, every, stop):
    spec = RunSpec("mnist", "rotation", kind, seed=4, nu=nu)
    ref_state, ref_hist = train(spec, rot, TINY, CPU, progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Stop):
        train(spec, rot, TINY, CPU, progress=False, checkpoint=ckpt, checkpoint_every=every, on_epoch=_stop_at(stop))
    saved = torch.load(ckpt, weights_only=True)
    # the last checkpoint before the interruption (the last epoch is always saved)
    assert saved["epoch"] == (stop if stop == TINY.epochs else stop - stop % every)
    state, hist = train(spec, rot, TINY, CPU, progress=False, checkpoint=ckpt, checkpoint_every=every)
    assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)
    assert {k: v for k, v in hist.items() if k != "seconds"} == {k: v for k, v in ref_hist.items() if k != "seconds"}


def test_a_checkpoint_of_another_run_or_a_broken_file_is_not_resumed(rot, tmp_path):
    spec = RunSpec("mnist", "rotation", "IR-l2", seed=4, nu=3.0)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Stop):
        train(spec, rot, TINY, CPU, progress=False, checkpoint=ckpt, checkpoint_every=1, on_epoch=_stop_at(2))
    other = dataclasses.replace(spec, nu=1.0)  # another nu: starts over, as if there were no checkpoint
    ref_state, _ = train(other, rot, TINY, CPU, progress=False)
    state, _ = train(other, rot, TINY, CPU, progress=False, checkpoint=ckpt)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    ckpt.write_bytes(b"not a checkpoint")
    state, _ = train(other, rot, TINY, CPU, progress=False, checkpoint=ckpt)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        train(other, rot, TINY, CPU, progress=False, checkpoint=ckpt, checkpoint_every=0)


def _strip(obj):
    """results.json without what differs between two identical runs: wall times, dates, the command line."""
    if isinstance(obj, dict):
        drop = {"seconds", "finished_at", "date", "command", "tuned_at", "machine", "commands", "nu_source"}
        return {k: _strip(v) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _args(tmp_path, name, *extra):
    res = ["--results-dir", str(tmp_path / name), "--nu-config", str(tmp_path / f"{name}-nu.json")]
    return ["--profile", "tiny", "--groups", "rotation", *res, "--no-progress", *extra]


def _results(tmp_path, name):
    return (
        _strip(json.loads((tmp_path / name / "results.json").read_text())),
        _strip(json.loads((tmp_path / f"{name}-nu.json").read_text())),
    )


@pytest.mark.slow
def test_tune_and_run_interrupted_twice_give_the_uninterrupted_results(tmp_path, monkeypatch):
    """On a smoke-sized profile: Ctrl-C in the tune's third run and in the run's WT model (both mid-training), each
    followed by the same command again, end with the results.json and nu.json of commands never interrupted."""
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    monkeypatch.setattr(T, "CHECKPOINT_EVERY", 1)
    for command in ("tune", "run"):
        assert cli.main([command, *_args(tmp_path, "plain", "--workers", "1")]) == 0

    real = T.train
    calls, stopped = [], set()

    def interrupted(spec, *a, **kw):
        calls.append(spec.key)
        where = "run" if spec.model == "WT" else "tune" if len(calls) == 3 else None
        if where is not None and where not in stopped:
            stopped.add(where)
            kw["on_epoch"] = _stop_at(2)
        return real(spec, *a, **kw)

    monkeypatch.setattr(T, "train", interrupted)
    for command in ("tune", "run"):
        with pytest.raises(Stop):
            cli.main([command, *_args(tmp_path, "cut", "--workers", "1")])
        assert list((tmp_path / "cut").rglob("checkpoint.pt"))  # the interrupted run's state, at epoch 2
        assert cli.main([command, *_args(tmp_path, "cut", "--workers", "1")]) == 0
    assert stopped == {"tune", "run"}
    assert not list((tmp_path / "cut").rglob("checkpoint.pt"))  # finished runs keep no checkpoint
    assert _results(tmp_path, "cut") == _results(tmp_path, "plain")


@pytest.mark.slow
def test_two_workers_give_what_one_process_gives(tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    for name, workers in (("one", "1"), ("two", "2")):
        for command in ("tune", "run"):
            assert cli.main([command, *_args(tmp_path, name, "--workers", workers)]) == 0
    one, two = _results(tmp_path, "one"), _results(tmp_path, "two")
    assert one == two
