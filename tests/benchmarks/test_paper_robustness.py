"""``python -m benchmarks.paper robustness`` on a tiny profile: the worst case, the smallest flips and the LieGG
spectrum of seed 0's DA, IR and WT models, written to robustness.json/.md and two figures, and published.

The run folders hold the networks at their seeded initialization (saved as a trained run would be), so nothing
trains here: the weight-tied WT is exactly invariant whatever its weights, which is what the numbers are checked on.
"""

import dataclasses
import json

import pytest
import torch

import torchinvariance as ti
from benchmarks.paper import cli, robustness, runs
from benchmarks.paper.profiles import PROFILES
from benchmarks.paper.store import read_json, write_json
from benchmarks.paper.train import RunSpec, make_group, make_model

TINY = dataclasses.replace(PROFILES["smoke"], name="tiny", epochs=1, sizes=(256, 256, 64))
MODELS = {"DA": None, "IR-l2": 0.1, "IR-kl": 0.1, "WT": None}


@pytest.fixture
def tiny_runs(tmp_path, monkeypatch):
    """A results folder with seed 0's (untrained) DA, IR (L2, KL) and WT runs of the rotation group."""
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    res = tmp_path / "res"
    store = runs.RunStore(res, torch.device("cpu"))
    group = make_group("rotation")
    for i, (kind, nu) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        spec = RunSpec("mnist", "rotation", kind, 0, nu)
        store.save(store.run_dir(spec), spec, TINY, make_model(kind, group).state_dict(), {"epochs": 1})
    return res


def _args(res, *extra):
    base = ["robustness", "--profile", "tiny", "--groups", "rotation", "--results-dir", str(res), "--no-progress"]
    return [*base, "--samples", "48", "--discover-samples", "12", "--workers", "1", *extra]


def _exit_message(argv):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    return str(err.value.code)


def test_parsed_into_the_config():
    cfg = cli.parse(["robustness", "--samples", "7", "--discover-samples", "3"])
    assert cfg.command == "robustness" and cfg.robustness_samples == 7 and cfg.discover_samples == 3
    cfg = cli.parse(["robustness"])
    assert cfg.robustness_samples == 2000 and cfg.discover_samples == 500


def test_measures_writes_and_publishes(tiny_runs, tmp_path, capsys):
    assert cli.main(_args(tiny_runs)) == 0
    out = read_json(tiny_runs / "robustness.json")
    assert out["samples"] == {"worst_case_and_flip": 48, "discover": 12} and out["seed"] == 0
    res = out["results"]["rotation"]
    assert list(res) == ["untrained", "DA", "IR-l2", "IR-kl", "WT"]  # present runs only, untrained reference first
    for kind, entry in res.items():
        assert 0 <= entry["worst_case_accuracy"] <= entry["accuracy"] <= 1, kind
        assert sum(entry["smallest_flip"]["share"].values()) == pytest.approx(1.0), kind
        sym = entry["symmetry"]
        assert sym["samples"] == 12 and len(sym["singular_values"]) == 6 and sym["relative"][-1] == 1.0
        assert sym["singular_values"] == sorted(sym["singular_values"])
    # WT is exactly invariant by construction: nothing is lost to the worst element and nothing ever flips
    wt = res["WT"]
    assert wt["worst_case_accuracy"] == wt["accuracy"] and wt["smallest_flip"]["share"]["never"] == 1.0
    assert wt["smallest_flip"]["labels"] == {"1": "rot90 or rot270", "2": "rot180", "never": "never"}
    assert wt["trained_with"]["code"] == runs.train_settings(RunSpec("mnist", "rotation", "WT", 0), TINY)["code"]
    assert wt["table1"] is None  # no metrics.json: the run was never evaluated
    assert list(wt["element_accuracy"]) == ["rot0", "rot90", "rot180", "rot270"]

    # the numbers are the library's, on the first test samples the pipeline builds
    from benchmarks.paper import data as D

    data = D.build("mnist", make_group("rotation"), D.default_data_root(), TINY.sizes)
    store = runs.RunStore(tiny_runs, torch.device("cpu"))
    spec = RunSpec("mnist", "rotation", "DA", 0)
    da = runs.load_trained(store.run_dir(spec), spec, data.group, torch.device("cpu"))
    x, y = data.test.x[:48], data.test.y[:48]
    wc = ti.worst_case(da, data.group, x, y)
    assert res["DA"]["accuracy"] == wc.accuracy and res["DA"]["worst_case_accuracy"] == wc.worst_case_accuracy
    spectrum = ti.discover_symmetries(da, data.test.x[:12])
    assert res["DA"]["symmetry"]["singular_values"] == pytest.approx(spectrum.singular_values.tolist())

    table = (tiny_runs / "robustness.md").read_text()
    assert table.startswith("**tiny profile: smoke test")
    assert "| | DA | IR (L2) | IR (KL) | WT | MLP (untrained) |" in table
    assert (
        "| SI (named group) | – |" in table
        and "| worst-of-4 accuracy (%) |" in table
        and "| never flips (%) |" in table
    )
    for name in ("robustness_spectrum.png", "robustness_flips.png"):
        assert (tiny_runs / name).stat().st_size > 0
    assert "## Beyond the named group" in capsys.readouterr().out

    # publish copies the four files beside the others, if present
    write_json(tiny_runs / "results.json", {})
    pub = tmp_path / "pub"
    assert cli.main(["publish", "--results-dir", str(tiny_runs), "--to", str(pub)]) == 0
    assert set(robustness.FILES) <= {p.name for p in pub.iterdir()}


def test_refuses_missing_and_mismatched_runs_accepts_older_code(tiny_runs):
    folder = tiny_runs / "runs" / "mnist_rotation_IR-l2_s0"
    train = folder / runs.TRAIN_FILE
    rec = json.loads(train.read_text())
    # trained by another code version: measured, and the version is recorded
    write_json(train, {**rec, "settings": {**rec["settings"], "code": "0123456789abcdef"}})
    assert cli.main(_args(tiny_runs, "--samples", "8", "--discover-samples", "4")) == 0
    entry = read_json(tiny_runs / "robustness.json")["results"]["rotation"]["IR-l2"]
    assert entry["trained_with"]["code"] == "0123456789abcdef"
    assert "another code version than this one's (0123456789abcdef)" in (tiny_runs / "robustness.md").read_text()
    # trained under other settings: refused, naming the folder and the setting
    write_json(train, {**rec, "settings": {**rec["settings"], "epochs": 300}})
    msg = _exit_message(_args(tiny_runs))
    assert "mnist_rotation_IR-l2_s0: epochs: 300 -> 1" in msg
    # a required run missing: refused, saying what to run
    train.unlink()
    msg = _exit_message(_args(tiny_runs))
    assert "mnist_rotation_IR-l2_s0" in msg and "run the benchmark first: python -m benchmarks.paper run" in msg
