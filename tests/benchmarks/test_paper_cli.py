"""Command-line behaviour of `python -m benchmarks.paper` that needs no training."""

import argparse
import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from benchmarks.paper import cli, store, tune
from benchmarks.paper.config import PublishConfig, RunConfig
from benchmarks.paper.profiles import get_profile


def _exit_message(argv, capsys=None):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    return str(err.value.code)


def test_unknown_profile_and_group(tmp_path):
    assert "unknown profile 'huge'" in _exit_message(["--profile", "huge", "--results-dir", str(tmp_path)])
    assert "smoke" in _exit_message(["--profile", "huge", "--results-dir", str(tmp_path)])
    assert "unknown group(s) ['scale']" in _exit_message(["--groups", "scale", "--results-dir", str(tmp_path)])


def test_bad_device(tmp_path, monkeypatch):
    assert "--device must be auto, cpu or cuda" in _exit_message(["--device", "tpu", "--results-dir", str(tmp_path)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch.cuda.is_available() is False" in _exit_message(["--device", "cuda", "--results-dir", str(tmp_path)])


def test_command_line_is_parsed_once_into_a_frozen_config(tmp_path):
    cfg = cli.parse(["tune", "--profile", "smoke", "--groups", "rotation", "--device", "cpu", "--seed", "3"])
    assert isinstance(cfg, RunConfig) and dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 4
    assert cfg.command == "tune" and cfg.profile is get_profile("smoke") and cfg.device == torch.device("cpu")
    assert cfg.groups == ("rotation",) and cfg.seed == 3 and cfg.threads == cli.default_threads() and cfg.progress
    assert not cfg.compile and not cfg.dry_run and cfg.nu_from is None and not cfg.detached
    assert cfg.results_dir == Path("results/smoke")
    # the smoke profile without --nu-config tunes into its own results folder, and `run` tunes first
    assert cfg.nu_config == Path("results/smoke/nu.json") and not cfg.tune_first
    assert cli.parse(["--profile", "smoke"]).tune_first
    cfg = cli.parse(["run", "--results-dir", str(tmp_path), "--no-progress", "--threads", "2", "--force"])
    assert cfg.profile.name == "paper" and cfg.nu_config == tune.NU_CONFIG and not cfg.tune_first
    assert cfg.workers == cli.default_workers(cfg.device) and cfg.search == "adaptive"
    assert cli.parse(["--workers", "3", "--search", "grid"]).workers == 3
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 1, got 0"):
        cli._workers("0")
    assert cli.parse(["publish"]).to == Path("docs/results/paper")
    assert cfg.results_dir == tmp_path and cfg.force and cfg.threads == 2 and not cfg.progress
    assert cfg.command_line.startswith("python -m benchmarks.paper run --results-dir")
    # the detached normalized-L2 variant: on for the protocol profiles, off for the demo and smoke, overridable
    assert cli.parse(["--profile", "paper"]).detached and cli.parse(["--profile", "full"]).detached
    assert not cli.parse(["--profile", "quick"]).detached and cli.parse(["--profile", "quick", "--detached"]).detached
    assert not cli.parse(["--profile", "paper", "--no-detached"]).detached
    cfg = cli.parse(["--profile", "full", "--nu-from", "paper", "--compile", "--dry-run", "--threads", "auto"])
    assert cfg.nu_from == "paper" and cfg.compile and cfg.dry_run and cfg.threads == cli.default_threads()
    assert "unknown profile 'huge'" in _exit_message(["--nu-from", "huge", "--results-dir", str(tmp_path)])
    assert cli.parse(["ablate-si", "--si-samples", "7"]).ablation_samples == 7
    assert cli.parse(["--nu-config", str(tmp_path / "nu.json"), "--profile", "smoke"]).nu_config == tmp_path / "nu.json"
    pub = cli.parse(["publish", "--results-dir", str(tmp_path), "--to", str(tmp_path / "pub")])
    assert pub == PublishConfig(results_dir=tmp_path, to=tmp_path / "pub")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pub.to = tmp_path


def test_publish_without_results(tmp_path):
    assert "has no results.json" in _exit_message(["publish", "--results-dir", str(tmp_path), "--to", str(tmp_path)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_results_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert "not writable" in _exit_message(["--profile", "smoke", "--results-dir", str(ro / "x")])


def test_unwritable_results_dir_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert "not writable" in _exit_message(["--profile", "smoke", "--results-dir", str(blocker / "sub")])


def test_missing_data_offline(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    msg = _exit_message(["--profile", "smoke", "--results-dir", str(tmp_path / "r"), "--data-root", str(tmp_path)])
    assert "MNIST/raw" in msg and "train-images-idx3-ubyte" in msg


def test_atomic_json_never_truncated(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    store.write_json(path, {"a": 1.0, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.0, "nan": None}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_json(path, {"a": 2.0})
    assert json.loads(path.read_text()) == {"a": 1.0, "nan": None}  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_state_dict_roundtrip_weights_only(tmp_path):
    state = {"w": torch.randn(3, 2)}
    store.save_state(tmp_path / "m.pt", state)
    assert torch.equal(store.load_state(tmp_path / "m.pt")["w"], state["w"])


def test_writability_probe_never_follows_a_planted_symlink(tmp_path):
    """Issue 11 item 13: the probe is a fresh mkstemp file, so a symlink at any fixed name is left alone."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    results = tmp_path / "results"
    results.mkdir()
    for name in (".write-test", ".write-test-x"):
        (results / name).symlink_to(target)
    store.check_writable(results)
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in results.iterdir()) == [".write-test", ".write-test-x"]  # nothing left behind


def test_unusable_runs_folder_fails_before_any_training(tmp_path, monkeypatch):
    """Issue 11 item 14: a runs/ that cannot be written fails in prepare(), before the data is even loaded."""
    from benchmarks.paper import pipeline

    results = tmp_path / "results"
    results.mkdir()
    (results / "runs").write_text("a file where the runs folder should be")
    cfg = cli.parse(["--profile", "smoke", "--results-dir", str(results), "--device", "cpu"])
    loaded = []
    monkeypatch.setattr(pipeline, "build_datasets", lambda cfg: loaded.append(1))
    with pytest.raises(SystemExit, match=r"results directory .*runs is not writable"):
        pipeline.prepare(cfg)
    assert loaded == []


def test_negative_threads_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        cli.parse(["--threads", "-1"])
    assert err.value.code == 2
    assert "expected a number of threads >= 1 (or 0 for torch's choice), got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(["--threads", "many"])
    assert "expected auto or a whole number of threads, got 'many'" in capsys.readouterr().err


def test_default_threads_is_one_on_two_cpus_else_one_per_physical_core(monkeypatch):
    """Issue 10 item 10: torch's 2 threads on the shared 2-core machine were 8x slower under load; auto takes 1."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cli.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert cli.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cli, "physical_cores", lambda cpus: 4)  # 8 logical CPUs on 4 cores (hyper-threads)
    assert cli.default_threads() == 4
    monkeypatch.setattr(cli, "physical_cores", lambda cpus: None)  # unknown topology: one per CPU
    assert cli.default_threads() == 8
    assert cli.physical_cores(set(range(os.cpu_count() or 1))) in (None, *range(1, (os.cpu_count() or 1) + 1))
