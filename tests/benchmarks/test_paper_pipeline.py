"""End-to-end behaviour of the paper benchmark on a tiny profile: resumable, deterministic, complete, and never
reusing a run across settings."""

import dataclasses
import json

import pytest

from benchmarks.paper import cli, pipeline, report, runs
from benchmarks.paper.profiles import PROFILES

TINY = dataclasses.replace(
    PROFILES["smoke"],
    name="tiny",
    epochs=1,
    sizes=(512, 512, 256),
    eval_si=16,
    eval_jacobian=16,
    drift_n=64,
    tune_si=16,
    nu_grid=(0.1,),
    tsne_samples=16,
    saliency_samples=1,
)


@pytest.fixture
def tiny_profile(monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", TINY)


def _args(tmp_path, *extra):
    res = ["--results-dir", str(tmp_path / "res"), "--nu-config", str(tmp_path / "nu.json")]
    return ["--profile", "tiny", "--groups", "rotation", *res, "--no-progress", "--workers", "1", *extra]


def _run(tmp_path, *extra):
    if not (tmp_path / "nu.json").exists():
        assert cli.main(["tune", *_args(tmp_path)]) == 0
    return cli.main(_args(tmp_path, *extra))


def _mtimes(res, keys):
    return {k: (res / "runs" / k / "model.pt").stat().st_mtime_ns for k in keys}


@pytest.mark.slow
def test_resume_reuse_and_force(tmp_path, tiny_profile, capsys, monkeypatch):
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    res = tmp_path / "res"
    results = json.loads((res / "results.json").read_text())
    keys = sorted(results["runs"])
    assert keys == sorted(
        f"mnist_rotation_{m}_s0"
        for m in ["WT", "DA", "IR-l2", "IR-kl", "IR-normalized_l2"] + (["WT-escnn"] if pipeline.have_escnn() else [])
    )
    # run trains only WT: the DA reference and the chosen grid points of the tune ARE the seed-0 runs (err holds
    # the tune's log too, where the DA reference trained once)
    assert err.count("reuse mnist_rotation_IR-") == 3 and "trained mnist_rotation_WT_s0 " in err
    assert err.count("trained mnist_rotation_DA_s0 ") == 1 and "estimated run --profile tiny" in err
    for name in [
        "table1.md",
        "claims.md",
        "figure4_drift.png",
        "figure5_spectral.png",
        "figure3_saliency_rotation.png",
        "figure2_tsne_rotation.png",
    ]:
        assert (res / name).stat().st_size > 0, name
    assert (res / "table1.md").read_text().startswith("**tiny profile: smoke test")  # labelled, not the protocol
    assert {"date", "device", "cpu", "threads", "torch", "python", "git_commit"} <= set(results["machine"])
    assert results["convention"] == report.CONVENTION
    claims = results["claims"]
    assert claims and all(c["status"] in ("PASS", "FAIL") for c in claims if c["claim"].startswith("R^2_4"))
    assert {c["status"] for c in claims if c["claim"].startswith("T^2_3")} == {"NOT RUN"}  # --groups rotation
    # every run folder records the settings it was trained under
    rec = json.loads((res / "runs" / "mnist_rotation_DA_s0" / "train.json").read_text())
    assert rec["settings"] == json.loads(
        json.dumps(runs.train_settings(pipeline.RunSpec(**results["runs"]["mnist_rotation_DA_s0"]["spec"]), TINY))
    )
    assert {"profile", "epochs", "sizes", "nu", "lr", "batch_size", "code", "torch"} <= set(rec["settings"])
    first = {k: json.loads((res / "runs" / k / "metrics.json").read_text()) for k in keys}
    mtimes = _mtimes(res, keys)

    # second run: everything is skipped, nothing is retrained
    assert _run(tmp_path) == 0
    assert capsys.readouterr().err.count("skip mnist_rotation_") == len(keys)
    assert _mtimes(res, keys) == mtimes

    # a lost evaluation is recomputed from the checkpoint, identically; a lost run is retrained, identically
    (res / "runs" / "mnist_rotation_WT_s0" / "metrics.json").unlink()
    for f in (res / "runs" / "mnist_rotation_DA_s0").iterdir():
        f.unlink()
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    assert "done mnist_rotation_WT_s0" in err and "done mnist_rotation_DA_s0" in err
    assert err.count("skip mnist_rotation_") == len(keys) - 2 and "trained mnist_rotation_DA_s0 " in err
    for k in ("mnist_rotation_WT_s0", "mnist_rotation_DA_s0"):
        again = json.loads((res / "runs" / k / "metrics.json").read_text())
        for m in (again, first[k]):
            m["history"].pop("seconds")
            m["history"].get("ensemble", {}).pop("seconds", None)
        assert again == first[k], k

    # changed evaluation settings: re-evaluated, not retrained
    monkeypatch.setitem(PROFILES, "tiny", dataclasses.replace(TINY, eval_si=8))
    mtimes = _mtimes(res, keys)
    assert _run(tmp_path) == 0
    assert capsys.readouterr().err.count("re-evaluate mnist_rotation_") == len(keys)
    assert _mtimes(res, keys) == mtimes

    # the SI-recipe ablation on the trained DA and IR models; its paper-recipe row is Table 1's SI
    assert cli.main(["ablate-si", *_args(tmp_path)]) == 0
    abl = json.loads((res / "si_ablation.json").read_text())
    da = abl["results"]["rotation"]["DA"]
    assert set(da) == {"paper", "threshold: top 10%", "smoothing: off", "baseline: black image", "target: label"}
    table_si = report.run_numbers(json.loads((res / "runs" / "mnist_rotation_DA_s0" / "metrics.json").read_text()))
    assert da["paper"]["si"] == pytest.approx(table_si["si"], abs=1e-5) and abl["samples"] == 8
    assert "| SI recipe |" in (res / "si_ablation.md").read_text()

    # publish copies tables, figures and results.json, but no checkpoints
    pub = tmp_path / "pub"
    assert cli.main(["publish", "--results-dir", str(res), "--to", str(pub)]) == 0
    names = {p.name for p in pub.iterdir()}
    assert {"table1.md", "claims.md", "results.json", "figure4_drift.png", "si_ablation.md"} <= names
    assert not any(n.endswith(".pt") for n in names)
    capsys.readouterr()

    # --force retrains and re-evaluates everything
    assert _run(tmp_path, "--force") == 0
    err = capsys.readouterr().err
    assert err.count("done mnist_rotation_") == len(keys) and "skip mnist_rotation_" not in err


@pytest.mark.slow
def test_runs_are_never_reused_across_settings(tmp_path, tiny_profile, capsys, monkeypatch):
    """Issue 10 item 6: a folder trained under other settings makes the command refuse; --force retrains."""
    assert _run(tmp_path) == 0
    res = tmp_path / "res"
    keys = sorted(json.loads((res / "results.json").read_text())["runs"])
    mtimes = _mtimes(res, keys)
    capsys.readouterr()

    # another learning rate: every run folder differs; nothing is reused or overwritten
    monkeypatch.setitem(PROFILES, "tiny", dataclasses.replace(TINY, lr=1e-3))
    with pytest.raises(SystemExit) as err:
        cli.main(_args(tmp_path))
    msg = str(err.value)
    assert f"{len(keys)} run folder(s)" in msg and "lr: 0.0008 -> 0.001" in msg and "--force" in msg
    assert _mtimes(res, keys) == mtimes
    # the tune refuses its own stale points as well
    with pytest.raises(SystemExit, match=r"lr: 0.0008 -> 0.001"):
        cli.main(["tune", *_args(tmp_path)])
    monkeypatch.setitem(PROFILES, "tiny", TINY)

    # other code (the library or the benchmark's training changed): refused too
    monkeypatch.setattr(runs, "code_version", lambda: {"hash": "0123456789abcdef"})
    with pytest.raises(SystemExit, match=r"code: '[0-9a-f]{16}' -> '0123456789abcdef'"):
        cli.main(_args(tmp_path))
    monkeypatch.undo()
    monkeypatch.setitem(PROFILES, "tiny", TINY)

    # a folder from before settings were recorded is not trusted either
    legacy = res / "runs" / "mnist_rotation_WT_s0"
    (legacy / "train.json").unlink()
    with pytest.raises(SystemExit, match="records no training settings"):
        cli.main(_args(tmp_path))

    # another nu for an IR run (e.g. after a re-tune): refused, named
    nu = json.loads((tmp_path / "nu.json").read_text())
    nu["profiles"]["tiny"]["values"]["rotation"]["l2"] = 0.5
    (tmp_path / "nu.json").write_text(json.dumps(nu))
    with pytest.raises(SystemExit, match=r"mnist_rotation_IR-l2_s0: nu: 0.1 -> 0.5"):
        cli.main(_args(tmp_path))

    # --force retrains them all under the new settings
    assert cli.main(_args(tmp_path, "--force")) == 0
    rec = json.loads((res / "runs" / "mnist_rotation_IR-l2_s0" / "train.json").read_text())
    assert rec["settings"]["nu"] == 0.5
    assert all(m != mtimes[k] for k, m in _mtimes(res, keys).items())


def test_dry_run_prints_measured_estimates_and_trains_nothing(tmp_path, tiny_profile, capsys):
    assert cli.main([*_args(tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    for what in ("tune --profile tiny", "run --profile tiny after that tune", "tune + run"):
        assert f"estimated {what}: " in err
    assert "plan: tune trains 1 DA reference(s) and (bisection, at most) 3 of 3 grid points" in err
    assert not list((tmp_path / "res" / "runs").iterdir()) and not (tmp_path / "nu.json").exists()


def test_a_profile_without_its_own_nu_stops_naming_the_tune_command(tmp_path, tiny_profile):
    nu = tmp_path / "nu.json"
    nu.write_text(json.dumps({"format_version": 2, "profiles": {"quick": {"values": {}, "epochs": 40}}}))
    with pytest.raises(SystemExit, match=r"python -m benchmarks.paper tune --profile tiny"):
        cli.main(_args(tmp_path))
