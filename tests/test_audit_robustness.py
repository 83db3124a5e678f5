"""The audit's robustness metrics (issue 23 item 3): --metrics worst,flip,discover put the worst-of-k accuracy, the
smallest flips and the LieGG spectrum into report.json and report.md, with a flip histogram per group and one
spectrum figure; the numbers are those of ti.worst_case / ti.smallest_flip / ti.discover_symmetries on the same
model and data; bad selections give clean errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinvariance as ti
from torchinvariance.audit import main
from torchinvariance.audit._config import parse_args
from torchinvariance.audit._inputs import load_data

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TORCHINVARIANCE_DATA", ROOT.parent / "shared" / "data"))
F64 = torch.float64


def linear():
    """A factory for the audit: a linear classifier of 8x8 images, whose predictions do change under rotations."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _argv(out, *groups, metrics="di,worst,flip,discover", data="mnist", model="test_audit_robustness:linear"):
    argv = [f"--model={model}", "--input-shape=1,8,8", "--samples=24", f"--data={data}", f"--metrics={metrics}"]
    argv += [f"--data-root={DATA}", f"--out={out}", "--batch-size=10", "--no-progress"]
    for g in groups or ("rotation:order=4",):
        argv += ["--group", g]
    return argv


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


needs_mnist = pytest.mark.skipif(not (DATA / "MNIST").exists(), reason=f"MNIST not found under {DATA}")


@needs_mnist
def test_report_json_md_and_figures_match_the_library_calls(tmp_path, capsys):
    out = tmp_path / "audit"
    argv = _argv(out, "rotation:order=4", "so2:angles=0,30,90")
    # a checkpoint fitted to these samples (least squares on one-hot labels): right on them, not on their rotations
    x, y = (lambda d: (d.x, d.y))(load_data(parse_args(argv), 10))
    model = linear()
    a = torch.cat([x.flatten(1), torch.ones(len(x), 1)], 1).double()
    w = torch.linalg.lstsq(a, nn.functional.one_hot(y, 10).double()).solution
    with torch.no_grad():
        model[1].weight.copy_(w[:-1].T)
        model[1].bias.copy_(w[-1])
    torch.save(model.state_dict(), tmp_path / "fitted.pt")
    argv.append(f"--checkpoint={tmp_path / 'fitted.pt'}")
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "report.json",
        "report.md",
        "rotation-order4_elements.png",
        "rotation-order4_flips.png",
        "so2-angles0_30_90_elements.png",
        "so2-angles0_30_90_flips.png",
        "symmetry_spectrum.png",
    ]
    assert "5 figures" in stdout
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    # the same model and data, measured directly with the library
    model.eval()
    rot, so2 = ti.get_group("rotation", order=4), ti.get_group("so2")
    g_rot, g_so2 = report["groups"]
    for g, group, elements in ((g_rot, rot, None), (g_so2, so2, [0.0, 30.0, 90.0])):
        direct = ti.worst_case(model, group, x, y, elements=elements)
        assert g["worst"]["worst_case_accuracy"] == pytest.approx(direct.worst_case_accuracy, abs=1e-12)
        assert g["worst"]["accuracy"] == pytest.approx(direct.accuracy, abs=1e-12)
        assert g["worst"]["per_element"] == pytest.approx(direct.element_accuracy.tolist(), abs=1e-12)
        flips = ti.smallest_flip(model, group, x)
        assert g["flip"] == json.loads(json.dumps(flips.to_dict()))
        assert g["figures"][-1].endswith("_flips.png")
    assert g_rot["flip"]["never"] < 24  # the check can see flips: this model changes its mind
    assert g_rot["worst"]["accuracy"] == 1.0  # fitted: every clean prediction right, and the worst case lower
    assert g_rot["worst"]["worst_case_accuracy"] < min(g_rot["worst"]["per_element"][1:]) <= 1.0
    spectrum = ti.discover_symmetries(model, x)
    assert report["discover"]["singular_values"] == pytest.approx(spectrum.singular_values.tolist(), rel=1e-5)
    assert [n for n, _ in report["discover"]["nearest"]] == [n for n, _ in spectrum.nearest()]
    assert report["discover"]["figure"] == "symmetry_spectrum.png"
    md = (out / "report.md").read_text()
    w = g_rot["worst"]
    assert f"- worst-of-k accuracy {w['worst_case_accuracy']:.4f} (clean {w['accuracy']:.4f})" in md
    f = g_rot["flip"]
    assert f"searched up to 2 steps both ways: {24 - f['never']} of 24 samples change their prediction" in md
    assert "searched up to 180 degrees both ways" in md
    spectrum_md = md.split("## Discovered symmetries (LieGG)")[1]
    rows = [line for line in spectrum_md.splitlines() if line.startswith("| s")]
    assert [r.split(" | ")[2] for r in rows] == [n for n, _ in spectrum.nearest()]  # s1..s6 and their nearest
    assert "![symmetry_spectrum.png](symmetry_spectrum.png)" in md and "![so2-angles0_30_90_flips.png]" in md


@needs_mnist
def test_default_metrics_write_no_robustness(tmp_path, capsys):
    out = tmp_path / "audit"
    rc, _, err = _run(capsys, _argv(out, metrics="di,li"))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert "discover" not in report and "worst" not in report["groups"][0] and "flip" not in report["groups"][0]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "rotation-order4_elements.png"]
    assert "Worst case" not in (out / "report.md").read_text()


def test_discover_and_flip_on_random_inputs(tmp_path, capsys):
    """Random inputs have no labels: flip and discover still run (they need none)."""
    out = tmp_path / "audit"
    rc, _, err = _run(capsys, _argv(out, "flip:axis=x", metrics="flip,discover", data="random"))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    (g,) = report["groups"]
    assert g["flip"]["unit"] == "steps" and g["flip"]["max_magnitude"] == 1 and "worst" not in g
    assert len(report["discover"]["singular_values"]) == 6
    assert "flip-axisx_flips.png" in g["figures"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"metrics": "di,worse"}, "--metrics must be a selection of di,li,si,worst,flip,discover"),
        ({"metrics": "worst,worst"}, "without repeats"),
        ({"metrics": "worst", "data": "random"}, "--metrics worst (worst-of-k accuracy) needs labelled data"),
        ({"metrics": "flip", "data": "random", "groups": ("dihedral",)}, "so2, scale or a cyclic group"),
    ],
)
def test_bad_selections_give_clean_errors(tmp_path, capsys, args, message):
    groups = args.pop("groups", ())
    out = tmp_path / "audit"
    rc, _, err = _run(capsys, _argv(out, *groups, **args))
    assert rc == 2 and message in err
    assert not out.exists() or not (out / "report.json").exists()  # refused before anything was written


@needs_mnist
def test_one_measured_element_in_words_and_a_console_line_without_di(tmp_path, capsys):
    """'under all 1 measured element'; with --metrics worst,flip the console printed 'so2:angles=30: ' and nothing."""
    rc, out, err = _run(capsys, _argv(tmp_path / "a", "so2:angles=30", metrics="worst,flip"))
    assert rc == 0, err
    md = (tmp_path / "a" / "report.md").read_text()
    assert "classified correctly under the 1 measured element" in md and "all 1 " not in md
    line = next(t for t in out.splitlines() if t.startswith("so2:angles=30:"))
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    c = report["groups"][0]["summary"]["consistency"]
    assert line == f"so2:angles=30: top-1 consistency {c['model']:.4g} (group-averaged {c['group_averaged']:.4g})"
