"""torchinvariance.plot: the figures draw what the metrics measure, without touching matplotlib's global state."""

import math
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


# ---- the symmetry spectrum and the smallest flips ---------------------------------------------------------------


def _spectrum(seed=0, scale=1.0):
    model = mlp(36, classes=3, dtype=F64, seed=seed)
    return ti.discover_symmetries(lambda z: scale * model(z), _x(b=6, seed=seed))


def _flips(magnitude, direction, unit="degrees", max_magnitude=180.0):
    """A FlipResult by hand: ``element`` from the magnitude and direction as smallest_flip defines it."""
    mag = torch.tensor(magnitude, dtype=F64)
    d = torch.tensor(direction)
    if unit == "degrees":
        element = torch.where(d > 0, mag, 360.0 - mag)
    elif unit == "log-scale":
        element = (d * mag).exp()
    else:
        element = torch.where(d > 0, mag, 8 - mag)  # a cyclic group of order 8
    element = torch.where(torch.isfinite(mag), element, torch.full_like(mag, float("nan")))
    b = mag.numel()
    return ti.FlipResult(
        mag,
        element,
        d,
        torch.zeros(b, dtype=torch.long),
        (d != 0).long() - (d == 0).long(),
        unit,
        float(max_magnitude),
        0.0 if unit == "steps" else 1e-3,
    )


def test_symmetry_spectrum_bars_are_the_singular_values_labelled_by_the_nearest_generator():
    spec = _spectrum()
    fig = ti.plot.symmetry_spectrum(spec)
    ax = fig.axes[0]
    assert len(ax.patches) == 6
    np.testing.assert_allclose([p.get_height() for p in ax.patches], spec.singular_values.numpy(), rtol=1e-12)
    assert ax.get_yscale() == "log"  # every value positive
    names = {"rotation": "rotation", "scaling": "scaling", "translation": "shift"}
    for i, tick in enumerate(ax.get_xticklabels()):  # the nearest reference recomputed from the distances
        d = {k: float(spec.distances[k][i]) for k in names}
        best = min(d, key=d.get)
        assert tick.get_text() == f"s{i + 1}\n{names[best]}\nd={d[best]:.2f}"
    assert ax.get_legend() is None  # one spectrum: the ticks say it all
    assert [p.get_height() for p in spec.plot().axes[0].patches] == [p.get_height() for p in ax.patches]


def test_symmetry_spectrum_side_by_side_and_relative():
    a, b = _spectrum(0), _spectrum(1, scale=10.0)
    fig = ti.plot.symmetry_spectrum({"A": a, "B": b}, relative=True)
    ax = fig.axes[0]
    assert len(ax.patches) == 12
    heights = np.array([p.get_height() for p in ax.patches])
    np.testing.assert_allclose(heights[:6], (a.singular_values / a.singular_values[-1]).numpy(), rtol=1e-12)
    np.testing.assert_allclose(heights[6:], (b.singular_values / b.singular_values[-1]).numpy(), rtol=1e-12)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0].startswith("A: s1 ~ ") and texts[1].startswith("B: s1 ~ ")
    assert ax.get_ylabel() == "symmetry variance / largest"
    # the legend is below the panel, outside the data
    assert ax.get_legend().get_bbox_to_anchor().y0 < ax.get_window_extent().y0 + 1


def test_symmetry_spectrum_with_an_exact_invariance_uses_a_linear_axis():
    lie = torch.zeros(4, 2, 6, dtype=F64)
    lie[..., 0] = torch.randn(4, 2, dtype=F64)  # only E_00 varies: five exactly invariant directions
    spec = ti.SymmetrySpectrum.from_lie_derivatives(lie)
    assert ti.plot.symmetry_spectrum(spec).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="log=True needs positive singular values"):
        ti.plot.symmetry_spectrum(spec, log=True)


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ([1.0, 2.0], r"SymmetrySpectrum.*got list"),
        ({}, "got an empty mapping"),
        ({"A": "not a spectrum"}, r"\{'A': 'str'\}"),
    ],
)
def test_symmetry_spectrum_bad_input(arg, match):
    with pytest.raises(TypeError, match=match):
        ti.plot.symmetry_spectrum(arg)


def test_flip_histogram_so2_counts_the_signed_angles_and_the_never_flipped():
    inf = float("inf")
    flips = _flips([3.0, 12.0, 12.5, inf, 30.0, 1.0, inf], [1, -1, 1, 0, -1, -1, 0])
    fig = ti.plot.flip_histogram(flips, bins=12)
    ax = fig.axes[0]
    (stairs,) = ax.patches
    values, edges = stairs.get_data().values, stairs.get_data().edges
    np.testing.assert_allclose(edges, np.linspace(-30, 30, 13))  # the round range holding the flips found
    expected, _ = np.histogram([3.0, -12.0, 12.5, -30.0, -1.0], bins=edges)  # the samples that flip, signed
    np.testing.assert_array_equal(values, expected)
    assert values.sum() == 5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["5 of 7 flip, 2 never"]
    assert ax.get_xlabel() == "signed angle of the smallest flip (degrees)"
    assert "180 degrees" in ax.get_title()  # the range searched
    np.testing.assert_array_equal(flips.plot(bins=12).axes[0].patches[0].get_data().values, values)


def test_flip_histogram_scale_bins_the_factors_on_a_log_axis():
    flips = _flips([0.1, 0.3, float("inf"), 0.05], [1, -1, 0, 1], unit="log-scale", max_magnitude=math.log(2))
    ax = ti.plot.flip_histogram(flips, bins=8).axes[0]
    values, edges = ax.patches[0].get_data().values, ax.patches[0].get_data().edges
    np.testing.assert_allclose(edges, np.geomspace(1 / 1.5, 1.5, 9))
    expected, _ = np.histogram(flips.element[flips.flipped].numpy(), bins=edges)  # the flipping factors
    np.testing.assert_array_equal(values, expected)
    assert values.sum() == 3 and ax.get_xscale() == "log"
    assert ax.get_xlabel() == "scale factor of the smallest flip"


def test_flip_histogram_cyclic_has_one_bar_per_signed_step_and_overlays_models():
    inf = float("inf")
    a = _flips([1.0, 1.0, 2.0, inf, 3.0], [1, -1, 1, 0, -1], unit="steps", max_magnitude=4)
    b = _flips([inf, inf, 4.0, inf, 1.0], [0, 0, 1, 0, 1], unit="steps", max_magnitude=4)
    ax = ti.plot.flip_histogram({"DA": a, "WT": b}).axes[0]
    ks = [-4, -3, -2, -1, 1, 2, 3, 4]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{k:+d}" for k in ks]
    assert len(ax.patches) == 2 * len(ks)
    for r, bars in ((a, ax.patches[:8]), (b, ax.patches[8:])):
        signed = [int(d * m) for d, m in zip(r.direction.tolist(), r.magnitude.tolist()) if d != 0]
        assert [p.get_height() for p in bars] == [signed.count(k) for k in ks]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "DA: 4 of 5 flip, 1 never",
        "WT: 2 of 5 flip, 3 never",
    ]


def test_flip_histogram_overlays_continuous_results_and_rejects_bad_input():
    a = _flips([10.0, 20.0], [1, 1])
    b = _flips([5.0, float("inf")], [-1, 0])
    ax = ti.plot.flip_histogram({"A": a, "B": b}).axes[0]
    assert len(ax.patches) == 4  # each model: a translucent fill and its outline
    assert len(ax.get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match=r"one unit.*'A': 'degrees', 'S': 'steps'"):
        ti.plot.flip_histogram({"A": a, "S": _flips([1.0], [1], unit="steps", max_magnitude=4)})
    with pytest.raises(ValueError, match="bins must be a positive int"):
        ti.plot.flip_histogram(a, bins=0)
    with pytest.raises(TypeError, match=r"FlipResult.*got Tensor"):
        ti.plot.flip_histogram(a.magnitude)
    with pytest.raises(TypeError, match=r"\{'A': 'SymmetrySpectrum'\}"):
        ti.plot.flip_histogram({"A": _spectrum()})


@pytest.mark.parametrize(
    ("unit", "max_magnitude"), [("degrees", 180.0), ("log-scale", float(np.log(2.0))), ("steps", 4)]
)
def test_flip_histogram_where_nothing_flips_has_a_count_axis_from_zero(unit, max_magnitude):
    """No sample flips (a robust model): the count axis ran from -0.05 to 0.05 with ticks -0.045, -0.030, ..."""
    inf = float("inf")
    ax = ti.plot.flip_histogram(_flips([inf, inf, inf], [0, 0, 0], unit=unit, max_magnitude=max_magnitude)).axes[0]
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    assert low == 0.0 and high >= 1.0, (low, high)
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert ticks and all(t >= 0 and float(t).is_integer() for t in ticks), ticks
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0 of 3 flip, 3 never"]


def test_flip_histogram_of_a_real_search():
    model = mlp(36, classes=4, dtype=F64, seed=3)
    flips = ti.smallest_flip(model, ROT, _x(b=10, seed=2))
    ax = flips.plot().axes[0]
    assert sum(p.get_height() for p in ax.patches) == int(flips.flipped.sum())
    assert f"{int(flips.flipped.sum())} of 10 flip" in ax.get_legend().get_texts()[0].get_text()
