"""What the audit writes into --out (issue 22 items 3, 4, 16; issue 21 item 2): an interrupted run leaves no stale
report, planted symlinks are not followed, non-finite metrics are reported instead of crashing, the verdict."""

import json
import os

import pytest

import torchinvariance.audit._run as audit_run
from torchinvariance.audit import main

MLP_KWARGS = '{"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}'


def _argv(out, *groups, **given):
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": MLP_KWARGS,
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(out),
    }
    base.update({f"--{k.replace('_', '-')}": str(v) for k, v in given.items()})
    argv = [f"{k}={v}" for k, v in base.items()]
    for g in groups or ("rotation:order=4",):
        argv += ["--group", g]
    return [*argv, "--no-progress"]


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------------ item 3: Ctrl-C into an existing --out
def test_interrupted_run_leaves_no_stale_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x"))
    assert rc == 0, err
    before = _files(out)
    assert {"report.json", "report.md", "rotation-order4_elements.png", "flip-axisx_elements.png"} == set(before)

    calls = []
    evaluate = audit_run._evaluate

    def interrupted(*args, **kwargs):  # Ctrl-C while the second group is measured
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(audit_run, "_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))  # other numbers, other figures
    after = _files(out)
    assert "report.json" not in after and "report.md" not in after  # clearly absent, not the old one
    # nothing of the interrupted run was written: the old figures are the old ones, no temp files are left
    assert after == {k: v for k, v in before.items() if not k.startswith("report.")}


def test_interrupted_while_writing_leaves_no_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x"))
    assert rc == 0, err
    old_report = json.loads((out / "report.json").read_text())
    writes = []
    atomic_write = audit_run._atomic_write

    def interrupted(path, data):  # Ctrl-C after the first figure was replaced
        writes.append(path.name)
        if len(writes) == 2:
            raise KeyboardInterrupt
        atomic_write(path, data)

    monkeypatch.setattr(audit_run, "_atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))
    assert writes == ["rotation-order4_elements.png", "flip-axisx_elements.png"]  # figures first, report last
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    assert sorted(p.name for p in out.iterdir()) == ["flip-axisx_elements.png", "rotation-order4_elements.png"]
    monkeypatch.setattr(audit_run, "_atomic_write", atomic_write)
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x", seed=7, samples=6))
    assert rc == 0, err
    new_report = json.loads((out / "report.json").read_text())
    assert new_report["data"]["samples"] == 6 and old_report["data"]["samples"] == 4


def test_report_is_whole_after_a_successful_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    for seed in (0, 1):
        rc, _, err = _run(capsys, _argv(out, seed=seed))
        assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "rotation-order4_elements.png"]
    assert oct(os.stat(out / "report.json").st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ item 4: symlinks planted in --out
@pytest.mark.parametrize("dangling", [False, True])
def test_planted_symlinks_are_replaced_not_followed(tmp_path, capsys, dangling):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    names = ["report.json", "report.md", "rotation-order4_elements.png"]
    for name in names:
        target = outside / f"victim-{name}"
        if not dangling:
            target.write_text(f"precious {name}")
        (out / name).symlink_to(target)
    rc, _, err = _run(capsys, _argv(out))
    assert rc == 0, err
    for name in names:
        target = outside / f"victim-{name}"
        if dangling:
            assert not target.exists(), f"{name}: the audit wrote through a dangling symlink to {target}"
        else:
            assert target.read_text() == f"precious {name}", f"{name}: the audit overwrote {target}"
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert json.loads((out / "report.json").read_text())["groups"][0]["group"] == "rotation:order=4"
    assert (out / "rotation-order4_elements.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in outside.iterdir()) == ([] if dangling else [f"victim-{n}" for n in sorted(names)])


def test_report_path_that_is_a_folder_is_refused_before_measuring(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)
    rc, _, err = _run(capsys, _argv(out))
    assert rc == 2 and "report.json is a folder" in err, err


# ------------------------------------------------------------------ item 16: non-finite metric values
HUGE = '''
import torch
from torch import nn

import torchinvariance as ti


class Huge(nn.Module):
    """The paper's MLP with its logits cast to float64 and scaled: LI's squared differences overflow float64."""

    def __init__(self, scale=1e200, dtype="float64"):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=8)
        self.scale, self.dtype = scale, getattr(torch, dtype)

    def forward(self, x):
        return self.mlp(x).to(self.dtype) * self.scale
'''


@pytest.fixture
def huge(tmp_path, monkeypatch):
    (tmp_path / "audit_huge.py").write_text(HUGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import audit_huge

    importlib.reload(audit_huge)
    return audit_huge


def test_li_overflow_is_reported_not_a_crash(tmp_path, capsys, huge):
    import numpy as np
    import torch

    import torchinvariance as ti

    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, _argv(out, model="audit_huge:Huge", model_kwargs="{}", samples=6))
    assert rc == 0, err
    assert "LI of model not finite" in stdout and "LI not finite" in stdout, stdout
    report = json.loads((out / "report.json").read_text())  # valid JSON: no NaN/Infinity tokens
    (g,) = report["groups"]
    for ref in ("model", "random_inputs"):
        assert g[ref]["li"]["mean"] is None and g[ref]["li"]["per_element"] == [None] * 4
        assert "non-finite" in g[ref]["li"]["not_finite"] and "inf" in g[ref]["li"]["not_finite"]
        assert "li" in g["not_finite"][ref]
    assert g["summary"]["li"]["model"] is None
    # the other metrics are measured as usual: DI against the functional metric on the same model and inputs
    model = huge.Huge().eval()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        di = ti.distribution_invariance(model, ti.get_group("rotation", order=4), x).item()
    np.testing.assert_allclose(g["summary"]["di"]["model"], di, rtol=1e-6, atol=1e-12)
    assert g["summary"]["consistency"]["model"] is not None
    md = (out / "report.md").read_text()
    assert "| LI | not finite |" in md and "**LI of the model is not finite**" in md, md
    assert "| rot90 |" in md and md.count("not finite") >= 5
    assert (out / "rotation-order4_elements.png").is_file()  # the finite metrics are drawn


def test_non_finite_outputs_are_reported(tmp_path, capsys, huge):
    """float32 logits of 1e39 are inf: no metric has a value, the report says so for each."""
    out = tmp_path / "out"
    rc, stdout, err = _run(
        capsys, _argv(out, model="audit_huge:Huge", model_kwargs='{"scale": 1e39, "dtype": "float32"}')
    )
    assert rc == 0, err
    (g,) = json.loads((out / "report.json").read_text())["groups"]
    assert sorted(g["not_finite"]["model"]) == ["consistency", "di", "li"]
    assert all(g["summary"][k]["model"] is None for k in ("consistency", "di", "li"))
    assert g["model"]["elements"] == ["rot0", "rot90", "rot180", "rot270"]
    md = (out / "report.md").read_text()
    assert "**DI of the model is not finite**" in md and "NaN or +Inf" in md
    assert g["figures"] == [] and "0 figures" in stdout
