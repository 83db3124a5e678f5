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
