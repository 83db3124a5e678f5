"""Command-line behaviour of `python -m benchmarks.paper` that needs no training."""

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
    assert cfg.groups == ("rotation",) and cfg.seed == 3 and cfg.threads == 0 and cfg.progress
    assert cfg.results_dir == Path("results/smoke")
    # the smoke profile without --nu-config tunes into its own results folder, and `run` tunes first
    assert cfg.nu_config == Path("results/smoke/nu.json") and not cfg.tune_first
    assert cli.parse(["--profile", "smoke"]).tune_first
    cfg = cli.parse(["run", "--results-dir", str(tmp_path), "--no-progress", "--threads", "2", "--force"])
    assert cfg.profile.name == "quick" and cfg.nu_config == tune.NU_CONFIG and not cfg.tune_first
    assert cfg.results_dir == tmp_path and cfg.force and cfg.threads == 2 and not cfg.progress
    assert cfg.command_line.startswith("python -m benchmarks.paper run --results-dir")
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


def test_committed_nu_config_is_valid():
    path = tune.NU_CONFIG
    cfg = json.loads(Path(path).read_text())
    assert cfg["format_version"] == tune.NU_FORMAT
    values, _source = tune.load_nu(path, get_profile("quick"))
    for g in ("rotation", "translation"):
        for d in ("l2", "kl", "normalized_l2"):
            assert values[g][d] > 0
    entry = cfg["profiles"]["quick"]
    for g in ("rotation", "translation"):
        for d in ("l2", "kl", "normalized_l2"):
            rows = entry["evidence"][g][d]
            chosen = values[g][d]
            assert any(r["nu"] == chosen for r in rows)
            ordered = sorted(r["nu"] for r in rows)
            assert ordered == sorted(entry["grid"])[: len(rows)]  # an ascending scan from the smallest nu
            if entry["criterion_met"][g][d]:
                # the chosen nu reached the target, every smaller grid value was trained and missed it
                assert chosen == ordered[-1]
                assert next(r for r in rows if r["nu"] == chosen)["val_si"] >= tune.SI_TARGET
                assert all(r["val_si"] < tune.SI_TARGET for r in rows if r["nu"] < chosen)
            else:
                assert len(rows) == len(entry["grid"])
                assert chosen == max(rows, key=lambda r: r["val_si"])["nu"]


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
