"""End-to-end behaviour of the paper benchmark on a tiny profile: resumable, deterministic, complete."""

import dataclasses
import json

import pytest

from benchmarks.paper import cli, pipeline
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
    nu_grid=(1.0,),
    tsne_samples=16,
    saliency_samples=1,
)


@pytest.fixture
def tiny_profile(monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", TINY)


def _run(tmp_path, *extra):
    nu = tmp_path / "nu.json"
    args = ["--profile", "tiny", "--groups", "rotation", "--results-dir", str(tmp_path / "res"), "--no-progress"]
    if not nu.exists():
        assert cli.main(["tune", *args, "--nu-config", str(nu)]) == 0
    return cli.main([*args, "--nu-config", str(nu), *extra])


@pytest.mark.slow
def test_resume_skips_finished_runs_and_force_recomputes(tmp_path, tiny_profile, capsys):
    assert _run(tmp_path) == 0
    res = tmp_path / "res"
    results = json.loads((res / "results.json").read_text())
    keys = sorted(results["runs"])
    assert keys == sorted(
        f"mnist_rotation_{m}_s0"
        for m in ["WT", "DA", "IR-l2", "IR-kl", "IR-normalized_l2"] + (["WT-escnn"] if pipeline.have_escnn() else [])
    )
    for name in [
        "table1.md",
        "claims.md",
        "figure4_drift.png",
        "figure5_spectral.png",
        "figure3_saliency_rotation.png",
        "figure2_tsne_rotation.png",
    ]:
        assert (res / name).stat().st_size > 0, name
    assert {"date", "device", "cpu", "threads", "torch", "python", "git_commit"} <= set(results["machine"])
    assert results["machine"]["device"] == "cpu" or results["machine"]["device"].startswith("cuda")
    claims = results["claims"]
    assert claims and all(c["status"] in ("PASS", "FAIL") for c in claims)
    first = {k: (res / "runs" / k / "metrics.json").read_text() for k in keys}
    mtimes = {k: (res / "runs" / k / "model.pt").stat().st_mtime_ns for k in keys}
    capsys.readouterr()

    # second run: everything is skipped, nothing is retrained
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    assert err.count("skip mnist_rotation_") == len(keys)
    assert {k: (res / "runs" / k / "model.pt").stat().st_mtime_ns for k in keys} == mtimes

    # an interrupted run loses only itself: delete one run's marker and re-run
    (res / "runs" / "mnist_rotation_DA_s0" / "metrics.json").unlink()
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    assert "done mnist_rotation_DA_s0" in err and err.count("skip mnist_rotation_") == len(keys) - 1
    # determinism: the recomputed run equals the first one (apart from wall-clock time)
    again = json.loads((res / "runs" / "mnist_rotation_DA_s0" / "metrics.json").read_text())
    before = json.loads(first["mnist_rotation_DA_s0"])
    again["history"].pop("seconds")
    before["history"].pop("seconds")
    assert again == before

    # publish copies tables, figures and results.json, but no checkpoints
    pub = tmp_path / "pub"
    assert cli.main(["publish", "--results-dir", str(res), "--to", str(pub)]) == 0
    names = {p.name for p in pub.iterdir()}
    assert {"table1.md", "claims.md", "results.json", "figure4_drift.png"} <= names
    assert not any(n.endswith(".pt") for n in names)
    assert (pub / "table1.md").read_text() == (res / "table1.md").read_text()

    # --force recomputes everything
    assert _run(tmp_path, "--force") == 0
    assert capsys.readouterr().err.count("done mnist_rotation_") == len(keys)
