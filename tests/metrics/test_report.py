"""evaluate_invariance / InvarianceReport: JSON-safe dict in the CONTRACT format, matches the functional metrics."""

import json

import numpy as np
import pytest
import torch
from helpers import mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchinvariance as ti

F64 = torch.float64
GROUP = ti.get_group("rotation", order=4)


def _loader(sizes=(4, 3, 5), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 1, 6, 6, generator=g, dtype=F64), torch.randint(classes, (b,), generator=g)) for b in sizes]


def test_report_matches_functional_metrics_and_is_json_safe():
    model = mlp(36, classes=4, dtype=F64, seed=4)
    loader = _loader()
    all_metrics = ("accuracy", "di", "li", "si")
    report = ti.evaluate_invariance(model, GROUP, loader, metrics=all_metrics, progress=False, n_steps=4)
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert list(d) == ["group", "n_samples", "elements", "include_identity", "accuracy", "di", "li", "si"]
    assert d["include_identity"] is False
    assert d["group"] == "Rotation(order=4)"
    assert d["n_samples"] == 12 and isinstance(d["n_samples"], int)
    assert d["elements"] == ["rot0", "rot90", "rot180", "rot270"]
    assert list(d["accuracy"]) == ["mean", "per_element"]
    for name in ("di", "li", "si"):
        assert list(d[name]) == ["mean", "std", "per_element"]
        assert all(type(v) is float for v in [d[name]["mean"], d[name]["std"], *d[name]["per_element"]])

    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader]).numpy()
    with torch.no_grad():
        terms = {
            "di": ti.distribution_invariance(model, GROUP, x, reduction="none").numpy(),
            "li": ti.logit_invariance(model, GROUP, x, reduction="none").numpy(),
        }
        correct = np.stack([(model(GROUP.act(g, x)).argmax(1).numpy() == y) for g in GROUP.elements()])
    terms["si"] = ti.saliency_invariance(model, GROUP, x, n_steps=4, reduction="none").numpy()
    for name, t in terms.items():  # means and stds over the non-identity elements; per element: all of them
        np.testing.assert_allclose(d[name]["mean"], t[1:].mean(), rtol=1e-9)
        np.testing.assert_allclose(d[name]["per_element"], t.mean(1), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(d[name]["std"], t[1:].mean(0).std(), rtol=1e-7)
    np.testing.assert_allclose(d["accuracy"]["per_element"], correct.mean(1), rtol=1e-12)
    np.testing.assert_allclose(d["accuracy"]["mean"], correct.mean(), rtol=1e-12)  # accuracy: over all elements
    assert d["di"]["per_element"][0] == 0.0 and d["li"]["per_element"][0] == 0.0

    text = str(report)
    assert "Rotation(order=4), 12 samples" in text
    for token in ("accuracy", "DI", "LI", "SI", "rot270", "mean", "std"):
        assert token in text
    assert f"{d['accuracy']['per_element'][1]:.4f}" in text
    assert "(means over the 3 non-identity elements; accuracy over all 4)" in text

    # include_identity=True: the means over all elements, as before issue 10 item 9; per element unchanged
    full = ti.evaluate_invariance(
        model, GROUP, loader, metrics=all_metrics, progress=False, n_steps=4, include_identity=True
    ).to_dict()
    assert full["include_identity"] is True
    for name, t in terms.items():
        np.testing.assert_allclose(full[name]["mean"], t.mean(), rtol=1e-9)
        np.testing.assert_allclose(full[name]["std"], t.mean(0).std(), rtol=1e-7)
        assert full[name]["per_element"] == d[name]["per_element"]
    assert full["accuracy"] == d["accuracy"]


def test_top1_consistency():
    model = mlp(36, classes=4, dtype=F64, seed=7)
    loader = _loader(sizes=(6, 5))
    d = ti.evaluate_invariance(model, GROUP, loader, metrics=("consistency",), progress=False).to_dict()
    x = torch.cat([b[0] for b in loader])
    with torch.no_grad():
        top1 = np.stack([model(GROUP.act(g, x)).argmax(1).numpy() for g in GROUP.elements()])
    same = top1 == top1[:1]
    assert list(d["consistency"]) == ["mean", "orbit", "per_element"]
    np.testing.assert_allclose(d["consistency"]["per_element"], same.mean(1), rtol=1e-12)
    np.testing.assert_allclose(d["consistency"]["mean"], same[1:].mean(), rtol=1e-12)
    np.testing.assert_allclose(d["consistency"]["orbit"], same.all(0).mean(), rtol=1e-12)
    assert d["consistency"]["per_element"][0] == 1.0 and 0 < d["consistency"]["mean"] < 1  # not vacuous
    from helpers import OrbitAveraged

    invariant = OrbitAveraged(model, GROUP)
    d = ti.evaluate_invariance(invariant, GROUP, loader, metrics=("consistency",), progress=False).to_dict()
    assert d["consistency"]["orbit"] == 1.0 and d["consistency"]["mean"] == 1.0


def test_to_pandas_and_plot():
    pd = pytest.importorskip("pandas")
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = mlp(36, classes=4, dtype=F64, seed=4)
    report = ti.evaluate_invariance(model, GROUP, _loader(), metrics=("accuracy", "di", "li"), progress=False)
    frame = report.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == report.elements and list(frame.columns) == ["accuracy", "di", "li"]
    assert frame["li"].tolist() == report.results["li"]["per_element"]
    assert frame.attrs["mean"]["li"] == report.results["li"]["mean"] and frame.attrs["n_samples"] == 12

    backend = matplotlib.get_backend()
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = report.plot()
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["DI", "LI"]  # accuracy is left out by default
    bars = [p.get_height() for p in fig.axes[1].patches]
    np.testing.assert_allclose(bars, report.results["li"]["per_element"])
    assert fig.axes[1].patches[0].get_hatch() == "//"  # the identity: not in the mean
    fig = report.plot(["accuracy"], references={"again": report})
    assert len(fig.axes[0].patches) == 2 * len(report.elements)
    assert plt.get_fignums() == before and matplotlib.get_backend() == backend  # no global state changed
    with pytest.raises(ValueError, match="metrics must be"):
        report.plot(["si"])


def test_torch_dataloader_subset_of_metrics_and_bare_tensors():
    model = mlp(36, classes=4, seed=5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 1, 6, 6, generator=g), torch.randint(4, (10,), generator=g)
    report = ti.evaluate_invariance(
        model, GROUP, DataLoader(TensorDataset(x, y), batch_size=4), metrics=["accuracy"], progress=False
    )
    assert list(report.to_dict()) == ["group", "n_samples", "elements", "include_identity", "accuracy"]
    assert report.n_samples == 10
    bare = [x[:6], x[6:]]
    report = ti.evaluate_invariance(model, GROUP, bare, metrics=("li", "di"), progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(
            report.to_dict()["li"]["mean"], ti.logit_invariance(model, GROUP, x).item(), rtol=1e-6
        )
    assert list(report.results) == ["li", "di"]
    with pytest.raises(ValueError, match="needs labels"):
        ti.evaluate_invariance(model, GROUP, bare, metrics=("accuracy",), progress=False)


def test_exactly_invariant_model_report():
    from helpers import OrbitAveraged

    model = OrbitAveraged(mlp(36, classes=4, dtype=F64, seed=6), GROUP)
    d = ti.evaluate_invariance(
        model, GROUP, _loader(sizes=(3, 3)), metrics=("accuracy", "di", "li", "si"), progress=False, n_steps=4
    ).to_dict()
    assert max(d["di"]["per_element"]) <= 1e-6 and max(d["li"]["per_element"]) <= 1e-6
    assert min(d["si"]["per_element"]) >= 1 - 1e-5
    assert len(set(d["accuracy"]["per_element"])) == 1  # same predictions on every orbit element


def test_max_batches_mode_device_and_progress(capsys):
    seen_training = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(36, classes=4, dtype=F64)

        def forward(self, x):
            seen_training.append(self.training)
            return self.net(x)

    def loader():
        yield from _loader(sizes=(2, 2))
        raise AssertionError("read past max_batches")

    model = Spy().train()
    report = ti.evaluate_invariance(model, GROUP, loader(), metrics=("accuracy", "li"), max_batches=2, progress=True)
    assert report.n_samples == 4
    assert model.training and seen_training and not any(seen_training)  # eval() during, restored after
    assert "invariance" in capsys.readouterr().err  # tqdm bar on stderr
    ti.evaluate_invariance(model, GROUP, _loader(sizes=(2,)), metrics=("li",), device="cpu", progress=False)
    assert capsys.readouterr().err == ""


def test_errors():
    model = mlp(36, classes=4, dtype=F64)
    with pytest.raises(ValueError, match="no batches"):
        ti.evaluate_invariance(model, GROUP, [], progress=False)
    with pytest.raises(ValueError, match="metrics must be"):
        ti.evaluate_invariance(model, GROUP, _loader(), metrics=("acc",), progress=False)
    with pytest.raises(ValueError, match="metrics must be"):
        ti.evaluate_invariance(model, GROUP, _loader(), metrics=("li", "li"), progress=False)
    with pytest.raises(ValueError, match="metrics must be"):
        ti.evaluate_invariance(model, GROUP, _loader(), metrics=(), progress=False)
    with pytest.raises(TypeError, match="unknown saliency options"):
        ti.evaluate_invariance(model, GROUP, _loader(), nsteps=4, progress=False)
    with pytest.raises(ValueError, match="max_batches"):
        ti.evaluate_invariance(model, GROUP, _loader(), max_batches=0, progress=False)
    with pytest.raises(ValueError, match="square"):
        ti.evaluate_invariance(
            mlp(24, dtype=F64), GROUP, [torch.randn(2, 1, 6, 4, dtype=F64)], metrics=("li",), progress=False
        )
    with pytest.raises(TypeError, match="tuples/lists or bare x tensors"):
        ti.evaluate_invariance(model, GROUP, [{"x": 1}], progress=False)
    with pytest.raises(ValueError, match="labels must be class indices"):
        ti.evaluate_invariance(
            model,
            GROUP,
            [(torch.randn(2, 1, 6, 6, dtype=F64), torch.zeros(2, 4))],
            metrics=("accuracy",),
            progress=False,
        )
    nan_model = nn.Sequential(mlp(36, classes=4, dtype=F64), nn.Threshold(1e9, float("nan")))
    with pytest.raises(ValueError, match=r"NaN or \+?Inf"):
        ti.evaluate_invariance(nan_model, GROUP, _loader(), progress=False)


class _Rounded(nn.Module):
    """Integer logits (a quantized classifier): ``round(100 f(x))`` as int64."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.f = mlp(36, classes=classes, dtype=F64)

    def forward(self, x):
        return (100 * self.f(x)).round().long()


@pytest.mark.parametrize(("name", "elements"), [("rotation", None), ("so2", [0.0, 30.0, 90.0])])
def test_integer_logits_are_measured_as_their_float64_values(name, elements):
    """DI raised log_softmax's NotImplementedError for 'Long'; now every metric (and floor) is that of the floats."""
    torch.manual_seed(0)
    model = _Rounded().eval()
    group = ti.get_group(name, **({"order": 4} if name == "rotation" else {}))
    data = _loader()
    metrics = ("accuracy", "consistency", "di", "li")
    got = ti.evaluate_invariance(model, group, data, metrics=metrics, elements=elements, progress=False)
    want = ti.evaluate_invariance(
        lambda x: model(x).double(), group, data, metrics=metrics, elements=elements, progress=False
    )
    assert got.to_dict() == want.to_dict()
    assert got.to_dict()["di"]["mean"] > 0


@pytest.mark.parametrize("metric", ["di", "consistency", "worst"])
def test_one_logit_per_sample_is_refused_by_the_class_metrics(metric):
    """One class: DI was 0 and consistency 1 whatever the model, worst-of-k the accuracy; LI still measures."""
    model = mlp(36, classes=1, dtype=F64)
    with pytest.raises(ValueError, match=r"need logits of at least 2 classes; got 1 output per sample"):
        ti.evaluate_invariance(model, GROUP, _loader(), metrics=(metric,), progress=False)
    li = ti.evaluate_invariance(model, GROUP, _loader(), metrics=("li",), progress=False)
    assert li.to_dict()["li"]["mean"] > 0


# ------------------------------------------------------------------ elements= and continuous groups (issue 20)
def _per_element_loop(model, group, x, y, elements):
    """An explicit loop over the elements and the samples, in float64: every term of every metric and floor."""
    out = {k: [] for k in ("accuracy", "consistency", "di", "li", "di_floor", "li_floor")}
    with torch.no_grad():
        fx = model(x)
        for g in elements:
            fgx = model(group.act(g, x))
            back = model(group.act(group.inverse(g), group.act(g, x)))
            rows = {k: [] for k in out}
            for b in range(x.shape[0]):
                p = torch.softmax(fx[b], -1)
                rows["accuracy"].append(float(fgx[b].argmax() == y[b]))
                rows["consistency"].append(float(fgx[b].argmax() == fx[b].argmax()))
                for name, other in (("", fgx[b]), ("_floor", back[b])):
                    q = torch.softmax(other, -1)
                    rows["li" + name].append(0.5 * float(((fx[b] - other) ** 2).sum()))
                    rows["di" + name].append(float((p * (p.log() - q.log())).sum()))
            for k in out:
                out[k].append(rows[k])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize(
    ("spec", "elements", "seed"),
    [
        (("so2", {}), [0.0, 30.0, 45.0, 90.0, 250.0], 0),  # the identity listed: shown, left out of the means
        (("so2", {}), 6, 3),
        (("scale", {"min_scale": 0.7}), 4, 1),
        (("rotation", {"order": 4}), [3, 1], 0),
        (("dihedral", {}), 3, 2),
    ],
)
def test_report_on_elements_matches_an_explicit_per_element_loop(spec, elements, seed):
    group = ti.get_group(spec[0], **spec[1])
    model = mlp(36, classes=4, dtype=F64, seed=2)
    loader = _loader()
    metrics = ("accuracy", "consistency", "di", "li")
    report = ti.evaluate_invariance(model, group, loader, metrics=metrics, elements=elements, seed=seed, progress=False)
    if isinstance(elements, int):
        expected = ti.LogitInvariance(model, group, elements=elements, seed=seed).elements
        assert len(expected) == elements
    else:
        expected = [group.check_element(g) for g in elements]
    assert report.elements == [group.element_name(g) for g in expected]
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    ref = _per_element_loop(model, group, x, y, expected)
    averaged = np.array([not group.same_element(g, group.identity) for g in expected])
    for name in metrics:
        np.testing.assert_allclose(d[name]["per_element"], ref[name].mean(1), rtol=1e-9, atol=1e-15)
        rows = ref[name] if name == "accuracy" else ref[name][averaged]
        np.testing.assert_allclose(d[name]["mean"], rows.mean(), rtol=1e-9)
    for name in ("di", "li"):
        np.testing.assert_allclose(d[name]["std"], ref[name][averaged].mean(0).std(), rtol=1e-7)
    if group.exact:  # no floor for exact groups (the round trip is the identity)
        assert "floor" not in d["li"] and "element_values" not in d
        assert "floor" not in str(report)
    else:
        assert d["element_values"] == pytest.approx([float(g) for g in expected])
        for name in ("di", "li"):
            np.testing.assert_allclose(d[name]["floor"]["per_element"], ref[name + "_floor"].mean(1), rtol=1e-9)
            np.testing.assert_allclose(d[name]["floor"]["mean"], ref[name + "_floor"][averaged].mean(), rtol=1e-9)
        assert ref["li_floor"][averaged].min() > 0  # resampling is not exact: the floor is measured, not assumed
        assert "LI floor" in str(report) and "round trip" in str(report)
    assert ref["li"][averaged].min() > 1e-8  # the model is not invariant: a wrong row or element would be seen
    assert d.get("averaged", [True] * len(expected)) == averaged.tolist()  # elements asked for: all by default
    assert f"(means over the {averaged.sum()} non-identity elements" in str(report)


def test_report_on_so2_is_reproducible_and_fails_for_a_model_invariant_to_quarter_turns_only():
    so2 = ti.get_group("so2")
    from helpers import OrbitAveraged

    quarter = OrbitAveraged(mlp(36, classes=4, dtype=F64, seed=8), ti.get_group("rotation", order=4))
    loader = [so2.mask_input(b[0]) for b in _loader()]
    report = ti.evaluate_invariance(quarter, so2, loader, metrics=("li",), elements=[45.0, 90.0, 180.0, 270.0])
    li = report.to_dict()["li"]
    assert max(li["per_element"][1:]) < 1e-12 < li["per_element"][0]  # exact at multiples of 90 degrees only
    assert li["per_element"][0] > 1.5 * li["floor"]["per_element"][0]  # 45 degrees: above what resampling explains
    again = ti.evaluate_invariance(quarter, so2, loader, metrics=("li",), elements=5, seed=4, progress=False)
    assert (
        again.to_dict()
        == ti.evaluate_invariance(quarter, so2, loader, metrics=("li",), elements=5, seed=4, progress=False).to_dict()
    )
    assert (
        again.elements
        != ti.evaluate_invariance(quarter, so2, loader, metrics=("li",), elements=5, seed=5, progress=False).elements
    )
    skipped = ti.evaluate_invariance(quarter, so2, loader, metrics=("li",), elements=[45.0], floor=False)
    assert "floor" not in skipped.to_dict()["li"]
    exact = ti.evaluate_invariance(quarter, ti.get_group("flip"), loader, metrics=("li",), floor=True).to_dict()
    assert exact["li"]["floor"]["per_element"] == [0.0, 0.0]


def test_report_si_on_so2_elements_matches_the_functional_form():
    so2 = ti.get_group("so2")
    model = mlp(36, classes=4, dtype=F64, seed=9)
    loader = _loader(sizes=(3, 2))
    angles = [30.0, 90.0]
    d = ti.evaluate_invariance(
        model, so2, loader, metrics=("si",), elements=angles, progress=False, n_steps=4, padding="zeros"
    ).to_dict()
    x = torch.cat([b[0] for b in loader])
    terms = ti.saliency_invariance(model, so2, x, n_steps=4, padding="zeros", elements=angles, reduction="none")
    np.testing.assert_allclose(d["si"]["per_element"], terms.mean(1).numpy(), rtol=1e-9)
    assert "floor" not in d["si"]


def test_continuous_report_pandas_and_plot_against_the_angle(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    so2 = ti.get_group("so2")
    model = mlp(36, classes=4, dtype=F64, seed=2)
    angles = [0.0, 90.0, 30.0, 200.0]  # unsorted, the identity listed
    report = ti.evaluate_invariance(model, so2, _loader(), metrics=("di", "li"), elements=angles, progress=False)
    frame = report.to_pandas()
    assert list(frame.columns) == ["value", "di", "di_floor", "li", "li_floor"]
    assert (
        frame["value"].tolist() == angles and frame["li_floor"].tolist() == report.results["li"]["floor"]["per_element"]
    )
    fig = report.plot()
    assert [ax.get_title() for ax in fig.axes] == ["DI", "LI"]
    ax = fig.axes[1]
    assert ax.get_xlabel() == "rotation angle (degrees)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    order = np.argsort(angles)
    np.testing.assert_allclose(lines["model"].get_xdata(), np.array(angles)[order])
    np.testing.assert_allclose(lines["model"].get_ydata(), np.array(report.results["li"]["per_element"])[order])
    np.testing.assert_allclose(
        lines["interpolation floor"].get_ydata(), np.array(report.results["li"]["floor"]["per_element"])[order]
    )
    assert lines["interpolation floor"].get_linestyle() == "--"
    hollow = ax.collections[0].get_offsets()  # the identity, left out of the mean: a hollow marker
    np.testing.assert_allclose(np.asarray(hollow), [[0.0, report.results["li"]["per_element"][0]]])
    fig.savefig(tmp_path / "li_vs_angle.png")
    other = ti.evaluate_invariance(model.double(), so2, _loader(seed=1), metrics=("li",), elements=angles)
    fig = ti.plot.metric_vs_element({"a": report, "b": other}, "li")
    assert [line.get_label() for line in fig.axes[0].get_lines()][:3] == [
        "a",
        "mean " + format(report.results["li"]["mean"], ".3g"),
        "interpolation floor (a)",
    ]
    assert "b" in [line.get_label() for line in fig.axes[0].get_lines()]
    with pytest.raises(ValueError, match="no element values"):
        ti.plot.metric_vs_element(ti.evaluate_invariance(model, GROUP, _loader(), metrics=("li",), progress=False))
    with pytest.raises(ValueError, match="has no metric 'si'"):
        ti.plot.metric_vs_element(report, "si")


def test_elements_errors_come_before_any_batch():
    model = mlp(36, classes=4, dtype=F64)

    def loader():
        raise AssertionError("the loader was read before the arguments were checked")
        yield

    so2 = ti.get_group("so2")
    with pytest.raises(ValueError, match="continuous: pass elements="):
        ti.evaluate_invariance(model, so2, loader(), progress=False)
    with pytest.raises(ValueError, match=r"elements 0\.\.3"):
        ti.evaluate_invariance(model, GROUP, loader(), elements=[7], progress=False)
    with pytest.raises(ValueError, match="k >= 1"):
        ti.evaluate_invariance(model, so2, loader(), elements=0, progress=False)
    with pytest.raises(ValueError, match="only 3"):
        ti.evaluate_invariance(model, GROUP, loader(), elements=4, progress=False)
    with pytest.raises(ValueError, match="seed must be"):
        ti.evaluate_invariance(model, so2, loader(), elements=2, seed=-1, progress=False)
    with pytest.raises(TypeError, match="floor must be"):
        ti.evaluate_invariance(model, so2, loader(), elements=2, floor="yes", progress=False)
    with pytest.raises(TypeError, match="elements must be None"):
        ti.evaluate_invariance(model, so2, loader(), elements=2.0, progress=False)
