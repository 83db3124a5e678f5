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
    assert "| LI (invariant: 0) | not finite |" in md and "**LI of the model is not finite**" in md, md
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


# ------------------------------------------------------------------ issue 21 item 2: the verdict, the table, plurals
def _entry(summary, predictions=None, **extra):
    default = {"majority_class": 0, "majority_share": 0.3, "logit_spread": 2.0}
    preds = predictions or {k: dict(default) for k in ("model", "group_averaged", "random_inputs")}
    return {"summary": summary, "predictions": preds, **extra}


def _s(model, averaged, noise):
    return {"model": model, "group_averaged": averaged, "random_inputs": noise}


def test_verdict_rules():
    from torchinvariance.audit._verdict import verdicts

    # the DA model: DI 0.113 on data, 0.070 on noise
    v = verdicts(_entry({"di": _s(0.113, 3e-9, 0.070)}))["di"]
    assert v.startswith("DI: less invariant than the group-averaged model; less invariant on data than on random")
    assert "0.113" in v and "0.07" in v
    v = verdicts(_entry({"di": _s(0.02, 3e-9, 0.4)}))["di"]
    assert "more invariant on data than on random inputs" in v
    v = verdicts(_entry({"di": _s(0.10, 3e-9, 0.11)}))["di"]
    assert "about as invariant on data as on random inputs" in v
    v = verdicts(_entry({"di": _s(4e-9, 3e-9, 5e-9)}))["di"]
    assert "as invariant as the group-averaged model; invariant on random inputs too" in v
    v = verdicts(_entry({"di": _s(2e-6, 3e-9, 5e-9)}))["di"]  # above the tolerance 1e-6
    assert "less invariant than the group-averaged model" in v
    # SI and consistency: the distance is 1 - value
    v = verdicts(_entry({"si": _s(0.9995, 0.9999, 0.6)}))["si"]
    assert "as invariant as the group-averaged model; more invariant on data than on random inputs" in v
    v = verdicts(_entry({"consistency": _s(0.93, 1.0, 0.48)}))["consistency"]
    assert "less invariant than the group-averaged model; more invariant on data than on random inputs" in v
    # consistency on noise that gets one class says nothing
    preds = {
        "model": {"majority_class": 2, "majority_share": 0.2, "logit_spread": 1.0},
        "group_averaged": {"majority_class": 2, "majority_share": 0.2, "logit_spread": 1.0},
        "random_inputs": {"majority_class": 7, "majority_share": 0.97, "logit_spread": 1.0},
    }
    v = verdicts(_entry({"consistency": _s(0.93, 1.0, 0.99)}, preds))["consistency"]
    assert "random inputs tell nothing here: the model gives 97% of them class 7" in v
    assert "more invariant" not in v and "less invariant on data" not in v
    # LI is read relative to the spread of the logits: 10 on data (spread 100) vs 1 on noise (spread 1)
    preds = {
        k: {"majority_class": 0, "majority_share": 0.3, "logit_spread": 100.0} for k in ("model", "group_averaged")
    }
    preds["random_inputs"] = {"majority_class": 0, "majority_share": 0.3, "logit_spread": 1.0}
    v = verdicts(_entry({"li": _s(10.0, 1e-12, 1.0)}, preds))["li"]
    assert "more invariant on data than on random inputs" in v and "0.1 on data, 1 on random inputs" in v
    # not finite: no verdict
    v = verdicts(_entry({"li": _s(None, None, 1.0)}, not_finite={"model": {"li": "overflow"}}))["li"]
    assert v == "LI: not finite for the model; no verdict."
    # a continuous group: DI and LI against the interpolation floor, not the smoothed averaged model
    cont = {"how": "listed"}
    v = verdicts(_entry({"di": _s(0.011, 0.001, 0.5), "di_floor": _s(0.010, 0.0, 0.4)}, elements=cont))["di"]
    assert "at the interpolation floor" in v and "floor 0.01" in v
    v = verdicts(_entry({"di": _s(0.05, 0.001, 0.5), "di_floor": _s(0.010, 0.0, 0.4)}, elements=cont))["di"]
    assert "above the interpolation floor" in v


INVARIANT = """
import torch

import torchinvariance as ti


def invariant(**kwargs):
    torch.manual_seed(0)
    return ti.GroupAveraged(ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=8), ti.get_group("rotation", order=4))
"""


def test_verdict_of_an_invariant_and_a_generic_model(tmp_path, capsys, monkeypatch):
    """Test the tester: the exactly invariant model is 'as invariant as', the plain MLP is not."""
    (tmp_path / "audit_invariant.py").write_text(INVARIANT)
    monkeypatch.syspath_prepend(str(tmp_path))
    reports = {}
    for name, model in (("invariant", "audit_invariant:invariant"), ("generic", "torchinvariance.models:MLP")):
        argv = _argv(tmp_path / name, model=model, samples=16, metrics="di,li,si", si_steps=8)
        rc, stdout, err = _run(capsys, argv)
        assert rc == 0, err
        assert "and 2 figures to" in stdout
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())["groups"][0]
    inv, gen = reports["invariant"]["verdict"], reports["generic"]["verdict"]
    assert sorted(inv) == sorted(gen) == ["consistency", "di", "li", "si"]
    for key in ("di", "li", "si", "consistency"):
        assert "as invariant as the group-averaged model" in inv[key], inv[key]
    for key in ("di", "li", "si"):
        assert "less invariant than the group-averaged model" in gen[key], gen[key]
    assert "invariant on random inputs too" in inv["di"] and "invariant on random inputs too" in inv["li"]
    md = (tmp_path / "generic" / "report.md").read_text()
    assert "Verdict:" in md and f"- {gen['di']}" in md


def test_prediction_stats_against_a_loop(tmp_path, capsys):
    import torch

    import torchinvariance as ti

    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, samples=12, batch_size=5))
    assert rc == 0, err
    g = json.loads((out / "report.json").read_text())["groups"][0]
    torch.manual_seed(0)
    model = ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=8).eval()
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = model(x).double()
    counts = [sum(int(f[b].argmax()) == c for b in range(12)) for c in range(3)]
    pairs = [0.5 * float(((f[a] - f[b]) ** 2).sum()) for a in range(12) for b in range(12) if a != b]
    p = g["predictions"]["model"]
    assert p["majority_class"] == max(range(3), key=counts.__getitem__)
    assert p["majority_share"] == max(counts) / 12
    assert p["logit_spread"] == pytest.approx(sum(pairs) / len(pairs), rel=1e-9)


def test_table_has_no_constant_column_and_states_the_majority_share(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, _argv(out, "rotation:order=4", "flip:axis=x"))
    assert rc == 0, err
    md = (out / "report.md").read_text()
    assert (
        "invariant model |" not in md
        and "| metric | model | group-averaged | random inputs |\n|---|---:|---:|---:|\n" in md
    )
    assert "| DI (invariant: 0) |" in md and "| top-1 consistency (invariant: 1) |" in md
    assert "| share of the most frequent top-1 class | " in md
    assert "Flip(axis='x'), 2 elements" in md and "Rotation(order=4), 4 elements" in md
    for block in md.split("<!-- summary ")[1:]:  # no column of a summary table holds an invariant model's value
        for line in block.split("<!-- end of summary")[0].splitlines():
            if line.startswith("| ") and "---" not in line:
                assert not line.endswith("| 1 |") and not line.endswith("| 0 |"), line


def test_plural():
    from torchinvariance.audit._run import _plural

    assert _plural(1, "element") == "1 element" and _plural(2, "figure") == "2 figures"


def test_bar_chart_legends_are_outside_the_panels():
    from torchinvariance.audit._run import _legends_below
    from torchinvariance.metrics import InvarianceReport

    report = InvarianceReport(
        "Rotation(order=4)", 4, ["rot0", "rot90", "rot180", "rot270"],
        {"di": {"mean": 0.5, "std": 0.1, "per_element": [0.0, 0.9, 0.9, 0.9]}},
    )  # fmt: skip
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = report.plot(references={"group-averaged": report})
    _legends_below(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["model", "group-averaged", "mean 0.5"]
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0  # entirely below the axes


def test_equivariance_verdict_rules():
    from torchinvariance.audit._verdict import equivariance_verdict

    def entry(model, averaged, noise, scales=(10.0, 10.0, 1.0), floor=None):
        refs = ("model", "group_averaged", "random_inputs")
        g = {
            "equivariance": {r: {"output_scale": sc} for r, sc in zip(refs, scales)},
            "summary": {"error": dict(zip(refs, (model, averaged, noise)))},
        }
        if floor is not None:
            g["summary"]["floor"] = {"model": floor, "group_averaged": floor, "random_inputs": floor}
        return equivariance_verdict(g)["error"]

    v = entry(1e-7, 2e-7, 1e-8)
    assert "as equivariant as the group-averaged model; equivariant on random inputs too" in v
    # relative to the largest output: 1 of 10 on data is less than 0.5 of 1 on noise
    v = entry(1.0, 1e-7, 0.5)
    assert "less equivariant than the group-averaged model; more equivariant on data than on random inputs" in v
    assert "0.1 on data, 0.5 on random inputs" in v
    v = entry(5.0, 1e-7, 0.1)
    assert "less equivariant on data than on random inputs" in v
    v = entry(0.011, 0.002, 0.5, floor=0.01)
    assert v.startswith("equivariance error: at the interpolation floor")
    v = entry(0.05, 0.002, 0.5, floor=0.01)
    assert "above the interpolation floor" in v
    assert entry(None, 0.0, 0.0) == "equivariance error: not finite for the model; no verdict."


def test_unit_after_a_value():
    from torchinvariance.audit._run import _unit

    assert _unit(1, "steps") == "step" and _unit(2, "steps") == "steps" and _unit(1.0, "steps") == "step"
    assert (
        _unit(1, "degrees") == "degree" and _unit(1.5, "steps") == "steps" and _unit(1, "|ln factor|") == "|ln factor|"
    )
