"""torchinvariance.plot: the figures draw what the metrics measure, without touching matplotlib's global state."""

import sys

import numpy as np
import pytest
import torch
from helpers import OrbitAveraged, mlp

import torchinvariance as ti

matplotlib = pytest.importorskip("matplotlib", reason='the plot extra: pip install "torchinvariance[plot]"')
from matplotlib.figure import Figure  # noqa: E402

F64 = torch.float64
ROT = ti.get_group("rotation", order=4)
CFG = ti.SaliencyConfig(n_steps=8)


@pytest.fixture(autouse=True)
def no_global_state():
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    yield
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures


def _x(b=2, seed=0):
    return torch.randn(b, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_orbit_saliency_maps_realign_and_match_saliency_map():
    model, x = mlp(36, classes=4, dtype=F64, seed=1), _x()
    images, maps = ti.plot.orbit_saliency_maps(model, ROT, x, config=CFG)
    assert images.shape == maps.shape == (4, 2, 6, 6)
    torch.testing.assert_close(images[1], torch.rot90(x[:, 0], 1, (-2, -1)))  # g x, channel-summed
    torch.testing.assert_close(maps[0], ti.saliency_map(model, x, config=CFG))  # identity: the map of x
    # row i is g_i^-1 m(g_i x), the map attributed to the class predicted on x
    target = model(x).argmax(1)
    m2 = ti.saliency_map(model, ROT.act(2, x), target=target, config=CFG)
    torch.testing.assert_close(maps[2], ROT.act(ROT.inverse(2), m2))
    assert (maps[1] - maps[0]).abs().max() > 1e-3  # a plain model: different evidence per orientation
    _, inv = ti.plot.orbit_saliency_maps(OrbitAveraged(model, ROT), ROT, x, config=CFG)
    for i in range(4):  # an exactly invariant model: the same realigned map for every element
        torch.testing.assert_close(inv[i], inv[0], atol=1e-9, rtol=1e-6)


def test_saliency_orbit_figure_shows_the_maps():
    model, x = mlp(36, classes=4, dtype=F64, seed=1), _x()
    fig = ti.plot.saliency_orbit({"DA": model, "inv": OrbitAveraged(model, ROT)}, ROT, x, config=CFG)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2 * 5  # 2 models x 2 samples rows, input + 4 elements
    _, maps = ti.plot.orbit_saliency_maps(model, ROT, x, config=CFG)
    background, heat = fig.axes[3].images  # row 0, element rot180: the input in grey, the map over it
    np.testing.assert_allclose(background.get_array(), x[0, 0].numpy())
    m = maps[2, 0].numpy()
    drawn = heat.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(drawn), m <= 0)  # only the salient pixels are coloured
    np.testing.assert_allclose(np.ma.filled(drawn, 0.0), np.where(m > 0, m, 0.0))
    assert (m > 0).any() and (m <= 0).any()  # the check sees both drawn and masked pixels
    assert fig.axes[3].get_title().endswith("rot180")
    assert fig.axes[5].get_ylabel() == "DA\nsample 1"


def test_drift_curve_and_figure():
    model = mlp(36, classes=4, dtype=F64, seed=2)
    x, y = _x(b=8, seed=3), torch.randint(4, (8,), generator=torch.Generator().manual_seed(0))
    inputs = {0.0: (x, y), 0.5: (0.5 * x + 0.5, y), 1.0: x.flip(0)}
    curve = ti.plot.drift_curve(model, ROT, inputs)
    with torch.no_grad():
        di = [
            ti.distribution_invariance(model, ROT, v[0] if isinstance(v, tuple) else v).item() for v in inputs.values()
        ]
        acc = [(model(v[0]).argmax(1) == y).double().mean().item() for v in list(inputs.values())[:2]]
    np.testing.assert_allclose([p["di"] for p in curve], di, rtol=1e-12)
    np.testing.assert_allclose([p["acc"] for p in curve[:2]], acc)
    assert curve[0]["acc_ratio"] == 1.0 and "acc" not in curve[2]  # no labels: no accuracy
    fig = ti.plot.drift({"DA": curve, "WT": [{"beta": 0.0, "di": 0.0}, {"beta": 1.0, "di": 0.0}]}, title="R4")
    ax, twin = fig.axes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), di)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.0, 0.0])
    np.testing.assert_allclose(twin.lines[0].get_xdata(), [0.0, 0.5])  # the points with an accuracy ratio
    assert ax.get_title() == "R4"
    mine = Figure()
    axes = mine.subplots(1, 2)
    assert ti.plot.drift({"DA": curve}, ax=axes[1], y2=None) is mine and len(mine.axes) == 2  # no twin


def test_spectral_bars():
    model = mlp(36, classes=4, dtype=F64, seed=4)
    x = _x(b=5, seed=5)
    sigma = ti.jacobian_spectral_norm(model, x)
    fig = ti.plot.spectral({"model": model, "values": sigma, "summary": {"mean": 2.0, "std": 0.5}, "one": 1.5}, x)
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [sigma.mean(), sigma.mean(), 2.0, 1.5], rtol=1e-12)
    with pytest.raises(ValueError, match="pass x="):
        ti.plot.spectral({"model": model})


def test_clear_errors_without_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"torchinvariance\[plot\]"):
        ti.plot.drift({"DA": [{"beta": 0.0, "di": 0.0}]})
    report = ti.InvarianceReport("g", 1, ["e", "g"], {"li": {"mean": 0.0, "std": 0.0, "per_element": [0.0, 0.0]}})
    with pytest.raises(ImportError, match=r"torchinvariance\[plot\]"):
        report.plot()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"torchinvariance\[pandas\]"):
        report.to_pandas()
