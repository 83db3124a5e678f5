"""The audit on continuous groups (so2, scale) and on equivariant models (--output-action), against explicit loops."""

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import torchinvariance as ti
from torchinvariance.audit import GroupSpec, main
from torchinvariance.audit._config import ActionSpec, AuditError

MLP_KWARGS = {"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 16}


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _mlp_audit(tmp_path, capsys, group, samples=6, seed=0):
    torch.manual_seed(1)
    model = ti.MLP(in_shape=(1, 8, 8), num_classes=3, hidden=16).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rc, _, err = _run(
        capsys,
        "--model", "torchinvariance.models:MLP", "--model-kwargs", json.dumps(MLP_KWARGS),
        "--checkpoint", tmp_path / "m.pt", "--group", group, "--input-shape", "1,8,8", "--samples", samples,
        "--seed", seed, "--no-progress", "--out", tmp_path / "out",
    )  # fmt: skip
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return model, report, (tmp_path / "out" / "report.md").read_text()


def _inputs(samples, seed):
    """The audit's random data and its random-input reference, rebuilt from their definition."""
    x = torch.randn(samples, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    return x, noise * x.std((0, 2, 3), keepdim=True) + x.mean((0, 2, 3), keepdim=True)


def _loop(f, group, x, elements):
    """Per element: LI, DI and the LI floor, one sample at a time, in float64."""
    li, di, floor = [], [], []
    for g in elements:
        terms = {"li": [], "di": [], "floor": []}
        for b in range(x.shape[0]):
            xb = x[b : b + 1].double()
            with torch.no_grad():
                fx, fgx = f(xb)[0], f(group.act(g, xb))[0]
                back = f(group.act(group.inverse(g), group.act(g, xb)))[0]
            terms["li"].append(0.5 * float(((fx - fgx) ** 2).sum()))
            terms["floor"].append(0.5 * float(((fx - back) ** 2).sum()))
            p, q = torch.softmax(fx, -1), torch.softmax(fgx, -1)
            terms["di"].append(float((p * (p.log() - q.log())).sum()))
        li.append(np.mean(terms["li"]))
        di.append(np.mean(terms["di"]))
        floor.append(np.mean(terms["floor"]))
    return np.array(li), np.array(di), np.array(floor)


def _averaged(model, group, over):
    def f(x):
        return torch.stack([model(group.act(h, x)) for h in over]).mean(0)

    return f


def test_so2_listed_angles_against_a_per_element_float64_loop(tmp_path, capsys):
    model, report, md = _mlp_audit(tmp_path, capsys, "so2:angles=0,30,45,90")
    so2 = ti.get_group("so2")
    (g,) = report["groups"]
    angles = [0.0, 30.0, 45.0, 90.0]
    assert g["model"]["element_values"] == angles and g["model"]["elements"] == ["rot0", "rot30", "rot45", "rot90"]
    x, noise = _inputs(6, 0)
    f64 = model.double()
    for key, data, f in (
        ("model", x, f64),
        ("random_inputs", noise, f64),
        ("group_averaged", x, _averaged(f64, so2, angles)),  # over the identity and the listed angles
    ):
        li, di, floor = _loop(f, so2, data, angles)
        np.testing.assert_allclose(g[key]["li"]["per_element"], li, rtol=1e-4, atol=1e-9)
        # float32 log-softmax in the audit: ~1e-7 absolute on DI
        np.testing.assert_allclose(g[key]["di"]["per_element"], di, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(g[key]["li"]["floor"]["per_element"], floor, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(g[key]["li"]["mean"], li[1:].mean(), rtol=1e-4)  # the listed identity left out
    assert g["summary"]["li"]["model"] > 1e-6  # not vacuous: a plain MLP is not rotation invariant
    assert g["elements"]["group_averaged_over"] == ["rot0", "rot30", "rot45", "rot90"]
    assert "| rot30 | 30 |" in md and "LI floor" in md and "not exactly invariant" in md
    assert g["figures"] == ["so2-angles0_30_45_90_elements.png"]
    assert (tmp_path / "out" / g["figures"][0]).read_bytes()[:4] == b"\x89PNG"


def test_scale_drawn_factors_with_the_seed_against_a_loop(tmp_path, capsys):
    model, report, _ = _mlp_audit(tmp_path, capsys, "scale:min_scale=0.7,samples=4", seed=3)
    scale = ti.get_group("scale", min_scale=0.7)
    (g,) = report["groups"]
    drawn = sorted(scale.sample(4, generator=torch.Generator().manual_seed(3)))
    np.testing.assert_allclose(g["model"]["element_values"], drawn, rtol=1e-12)
    assert min(drawn) >= 0.7 and g["elements"]["how"] == "drawn" and g["elements"]["seed"] == 3
    x, _ = _inputs(6, 3)
    li, di, floor = _loop(model.double(), scale, x, drawn)
    np.testing.assert_allclose(g["model"]["li"]["per_element"], li, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(g["model"]["di"]["per_element"], di, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g["model"]["li"]["floor"]["per_element"], floor, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(g["summary"]["li"]["model"], li.mean(), rtol=1e-4)  # no identity drawn: all
    assert li.min() > 1e-6


def test_scale_listed_factors_keep_the_groups_parameters(tmp_path, capsys):
    _, report, _ = _mlp_audit(tmp_path, capsys, "scale:min_scale=0.8,factors=0.8,1.25")
    (g,) = report["groups"]
    assert g["repr"].startswith("Scale(min_scale=0.8") and g["model"]["element_values"] == [0.8, 1.25]


def _equivariant_audit(tmp_path, capsys, factory, kwargs, group, action, samples=5):
    rc, _, err = _run(
        capsys,
        "--model", factory, "--model-kwargs", json.dumps(kwargs), "--group", group, "--output-action", action,
        "--input-shape", "1,8,8", "--samples", samples, "--no-progress", "--out", tmp_path / "eq",
    )  # fmt: skip
    assert rc == 0, err
    return json.loads((tmp_path / "eq" / "report.json").read_text()), (tmp_path / "eq" / "report.md").read_text()


@pytest.mark.parametrize(("kernel", "equivariant"), [(3, False), (1, True)])
def test_equivariant_conv_net_with_same_against_a_rot90_loop(tmp_path, capsys, kernel, equivariant):
    kwargs = {"in_channels": 1, "out_channels": 2, "kernel_size": kernel, "padding": kernel // 2}
    report, md = _equivariant_audit(tmp_path, capsys, "torch.nn:Conv2d", kwargs, "rotation:order=4", "same")
    (g,) = report["groups"]
    torch.manual_seed(0)  # the audit seeds the factory's initialization with --seed
    conv = nn.Conv2d(**kwargs).double()
    x, noise = _inputs(5, 0)
    for key, data in (("model", x), ("random_inputs", noise)):
        expected = []
        for k in range(4):  # torch.rot90 directly, not the group: g^-1 f(g x) - f(x), max over samples and outputs
            with torch.no_grad():
                back = torch.rot90(conv(torch.rot90(data.double(), k, (-2, -1))), -k, (-2, -1))
                expected.append(float((back - conv(data.double())).abs().max()))
        eq = g["equivariance"][key]
        np.testing.assert_allclose(eq["error"]["per_element"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(eq["error"]["mean"], np.mean(expected[1:]), rtol=1e-5, atol=1e-6)
    if equivariant:
        assert g["summary"]["error"]["model"] < 1e-5
    else:
        assert g["summary"]["error"]["model"] > 1e-2  # the tester fails a model that is not equivariant
    assert g["summary"]["error"]["group_averaged"] < 1e-5  # GroupAveraged(output_action="same"): exact
    assert "di" not in g["summary"] and report["skipped"]["metrics"] == ["accuracy", "consistency", "di", "li"]
    assert "Not measured: accuracy, consistency, di, li" in md
    assert "| equivariance error, max over samples (equivariant: 0) |" in md and "equivariant model |" not in md
    verdict = g["verdict"]["error"]
    if equivariant:
        assert "as equivariant as the group-averaged model; equivariant on random inputs too" in verdict, verdict
    else:
        assert "less equivariant than the group-averaged model" in verdict, verdict
    assert f"- {verdict}" in md and "output_action=...)`, each output brought back" in md  # the equivariant reading
    assert "its DI and LI are 0" not in md


def test_equivariant_so2_same_with_the_floor(tmp_path, capsys):
    kwargs = {"in_channels": 1, "out_channels": 2, "kernel_size": 1}
    report, md = _equivariant_audit(tmp_path, capsys, "torch.nn:Conv2d", kwargs, "so2:angles=0,30,90", "same")
    (g,) = report["groups"]
    eq = g["equivariance"]["model"]
    assert eq["element_values"] == [0.0, 30.0, 90.0] and "floor" in eq
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    x, _ = _inputs(5, 0)
    expected = ti.equivariance_error(conv, ti.get_group("so2"), x, "same", elements=[0.0, 30.0, 90.0])
    np.testing.assert_allclose(eq["error"]["per_element"], expected.double().numpy(), rtol=1e-5, atol=1e-7)
    assert "interpolation floor" in md and "(rot0, rot30, rot90)" in md
    assert g["verdict"]["error"].startswith("equivariance error: at the interpolation floor"), g["verdict"]


def test_perm_and_callable_output_actions(tmp_path, capsys, monkeypatch):
    (tmp_path / "halves_mod.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Halves(torch.nn.Module):
                def forward(self, x):
                    w = x.shape[-1] // 2
                    return torch.stack([x[..., :w].sum((1, 2, 3)), x[..., w:].sum((1, 2, 3))], 1)

            def swap(g, y):
                return y.flip(1) if g else y
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for action in ("perm:flipx=1,0", "perm:1=1,0", "halves_mod:swap"):
        report, _ = _equivariant_audit(tmp_path, capsys, "halves_mod:Halves", {}, "flip:axis=x", action)
        assert report["groups"][0]["equivariance"]["model"]["error"]["per_element"][1] < 1e-5, action
    # test the tester: a permutation that is not the model's symmetry, and the invariance audit, both see the swap
    for action in ("perm:flipx=0,1", "trivial"):
        report, _ = _equivariant_audit(tmp_path, capsys, "halves_mod:Halves", {}, "flip:axis=x", action)
        g = report["groups"][0]
        if action == "trivial":
            assert g["summary"]["li"]["model"] > 0.1
        else:
            assert g["equivariance"]["model"]["error"]["mean"] > 0.1


def test_group_spec_lists_and_slugs():
    spec = GroupSpec.parse("so2:angles=0,30,45,90")
    assert spec.params == {} and spec.elements == (0.0, 30.0, 45.0, 90.0) and spec.elements_key == "angles"
    assert spec.slug == "so2-angles0_30_45_90"
    spec = GroupSpec.parse("scale:min_scale=0.8,factors=0.8,1.25,max_scale=1.5")
    assert spec.params == {"min_scale": 0.8, "max_scale": 1.5} and spec.elements == (0.8, 1.25)
    spec = GroupSpec.parse("so2:samples=8")
    assert spec.elements == 8 and spec.elements_key == "samples" and spec.slug == "so2-samples8"
    assert GroupSpec.parse("rotation:order=4").elements is None
    act = ActionSpec.parse("perm:dim=2;rot90=1,2,3,0;rot180=2,3,0,1")
    assert act.kind == "perm" and act.dim == 2 and act.perms == (("rot90", (1, 2, 3, 0)), ("rot180", (2, 3, 0, 1)))
    assert ActionSpec.parse("pkg.mod:fn").target == "pkg.mod:fn" and ActionSpec.parse("same").kind == "same"
    with pytest.raises(AuditError, match="not both"):
        GroupSpec.parse("so2:angles=0,30,samples=3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "so2"], "is continuous, so name the elements to measure: so2:angles="),
        (["--group", "so2:angles=0,x"], "must list finite numbers separated by commas"),
        (["--group", "so2:angles=0,nan"], "must list finite numbers"),
        (["--group", "so2:samples=0"], "samples= must be a positive integer"),
        (["--group", "so2:samples=2.5"], "samples= must be a positive integer"),
        (["--group", "rotation:order=4,angles=0,90"], "is finite and the audit measures every one of its elements"),
        (["--group", "rotation:order=4,samples=2"], "samples= is for continuous groups"),
        (["--group", "scale:angles=1"], "takes factors=... (or samples=k), not angles="),
        (["--group", "so2:factors=1"], "takes angles=... (or samples=k), not factors="),
        (["--group", "rotation:order=4,3"], "is not k=v"),
        (["--group", "rotation:order=8"], "so2"),
        (["--output-action", "nonsense"], "expected trivial, same, perm:"),
        (["--output-action", "perm:rot90=0,0"], "permutation of 0..n-1"),
        (["--output-action", "perm:rot90=1,0"], "no permutation for the elements ['rot180', 'rot270']"),
        (["--output-action", "perm:flipx=1,0"], "'flipx' is not an element of Rotation(order=4); expected one of"),
        (["--output-action", "perm:rot90=1,0;rot180=0,1,2"], "different lengths"),
        (["--output-action", "perm:dim=0;rot90=1,0"], "dim= must be an output dim"),
        (["--output-action", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--output-action", "torchinvariance:nope"], "has no attribute 'nope'"),
        (["--output-action", "same"], "does not fit the outputs of the model"),
        (["--group", "so2:angles=0,90", "--output-action", "perm:rot90=1,0"], "needs a finite group"),
        # one figure file per group: the second group's figures overwrote the first's, report.md showed them twice
        (["--group", "rotation:order=4", "--group", "rotation:order=4"], "--group 'rotation:order=4' is given twice"),
        (
            ["--group", "so2:angles=0,10.0000001", "--group", "so2:angles=0,10.0000002"],
            "would write the same figures (so2-angles0_10_elements.png)",
        ),
        # only the identity listed: the means over the other elements have nothing to average (a traceback before)
        (["--group", "so2:angles=0"], "lists only the identity of SO2"),
        (["--group", "so2:angles=0,360"], "lists only the identity of SO2"),
        (["--group", "scale:factors=1"], "or pass --include-identity"),
        # equivariant: the mean silently fell back to the identity's error, 0, "as equivariant as" the averaged model
        (
            [
                "--model",
                "torch.nn:Conv2d",
                "--model-kwargs",
                '{"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}',
                "--group",
                "so2:angles=0",
                "--output-action",
                "same",
            ],
            "lists only the identity of SO2",
        ),
    ],
)
def test_errors_say_what_was_expected_and_what_arrived(tmp_path, capsys, args, message):
    base = {
        "--model": "torchinvariance.models:MLP",
        "--model-kwargs": json.dumps({"in_shape": [1, 8, 8], "num_classes": 3, "hidden": 8}),
        "--group": "rotation:order=4",
        "--input-shape": "1,8,8",
        "--samples": "4",
        "--out": str(tmp_path / "out"),
    }
    given = set(args[::2])  # a repeated option (--group twice) is kept twice
    argv = [v for k, val in base.items() if k not in given for v in (k, val)] + list(args) + ["--no-progress"]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    assert message in err, err


def test_a_dense_model_without_an_output_action_names_the_option(tmp_path, capsys):
    rc, _, err = _run(
        capsys,
        "--model", "torch.nn:Conv2d", "--model-kwargs", '{"in_channels": 1, "out_channels": 2, "kernel_size": 1}',
        "--group", "rotation:order=4", "--input-shape", "1,8,8", "--samples", "2", "--no-progress",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert rc == 2 and "--output-action same" in err, err


def test_help_documents_the_group_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("so2:angles=0,30,45,90", "so2:samples=8", "scale:factors=0.8,1.25", "--output-action", "perm:"):
        assert text in out, text
