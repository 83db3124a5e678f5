"""evaluate_invariance's robustness metrics ("worst", "flip", "discover"): the same numbers as calling worst_case,
smallest_flip and discover_symmetries on all the data at once, and an explicit loop for the worst case."""

import json
import math

import pytest
import torch
from helpers import OrbitAveraged, Reverse, mlp

import torchinvariance as ti

F64 = torch.float64
ROBUST = ("worst", "flip", "discover")


def _data(sizes=(4, 3, 5), size=8, classes=4, seed=0, disk=False):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in sizes:
        x = torch.nn.functional.avg_pool2d(torch.randn(b, 1, size, size, generator=g, dtype=F64), 3, 1, 1)
        if disk:
            x = ti.get_group("so2").mask_input(x)
        batches.append((x, torch.randint(classes, (b,), generator=g)))
    return batches


def _all(batches):
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _loop_robust(model, group, x, y, elements):
    """Worst-of-k correctness written out: one sample and one element at a time."""
    robust = []
    for b in range(x.shape[0]):
        preds = [int(model(group.act(g, x[b : b + 1])).argmax(1)) for g in elements]
        robust.append(all(p == int(y[b]) for p in preds))
    return torch.tensor(robust)


def _same_worst(report_worst, direct):
    for f in ("correct", "margins", "clean_correct", "robust", "worst_index"):
        torch.testing.assert_close(getattr(report_worst, f), getattr(direct, f), rtol=1e-12, atol=1e-12)
    assert report_worst.elements == direct.elements and report_worst.worst_element == direct.worst_element


def _same_flips(report_flips, direct):
    for f in ("magnitude", "element", "direction", "prediction", "new_prediction"):
        torch.testing.assert_close(getattr(report_flips, f), getattr(direct, f), equal_nan=True)
    assert (report_flips.unit, report_flips.max_magnitude, report_flips.tol) == (
        direct.unit,
        direct.max_magnitude,
        direct.tol,
    )


def _same_spectrum(report_spectrum, direct):
    torch.testing.assert_close(report_spectrum.lie_derivatives, direct.lie_derivatives, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(report_spectrum.singular_values, direct.singular_values, rtol=1e-10, atol=1e-12)
    for k, v in direct.distances.items():
        torch.testing.assert_close(report_spectrum.distances[k], v, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "group",
    [ti.get_group("rotation", order=4), ti.get_group("translation", order=4, axis="x"), ti.get_group("flip")],
    ids=["rotation4", "translation4", "flip"],
)
def test_finite_group_every_element_matches_the_direct_calls(group):
    model = mlp(64, classes=4, dtype=F64, seed=1)
    batches = _data()
    report = ti.evaluate_invariance(model, group, batches, metrics=("accuracy", "li", *ROBUST), progress=False)
    x, y = _all(batches)
    every = list(group.elements())
    assert report.worst_case.elements == every  # every element of the finite group, identity first
    _same_worst(report.worst_case, ti.worst_case(model, group, x, y))
    assert torch.equal(report.worst_case.robust, _loop_robust(model, group, x, y, every))
    _same_flips(report.flips, ti.smallest_flip(model, group, x))
    _same_spectrum(report.spectrum, ti.discover_symmetries(model, x))
    assert report.n_samples == 12
    # the per-element metrics of the same call are those of a call without the robustness metrics
    plain = ti.evaluate_invariance(model, group, batches, metrics=("accuracy", "li"), progress=False)
    assert report.results == plain.results
    # the worst-of-k accuracy is below every element's accuracy, and the accuracy per element is the report's
    d = json.loads(json.dumps(report.to_dict()))
    assert d["worst"]["per_element"] == pytest.approx(report.results["accuracy"]["per_element"], abs=1e-12)
    assert d["worst"]["worst_case_accuracy"] <= min(d["worst"]["per_element"])
    assert d["worst"]["accuracy"] == pytest.approx(float((model(x).argmax(1) == y).double().mean()))
    assert d["flip"] == ti.smallest_flip(model, group, x).to_dict()
    assert d["discover"]["singular_values"] == pytest.approx(report.spectrum.singular_values.tolist())
    assert [n for n, _ in d["discover"]["nearest"]] == [n for n, _ in report.spectrum.nearest()]


@pytest.mark.parametrize("elements", [[0.0, 30.0, 45.0, 90.0, 200.0], 5], ids=["list", "drawn"])
def test_so2_over_the_measured_elements_matches_the_direct_calls(elements):
    so2 = ti.get_group("so2")
    model = mlp(64, classes=3, dtype=F64, seed=2)
    batches = _data(classes=3, disk=True, seed=3)
    report = ti.evaluate_invariance(model, so2, batches, metrics=ROBUST, elements=elements, progress=False)
    x, y = _all(batches)
    measured = report.element_values
    assert len(measured) == (elements if isinstance(elements, int) else len(elements))
    direct = ti.worst_case(model, so2, x, y, elements=measured)
    _same_worst(report.worst_case, direct)
    assert torch.equal(report.worst_case.robust, _loop_robust(model, so2, x, y, measured))
    _same_flips(report.flips, ti.smallest_flip(model, so2, x))
    _same_spectrum(report.spectrum, ti.discover_symmetries(model, x))
    assert report.results == {} and report.n_samples == 12
    assert bool(report.flips.flipped.any())  # a generic model: the check sees flips


def test_scale_flip_and_an_invariant_model_never_flips():
    scale = ti.get_group("scale")
    model = mlp(64, classes=3, dtype=F64, seed=4)
    batches = _data(seed=5)
    x, _ = _all(batches)
    report = ti.evaluate_invariance(model, scale, batches, metrics=("flip",), elements=[0.9, 1.1], progress=False)
    _same_flips(report.flips, ti.smallest_flip(model, scale, x))
    rot = ti.get_group("rotation", order=4)
    inv = OrbitAveraged(mlp(64, classes=4, dtype=F64, seed=1), rot)
    report = ti.evaluate_invariance(inv, rot, _data(), metrics=("worst", "flip"), progress=False)
    assert not report.flips.flipped.any()  # exactly invariant: nothing flips, and nothing is lost to an element
    assert torch.equal(report.worst_case.robust, report.worst_case.clean_correct)


def test_default_metrics_are_unchanged():
    report = ti.evaluate_invariance(mlp(64, classes=4, dtype=F64), ti.get_group("flip"), _data(), progress=False)
    assert report.worst_case is None and report.flips is None and report.spectrum is None
    assert sorted(report.to_dict()) == ["accuracy", "di", "elements", "group", "include_identity", "li", "n_samples"]
    assert "worst-of-k" not in str(report)


@pytest.mark.parametrize(("elements", "words"), [([30.0], "the 1 measured element"), ([30.0, 60.0], "both measured")])
def test_text_counts_few_measured_elements_in_words(elements, words):
    """One element read 'under all 1 measured elements'."""
    report = ti.evaluate_invariance(
        mlp(64, classes=4, dtype=F64), ti.get_group("so2"), _data(), metrics=("worst",), elements=elements,
        progress=False,
    )  # fmt: skip
    assert f"classified correctly under {words}" in str(report), str(report)
    assert "all 1 " not in str(report) and "all 2 " not in str(report)


@pytest.mark.parametrize(
    ("include_identity", "note"),
    [
        (False, "(means over the 1 non-identity element; accuracy over the 1 element)"),
        (True, "(means over the 1 element)"),
    ],
)
def test_text_note_on_one_element_is_singular(include_identity, note):
    """'(means over the 1 non-identity elements; accuracy over all 1)', '(means over all 1 elements)'."""
    report = ti.evaluate_invariance(
        mlp(64, classes=4, dtype=F64), ti.get_group("so2"), _data(), elements=[30.0],
        include_identity=include_identity, progress=False,
    )  # fmt: skip
    assert note in str(report).splitlines(), str(report)


def test_text_and_plot():
    rot = ti.get_group("rotation", order=4)
    model = mlp(64, classes=4, dtype=F64, seed=1)
    report = ti.evaluate_invariance(model, rot, _data(), metrics=("li", *ROBUST), progress=False)
    text = str(report)
    w, f = report.worst_case, report.flips.to_dict()
    assert f"worst-of-k accuracy: {w.worst_case_accuracy:.4f} (clean {w.accuracy:.4f})" in text
    assert f"{12 - f['never']} of 12 flip" in text and f"; {f['never']} never" in text
    assert "most invariant generator: nearest " + report.spectrum.nearest()[0][0] in text
    fig = report.plot()
    assert fig.axes[0].get_title() == "LI" and len(fig.axes) == 3  # LI, spectrum, flips
    assert len(fig.axes[1].patches) == 6 and len(fig.axes[2].patches) == 4
    assert len(report.plot(metrics="flip").axes) == 1
    only = ti.evaluate_invariance(model, rot, _data(), metrics=("worst",), progress=False)
    assert str(only).splitlines()[0] == f"Invariance report: {rot!r}, 12 samples"
    with pytest.raises(ValueError, match="nothing to draw"):
        only.plot()
    with pytest.raises(ValueError, match=r"non-empty selection of \['li', 'discover', 'flip'\]"):
        report.plot(metrics=("li", "si"))
    with pytest.raises(ValueError, match="non-empty selection of"):
        only.plot(metrics="discover")


class _Untouched:
    """A loader that fails the test if evaluate_invariance starts iterating it."""

    def __iter__(self):
        raise AssertionError("the loader was read before the arguments were checked")


def test_errors():
    model = mlp(64, classes=4, dtype=F64)
    rot = ti.get_group("rotation", order=4)
    bare = [x for x, _ in _data()]
    with pytest.raises(ValueError, match="metric 'worst' needs labels"):
        ti.evaluate_invariance(model, rot, bare, metrics=("worst",), progress=False)
    with pytest.raises(ValueError, match=r"'flip' searches.*so2, scale or a cyclic group.*got Dihedral"):
        ti.evaluate_invariance(model, ti.get_group("dihedral"), _Untouched(), metrics=("flip",), progress=False)
    with pytest.raises(ValueError, match=r"not synced across processes; pass sync_dist=False"):
        ti.evaluate_invariance(model, rot, _Untouched(), metrics=("discover",), sync_dist=True, progress=False)
    with pytest.raises(ValueError, match=r"selection without repeats of .*'worst', 'flip', 'discover'"):
        ti.evaluate_invariance(model, rot, _Untouched(), metrics=("worse",), progress=False)
    signals = [torch.randn(4, 16, dtype=F64)]
    with pytest.raises(ValueError, match=r"'discover'.*needs floating point image batches.*got shape \(4, 16\)"):
        ti.evaluate_invariance(mlp(16, dtype=F64), Reverse(), signals, metrics=("discover",), progress=False)
    # a 1-D group is cyclic: its smallest flip is searched
    report = ti.evaluate_invariance(mlp(16, dtype=F64), Reverse(), signals, metrics=("flip",), progress=False)
    assert report.flips.unit == "steps" and report.flips.max_magnitude == 1
    assert math.isfinite(report.flips.to_dict()["flipped"])
