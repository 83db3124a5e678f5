"""The nu sweep's rule (a pure function, on synthetic sweeps), the nu.json file and the profiles' own nu values."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.paper import tune
from benchmarks.paper.profiles import PROFILES, get_profile
from benchmarks.paper.store import write_json
from benchmarks.paper.tune import choose_nu


def _pts(*rows):
    return [{"nu": nu, "val_si": si, "val_acc": acc} for nu, si, acc in rows]


def test_smallest_nu_reaching_the_target_among_those_above_the_guard():
    pts = _pts((0.1, 0.70, 91.0), (1.0, 0.90, 88.0), (10.0, 0.96, 85.0), (100.0, 0.99, 80.0))
    out = choose_nu(pts, da_val_acc=92.0)
    assert out["nu"] == 10.0 and out["criterion_met"] and out["guard"] == pytest.approx(82.0)
    # the order of the points does not matter
    assert choose_nu(list(reversed(pts)), 92.0)["nu"] == 10.0


def test_a_collapsed_model_is_never_chosen():
    """Issue 10: quick's old rule chose nu=1000 for T^2_3 at 36.45% val acc, the first to reach SI >= 0.95."""
    pts = _pts((0.1, 0.50, 95.0), (10.0, 0.80, 90.0), (1000.0, 0.97, 36.45))
    out = choose_nu(pts, da_val_acc=95.6)
    assert out["nu"] == 10.0 and not out["criterion_met"]  # the best SI above the guard, flagged
    assert "highest val SI" in out["reason"]


def test_the_guard_is_inclusive_and_ten_points():
    pts = _pts((1.0, 0.96, 82.0), (3.0, 0.97, 81.99))
    assert choose_nu(pts, 92.0)["nu"] == 1.0  # exactly DA - 10 passes
    assert choose_nu(_pts((3.0, 0.97, 81.99)), 92.0)["nu"] is None  # just below: collapsed
    assert choose_nu(pts, 92.0, guard_points=5.0)["nu"] is None


def test_none_above_the_guard_chooses_nothing():
    out = choose_nu(_pts((0.1, 0.99, 10.0), (1.0, 0.99, 11.0)), da_val_acc=95.0)
    assert out["nu"] is None and not out["criterion_met"] and "collapsed" in out["reason"]


def test_fallback_ties_go_to_the_smaller_nu_and_nan_si_is_never_chosen():
    pts = _pts((3.0, 0.9, 90.0), (1.0, 0.9, 90.0), (10.0, float("nan"), 90.0))
    assert choose_nu(pts, 92.0)["nu"] == 1.0
    assert choose_nu(_pts((1.0, float("nan"), 90.0)), 92.0)["nu"] is None


def test_rule_inputs_are_checked():
    with pytest.raises(ValueError, match="needs nu, val_si and val_acc"):
        choose_nu([{"nu": 1.0, "val_si": 0.9}], 90.0)
    with pytest.raises(ValueError, match="finite"):
        choose_nu(_pts((1.0, 0.9, 90.0)), float("nan"))


def test_profiles_follow_the_protocol_and_tune_at_their_own_length():
    paper, full = get_profile("paper"), get_profile("full")
    for p in (paper, full):
        assert p.epochs == 300 and p.sizes == (10_000, 50_000, 2_000) and p.batch_size == 512 and p.lr == 8e-4
        assert p.eval_si == 2000 and not p.demo and p.detached_variant
    assert paper.seeds == (0,) and full.seeds == (0, 1, 2, 3)
    assert PROFILES["quick"].demo and PROFILES["smoke"].demo and not PROFILES["quick"].detached_variant
    assert not any(hasattr(p, "tune_epochs") for p in PROFILES.values())  # the sweep trains `epochs` epochs


def _nu_file(tmp_path, sections):
    path = tmp_path / "nu.json"
    write_json(path, {"format_version": tune.NU_FORMAT, "profiles": sections})
    return path


def _section(epochs, values, rule="guarded"):
    return {"epochs": epochs, "values": values, "rule": {"name": rule}}


def test_a_profile_never_silently_uses_another_profiles_nu(tmp_path):
    values = {"rotation": {"l2": 1.0, "kl": 2.0, "normalized_l2": 3.0}}
    path = _nu_file(tmp_path, {"quick": _section(40, values)})
    with pytest.raises(SystemExit) as err:
        tune.load_nu(path, get_profile("paper"))
    msg = str(err.value)
    assert "no nu values tuned for the 'paper' profile" in msg
    assert "python -m benchmarks.paper tune --profile paper" in msg and "--nu-from" in msg and "quick" in msg
    got, source = tune.load_nu(path, get_profile("paper"), nu_from="quick")  # explicitly: allowed, and said
    assert got == values and "[quick]" in source and "--nu-from quick" in source and "tuned at 40 epochs" in source
    assert tune.load_nu(path, get_profile("quick"))[0] == values
    # the variant needs its own tuned value
    with pytest.raises(SystemExit, match="no nu for rotation/normalized_l2_detached"):
        tune.load_nu(path, get_profile("quick"), needed=tune.regularizers(True))
    with pytest.raises(SystemExit, match="tune --profile smoke"):
        tune.load_nu(tmp_path / "missing.json", get_profile("smoke"))


def test_format_1_files_are_migrated_without_inventing_anything(tmp_path):
    old = {"format_version": 1, "profiles": {"quick": {"criterion": "old text", "values": {"a": 1}, "evidence": {}}}}
    new = tune.migrate(old)
    q = new["profiles"]["quick"]
    assert new["format_version"] == tune.NU_FORMAT and q["values"] == {"a": 1} and q["evidence"] == {}
    assert q["rule"]["name"] == "ascending-v1" and q["rule"]["text"] == "old text" and q["rule"]["guard_points"] is None
    assert q["da_reference"] is None and q["migrated_from_format"] == 1
    assert set(new["profiles"]) == {"quick"}  # no paper/full values appear
    path = tmp_path / "nu.json"
    path.write_text(json.dumps({"format_version": 7}))
    with pytest.raises(SystemExit, match="unknown nu config format_version 7"):
        tune.read_nu_config(path)


def test_committed_nu_config_is_valid():
    cfg = json.loads(Path(tune.NU_CONFIG).read_text())
    assert cfg["format_version"] == tune.NU_FORMAT
    values, _source = tune.load_nu(tune.NU_CONFIG, get_profile("quick"))
    for name, entry in cfg["profiles"].items():
        assert name in PROFILES
        rule = entry["rule"]["name"]
        for g, per in entry["values"].items():
            for r, chosen in per.items():
                rows = entry["evidence"][g][r]
                assert all(row["epochs"] == entry["epochs"] for row in rows)  # tuned at the profile's own length
                if rule == "guarded":
                    # the recorded choice is what the rule gives on the recorded evidence
                    out = choose_nu(rows, entry["da_reference"][g]["val_acc"])
                    assert out["nu"] == chosen and out["criterion_met"] == entry["criterion_met"][g][r]
                    assert all("best_epoch" in row for row in rows)
                    floor = entry["da_reference"][g]["val_acc"] - tune.GUARD_POINTS
                    if chosen is not None:  # never a collapsed model
                        assert next(x for x in rows if x["nu"] == chosen)["val_acc"] >= floor
                    # the trained points are exactly those the search asks for, replayed on them
                    by_nu, asked = {row["nu"]: row for row in rows}, []
                    while True:
                        nxt, _ = tune.search_next(entry["grid"], [by_nu[v] for v in asked], floor)
                        if not nxt:
                            break
                        assert set(nxt) <= set(by_nu), (g, r, nxt)
                        asked += nxt
                    assert sorted(asked) == sorted(by_nu), (g, r)
                else:  # the migrated quick values: the old ascending scan, kept as they were chosen
                    assert rule == "ascending-v1" and entry["migrated_from_format"] == 1
                    ordered = sorted(row["nu"] for row in rows)
                    assert ordered == sorted(entry["grid"])[: len(rows)] and chosen in ordered
                    if entry["criterion_met"][g][r]:
                        assert chosen == ordered[-1]
                        assert next(x for x in rows if x["nu"] == chosen)["val_si"] >= tune.SI_TARGET
    assert values["rotation"]["l2"] > 0


# ---------------------------------------------------------------------------------------------- adaptive search

QUICK_EVIDENCE = Path(__file__).resolve().parents[2] / "docs" / "results" / "quick-guarded" / "nu.json"


def _quick_sections():
    section = json.loads(QUICK_EVIDENCE.read_text())["profiles"]["quick"]
    for g, per in section["evidence"].items():
        for r, rows in per.items():
            yield g, r, rows, section["da_reference"][g]["val_acc"], section["values"][g][r]


def test_the_adaptive_search_picks_the_full_grids_nu_on_the_recorded_quick_evidence():
    """Issue 19: on the quick profile's full 9-point guarded evidence, the bisection chooses what the whole grid
    chose (and what was recorded), training at most 4 of the 9 values per (group, regularizer)."""
    cases = list(_quick_sections())
    assert len(cases) == 8 and all(len(rows) == 9 for _, _, rows, _, _ in cases)
    trained_total = 0
    for g, r, rows, da, recorded in cases:
        full = choose_nu(rows, da)
        adaptive, trained = tune.simulate_search(rows, da)
        assert full["nu"] == recorded, (g, r)
        assert adaptive == full, (g, r, trained)
        assert len(trained) <= tune.bisection_points(9) == 4, (g, r, trained)
        trained_total += len(trained)
    assert trained_total < 8 * 9 / 2


def _sweep(si, acc):
    grid = sorted(PROFILES["paper"].nu_grid)
    return [{"nu": nu, "val_si": s, "val_acc": a} for nu, s, a in zip(grid, si, acc)]


@settings(max_examples=300, deadline=None)
@given(
    si=st.lists(st.floats(0, 1), min_size=9, max_size=9).map(sorted),
    acc=st.lists(st.floats(10, 100), min_size=9, max_size=9).map(lambda v: sorted(v, reverse=True)),
    da=st.floats(50, 100),
)
def test_on_monotone_sweeps_the_bisection_equals_the_full_grid(si, acc, da):
    rows = _sweep(si, acc)
    adaptive, trained = tune.simulate_search(rows, da)
    full = choose_nu(rows, da)
    # ties in SI between untrained and trained values may make the full grid pick a smaller nu of equal SI
    if adaptive["nu"] != full["nu"]:
        by_nu = {r["nu"]: r for r in rows}
        assert not full["criterion_met"] and by_nu[adaptive["nu"]]["val_si"] == by_nu[full["nu"]]["val_si"]
    else:
        assert adaptive == full
    assert len(trained) <= 4


@settings(max_examples=300, deadline=None)
@given(
    si=st.lists(st.floats(0, 1), min_size=9, max_size=9),
    acc=st.lists(st.floats(10, 100), min_size=9, max_size=9),
    da=st.floats(50, 100),
)
def test_on_any_sweep_a_contradiction_seen_widens_to_the_whole_grid(si, acc, da):
    rows = _sweep(si, acc)
    adaptive, trained = tune.simulate_search(rows, da)
    seen = [r for r in rows if r["nu"] in trained]
    if tune.violations(seen, da - tune.GUARD_POINTS):
        assert sorted(trained) == sorted(r["nu"] for r in rows) and adaptive == choose_nu(rows, da)
    else:  # what the search saw is consistent: its choice is the rule's on what it saw
        assert adaptive == choose_nu(seen, da)


def test_the_search_widens_where_si_falls_as_nu_rises():
    # SI dips at nu=30 although every point keeps the guard: bisection alone would stop at 30 | 100
    si = [0.50, 0.52, 0.55, 0.60, 0.70, 0.40, 0.97, 0.98, 0.99]
    rows = _sweep(si, [95.0] * 9)
    nxt, status = tune.search_next([r["nu"] for r in rows], [rows[4], rows[5]], floor=85.0)
    assert status["widened"] and "SI falls from 0.700 at nu=10 to 0.400 at nu=30" in status["violations"][0]
    assert sorted(nxt) == sorted(r["nu"] for r in rows if r["nu"] not in (10.0, 30.0))
    assert tune.search_next([1.0], [], floor=None) == ([1.0], {"done": False, "widened": False, "violations": []})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a JSON object with format_version and profiles, got a list"),
        ('{"format_version": 2}', "expected a 'profiles' object"),
        ('{"format_version": 2, "profiles": [1]}', "expected a 'profiles' object"),
        ("{not json", "Expecting property name"),
    ],
)
def test_a_corrupt_nu_config_gives_a_clean_error(tmp_path, text, message):
    """Issue 22 item 21: a list, or a file without profiles, gave AttributeError/KeyError."""
    path = tmp_path / "nu.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message) as err:
        tune.read_nu_config(path)
    assert str(err.value).startswith(f"error: {path}: ")
