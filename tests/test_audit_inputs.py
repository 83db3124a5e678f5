"""The audit's inputs under bad use (issue 22 items 11, 17, 18, 19): clean errors, an honest report."""

import json

import pytest

from torchinvariance.audit import AuditConfig, AuditError, GroupSpec, main, run_audit

MLP_KWARGS = '{"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}'


def _argv(tmp_path, **given):
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": MLP_KWARGS,
        "--group": "rotation:order=4",
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(tmp_path / "out"),
    }
    base.update({f"--{k.replace('_', '-')}": str(v) for k, v in given.items()})
    return [f"{k}={v}" for k, v in base.items()] + ["--no-progress"]  # k=v: values such as -inf:1 start with -


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ item 11: --normalize
@pytest.mark.parametrize("spec", ["nan:1", "0:inf", "inf:1", "0:nan", "0:-inf", "-inf:1"])
def test_normalize_rejects_non_finite_values(tmp_path, capsys, spec):
    rc, _, err = _run(capsys, _argv(tmp_path, normalize=spec))
    assert rc == 2
    assert f"--normalize {spec!r}" in err and "finite" in err, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_normalize_non_finite_rejected_from_python_too(tmp_path):
    """run_audit with an AuditConfig built by hand (no parse_args) checks the same, also for --data random."""
    cfg = AuditConfig(
        model="torchinvariance.models:MLP",
        model_kwargs=json.loads(MLP_KWARGS),
        groups=(GroupSpec.parse("rotation:order=4"),),
        input_shape=(1, 8, 8),
        samples=4,
        out=tmp_path / "out",
        normalize="nan:1",
        progress=False,
    )
    with pytest.raises(AuditError, match="finite"):
        run_audit(cfg)


def test_random_data_report_says_normalization_was_not_applied(tmp_path, capsys):
    rc, _, err = _run(capsys, _argv(tmp_path, normalize="standardize"))
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["normalize"] == "none"
    assert report["data"]["normalize_requested"] == "standardize"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "normalize none (--normalize standardize not applied" in md
    assert "normalize standardize," not in md


def test_applied_normalization_is_reported_as_applied(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    rc, _, err = _run(capsys, _argv(tmp_path, normalize="0.5:0.25", data=f"folder:{folder}"))
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["normalize"] == report["data"]["normalize_requested"] == "0.5:0.25"
    assert "not applied" not in (tmp_path / "out" / "report.md").read_text()
