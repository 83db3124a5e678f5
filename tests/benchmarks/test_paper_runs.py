"""Run folders: what makes one reusable, what makes the command refuse (no training here; see test_paper_pipeline)."""

import dataclasses

import pytest
import torch

from benchmarks.paper import runs
from benchmarks.paper.profiles import PROFILES
from benchmarks.paper.store import write_json
from benchmarks.paper.train import RunSpec

SPEC = RunSpec("mnist", "rotation", "IR-l2", 0, 3.0)
PROFILE = PROFILES["smoke"]


def _store(tmp_path, **kw):
    return runs.RunStore(tmp_path, torch.device("cpu"), **kw)


def _trained(store, spec=SPEC, profile=PROFILE, **changes):
    folder = store.run_dir(spec)
    folder.mkdir(parents=True)
    torch.save({}, folder / runs.MODEL_FILE)
    write_json(folder / runs.TRAIN_FILE, {"settings": {**runs.train_settings(spec, profile), **changes}})
    return folder


def test_settings_name_everything_a_run_depends_on():
    s = runs.train_settings(SPEC, PROFILE)
    assert s["nu"] == 3.0 and s["seed"] == 0 and s["profile"] == "smoke" and s["epochs"] == PROFILE.epochs
    assert s["sizes"] == list(PROFILE.sizes) and s["lr"] == PROFILE.lr and s["batch_size"] == PROFILE.batch_size
    assert len(s["code"]) == 16 and s["torch"] == torch.__version__


def test_matching_folders_are_reused_others_refused(tmp_path):
    store = _store(tmp_path)
    assert store.status(store.run_dir(SPEC), SPEC, PROFILE) == "absent"
    folder = _trained(store)
    assert store.status(folder, SPEC, PROFILE) == "ok"
    other = dataclasses.replace(PROFILE, epochs=PROFILE.epochs + 1, batch_size=128)
    bad = store.status(folder, SPEC, other)
    assert isinstance(bad, runs.Mismatch) and set(bad.diffs) == {"epochs", "batch_size"}
    assert "epochs: 2 -> 3" in str(bad) and "batch_size: 256 -> 128" in str(bad)
    bad_nu = store.status(folder, dataclasses.replace(SPEC, nu=30.0), PROFILE)
    assert isinstance(bad_nu, runs.Mismatch) and set(bad_nu.diffs) == {"nu"}
    with pytest.raises(SystemExit) as err:
        store.refuse([bad, bad_nu], "run")
    assert "2 run folder(s)" in str(err.value) and "--force" in str(err.value) and "nu: 3.0 -> 30.0" in str(err.value)
    store.refuse([], "run")  # nothing to refuse
    # --force: everything is retrained, except what this very command trained
    forced = _store(tmp_path, force=True)
    assert forced.status(folder, SPEC, PROFILE) == "absent"
    forced.fresh.add(folder)
    assert forced.status(folder, SPEC, PROFILE) == "ok"


def test_legacy_results_are_refused_and_crash_debris_retrained(tmp_path):
    store = _store(tmp_path)
    legacy = store.run_dir(SPEC)
    legacy.mkdir(parents=True)
    write_json(legacy / runs.METRICS_FILE, {"spec": {}})  # an evaluation from before settings were recorded
    st = store.status(legacy, SPEC, PROFILE)
    assert isinstance(st, runs.Mismatch) and "records no training settings" in str(st)
    debris = store.run_dir(dataclasses.replace(SPEC, seed=1))
    debris.mkdir(parents=True)
    torch.save({}, debris / runs.MODEL_FILE)  # the checkpoint of a run killed before its train.json
    assert store.status(debris, dataclasses.replace(SPEC, seed=1), PROFILE) == "absent"


def test_a_matching_tune_point_becomes_the_run(tmp_path):
    store = _store(tmp_path)
    point = store.point_dir(SPEC)
    point.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, point / runs.MODEL_FILE)
    write_json(point / runs.TRAIN_FILE, {"settings": runs.train_settings(SPEC, PROFILE), "history": {}})
    todo, bad = store.plan([(SPEC, store.run_dir(SPEC))], PROFILE, reuse=store.point_dir)
    assert todo == [] and bad == [] and store.record(store.run_dir(SPEC))["settings"]["nu"] == 3.0
    other = dataclasses.replace(SPEC, seed=1)  # no point for this seed: trained
    todo, _ = store.plan([(other, store.run_dir(other))], PROFILE, reuse=store.point_dir)
    assert todo == [(other, store.run_dir(other))]
    # the run folder now holds nu = 3: asked for another nu in the same command, it is not taken as done
    retuned = dataclasses.replace(SPEC, nu=10.0)
    _, bad = store.plan([(retuned, store.run_dir(retuned))], PROFILE, reuse=store.point_dir)
    assert len(bad) == 1 and set(bad[0].diffs) == {"nu"}


def test_ensembles_group_by_kind_and_respect_max_members():
    specs = [RunSpec("mnist", "rotation", "IR-l2", s, 1.0) for s in range(5)] + [RunSpec("mnist", "rotation", "DA", 0)]
    todo = [(s, None) for s in specs]
    assert [len(m) for _, m in runs.ensembles(todo)] == [5, 1]
    assert [len(m) for _, m in runs.ensembles(todo, max_members=2)] == [2, 2, 1, 1]
    assert [k[2] for k, _ in runs.ensembles(todo, 2)] == ["IR-l2", "IR-l2", "IR-l2", "DA"]
