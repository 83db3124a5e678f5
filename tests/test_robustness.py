"""worst_case and smallest_flip: against explicit loops, on models invariant by construction (never worse, never
flipped), on models whose flip is known in closed form, and on models that are not invariant (the checks fail)."""

import math

import numpy as np
import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti
from torchinvariance.symmetry import affine_coordinates

DT = torch.float64


def images(b=12, size=8, seed=0):
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


def loop_worst_case(model, group, x, y, elements):
    """worst_case written out: one sample and one element at a time, the margin by a loop over the classes."""
    correct, margins = [], []
    for g in elements:
        crow, mrow = [], []
        for b in range(x.shape[0]):
            out = model(group.act(g, x[b : b + 1]))[0].tolist()
            crow.append(max(range(len(out)), key=lambda c: out[c]) == int(y[b]))
            mrow.append(out[int(y[b])] - max(o for c, o in enumerate(out) if c != int(y[b])))
        correct.append(crow)
        margins.append(mrow)
    worst = [min(range(len(elements)), key=lambda i: (margins[i][b], i)) for b in range(x.shape[0])]
    return torch.tensor(correct), torch.tensor(margins, dtype=DT), torch.tensor(worst)


@pytest.mark.parametrize(
    ("group", "elements"),
    [
        (ti.get_group("rotation", order=4), None),
        (ti.get_group("dihedral"), None),
        (ti.get_group("translation", order=4, axis="y"), None),
        (ti.get_group("so2"), list(range(0, 360, 30))),
        (ti.get_group("scale"), [0.8, 0.9, 1.0, 1.1, 1.25]),
    ],
    ids=["rotation4", "dihedral", "translation", "so2", "scale"],
)
def test_worst_case_matches_an_explicit_loop(group, elements):
    x = images()
    model = mlp(64, classes=4, dtype=DT)
    y = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    els = ti.orbit.resolve_elements(group, elements)  # every element of a finite group
    result = ti.worst_case(model, group, x, y, elements=elements)
    correct, margins, worst = loop_worst_case(model, group, x, y, els)
    assert result.elements == els
    assert torch.equal(result.correct, correct)
    torch.testing.assert_close(result.margins, margins)
    assert torch.equal(result.worst_index, worst)
    assert result.worst_element == [els[int(i)] for i in worst]
    assert torch.equal(result.robust, correct.all(0))
    assert torch.equal(result.clean_correct, model(x).argmax(1) == y)
    assert result.worst_case_accuracy == correct.all(0).double().mean().item()
    torch.testing.assert_close(result.element_accuracy, correct.double().mean(1))
    assert result.to_dict()["worst_case_accuracy"] == result.worst_case_accuracy


@pytest.mark.parametrize("name", ["rotation", "dihedral"])
def test_invariant_model_loses_nothing_in_the_worst_case(name):
    group = ti.get_group(name)
    x = images(b=32)
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
    invariant = ti.GroupAveraged(mlp(64, classes=4, dtype=DT), group)
    result = ti.worst_case(invariant, group, x, y)
    assert 0 < result.accuracy < 1  # random labels: the check is not vacuous
    assert result.worst_case_accuracy == result.accuracy
    assert torch.equal(result.robust, result.clean_correct)
    flips = ti.smallest_flip(invariant, group if name == "rotation" else ti.get_group("rotation"), x)
    assert not flips.flipped.any() and torch.isinf(flips.magnitude).all() and torch.isnan(flips.element).all()
    assert (flips.direction == 0).all() and (flips.new_prediction == -1).all()


def test_non_invariant_model_is_worse_in_the_worst_case_and_flips():
    """Test the tester: the same checks fail on a model that is not invariant."""
    group = ti.get_group("rotation")
    x = images(b=32)
    model = mlp(64, classes=4, dtype=DT)
    y = model(x).argmax(1)
    result = ti.worst_case(model, group, x, y)
    assert result.accuracy == 1.0 and result.worst_case_accuracy < 0.5
    assert ti.smallest_flip(model, group, x).flipped.float().mean() > 0.5


@pytest.mark.parametrize(
    "group", [ti.get_group("rotation"), ti.get_group("translation", order=8, axis="x"), ti.get_group("flip")]
)
def test_smallest_flip_on_a_cyclic_group_matches_an_explicit_loop(group):
    x = images(b=16)
    model = mlp(64, classes=3, dtype=DT)
    result = ti.smallest_flip(model, group, x)
    assert result.unit == "steps" and result.tol == 0.0 and result.max_magnitude == group.order // 2
    for b in range(16):
        clean = int(model(x[b : b + 1]).argmax())
        found = None
        for k in range(1, group.order // 2 + 1):
            for sign in (1, -1):
                g = (sign * k) % group.order
                new = int(model(group.act(g, x[b : b + 1])).argmax())
                if found is None and new != clean:
                    found = (k, g, sign, new)
        assert int(result.prediction[b]) == clean
        if found is None:
            assert math.isinf(result.magnitude[b]) and result.direction[b] == 0
        else:
            got = (result.magnitude[b].item(), result.element[b].item(), int(result.direction[b]))
            assert got == (float(found[0]), float(found[1]), found[2])
            assert int(result.new_prediction[b]) == found[3]
    assert result.flipped.any()  # not vacuous


def ramp_model(size, radius2=0.6):
    """Scores (m_u, m_v), the moments of the image on a centred disk: m = c * a exactly for a ramp a . p."""
    u, v = affine_coordinates(size, size)
    inner = (u**2 + v**2 < radius2).to(DT)

    def model(x):
        return torch.stack([(x[:, 0] * u * inner).sum((-2, -1)), (x[:, 0] * v * inner).sum((-2, -1))], -1)

    return model


def ramps(angles, size):
    u, v = affine_coordinates(size, size)
    a = torch.tensor([math.radians(t) for t in angles], dtype=DT)
    return (torch.cos(a)[:, None, None] * u + torch.sin(a)[:, None, None] * v)[:, None]


def test_smallest_flip_finds_a_known_angle_within_the_tolerance():
    """Bilinear resampling keeps a linear ramp exact, and so2's angle t turns the ramp's direction by -t in (u, v):
    class 0 (m_u > m_v) holds for directions in (-135, 45) degrees, so each flip angle is known in closed form."""
    size = 12
    angles = [10.3, -20.6, 80.2, 170.4, -100.0]
    # (magnitude, direction): the nearer of the boundaries 45 and -135 (= 225) degrees
    expected = [(34.7, -1), (65.6, -1), (35.2, 1), (54.6, -1), (35.0, 1)]
    so2 = ti.get_group("so2")
    x, model = ramps(angles, size), ramp_model(size)
    for tol in (1e-3, 1e-7):
        result = ti.smallest_flip(model, so2, x, tol=tol)
        assert result.unit == "degrees" and result.tol == tol
        for b, (mag, sign) in enumerate(expected):
            assert abs(result.magnitude[b].item() - mag) <= tol + 1e-9, (b, result.magnitude[b].item())
            assert int(result.direction[b]) == sign
            assert so2.same_element(result.element[b].item(), sign * result.magnitude[b].item())
    # independently: flipped at the element, not yet a little before it
    for b, (mag, sign) in enumerate(expected):
        clean = int(model(x[b : b + 1]).argmax())
        at = int(model(so2.act(result.element[b].item(), x[b : b + 1])).argmax())
        before = int(model(so2.act(sign * (mag - 1e-3), x[b : b + 1])).argmax())
        assert at != clean and before == clean and at == int(result.new_prediction[b])


def test_smallest_flip_finds_a_known_scale_factor():
    """Zooming by s turns a ramp u into u / s: the score m_u / s falls below the threshold at a known factor."""
    size = 12
    u, _ = affine_coordinates(size, size)
    amps = torch.tensor([1.0, 1.1, 0.9, -1.0], dtype=DT)
    x = (amps[:, None, None] * u)[:, None]
    moment = ramp_model(size, radius2=0.16)
    threshold = moment(x[:1])[0, 0].item() / 1.3

    def model(z):
        m = moment(z)[:, 0]
        return torch.stack([m, torch.full_like(m, threshold)], -1)

    result = ti.smallest_flip(model, ti.get_group("scale"), x, tol=1e-6)
    assert result.unit == "log-scale" and result.max_magnitude == math.log(2.0)
    for b, factor in enumerate([1.3, 1.43, 1.17]):
        assert abs(result.magnitude[b].item() - math.log(factor)) <= 1e-6 + 1e-9
        assert abs(result.element[b].item() - factor) < 1e-5 and int(result.direction[b]) == 1
    assert math.isinf(result.magnitude[3]) and math.isnan(result.element[3]) and result.new_prediction[3] == -1


def radial_model(size):
    u, v = affine_coordinates(size, size)
    r = (u**2 + v**2).sqrt()
    rings = torch.stack([torch.exp(-((r - c) ** 2) / 0.02) for c in (0.2, 0.45, 0.7)]) * (2.0 / size) ** 2
    torch.manual_seed(0)
    head = nn.Linear(3, 3).to(DT)

    def model(x):
        return head((x[:, 0, None] * rings).sum((-2, -1)))

    return model


def test_so2_invariant_model_never_flips_and_a_generic_one_does():
    """A model of ring integrals is rotation-invariant by construction (up to interpolation, far below its
    margins here); an MLP on the pixels is not, and the same checks see it."""
    size = 12
    so2 = ti.get_group("so2")
    x = so2.mask_input(images(b=16, size=size) + 3.0)
    invariant = radial_model(size)
    y = invariant(x).argmax(1)
    grid = list(range(0, 360, 15))
    assert ti.worst_case(invariant, so2, x, y, elements=grid).worst_case_accuracy == 1.0
    assert not ti.smallest_flip(invariant, so2, x, steps=24).flipped.any()
    generic = mlp(size * size, classes=3, dtype=DT)
    yg = generic(x).argmax(1)
    assert ti.worst_case(generic, so2, x, yg, elements=grid).worst_case_accuracy < 0.5
    flips = ti.smallest_flip(generic, so2, x, steps=24)
    assert flips.flipped.float().mean() > 0.5
    assert (flips.magnitude[flips.flipped] <= 180).all()


def test_max_magnitude_limits_the_search():
    size = 12
    x, model = ramps([10.3, 80.2], size), ramp_model(size)
    result = ti.smallest_flip(model, ti.get_group("so2"), x, max_magnitude=30.0, steps=6)
    assert not result.flipped.any() and result.max_magnitude == 30.0
    result = ti.smallest_flip(model, ti.get_group("so2"), x, max_magnitude=40.0, steps=8)
    assert result.flipped.all()


def test_measures_in_eval_mode_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).to(DT).train()
    x = images()
    before = model[2].running_mean.clone()
    ti.worst_case(model, ti.get_group("rotation"), x, torch.zeros(12, dtype=torch.long))
    ti.smallest_flip(model, ti.get_group("so2"), x, steps=4, tol=1.0)
    assert model.training and torch.equal(model[2].running_mean, before)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda m, x: ti.worst_case(m, ti.get_group("so2"), x, torch.zeros(12, dtype=torch.long)), ValueError),
        (lambda m, x: ti.worst_case(m, ti.get_group("rotation"), x, torch.zeros(11, dtype=torch.long)), ValueError),
        (lambda m, x: ti.worst_case(m, ti.get_group("rotation"), x, torch.zeros(12)), TypeError),
        (
            lambda m, x: ti.worst_case(lambda z: m(z)[:, 0], ti.get_group("rotation"), x, torch.zeros(12).long()),
            ValueError,
        ),
        (lambda m, x: ti.smallest_flip(m, ti.get_group("dihedral"), x), TypeError),
        (lambda m, x: ti.smallest_flip(m, ti.get_group("so2"), x, steps=0), ValueError),
        (lambda m, x: ti.smallest_flip(m, ti.get_group("so2"), x, tol=-1.0), ValueError),
        (lambda m, x: ti.smallest_flip(m, ti.get_group("so2"), x, max_magnitude=math.inf), ValueError),
        (lambda m, x: ti.smallest_flip(m, ti.get_group("rotation"), x, max_magnitude=1.5), ValueError),
        (lambda m, x: ti.smallest_flip(lambda z: m(z)[:, :1], ti.get_group("so2"), x), ValueError),
        (lambda m, x: ti.smallest_flip(3, ti.get_group("so2"), x), TypeError),
    ],
)
def test_bad_arguments(call, exc):
    with pytest.raises(exc):
        call(mlp(64, classes=3, dtype=DT), images())


def test_results_of_batches_concatenate_to_the_result_of_all_samples():
    x, model = images(10), mlp(64, classes=4, dtype=DT)
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(2))
    rot = ti.get_group("rotation", order=4)
    whole = ti.worst_case(model, rot, x, y)
    cat = ti.WorstCaseResult.cat([ti.worst_case(model, rot, x[:3], y[:3]), ti.worst_case(model, rot, x[3:], y[3:])])
    for f in ("correct", "margins", "clean_correct", "robust", "worst_index"):
        torch.testing.assert_close(getattr(cat, f), getattr(whole, f))
    assert cat.worst_element == whole.worst_element and cat.to_dict() == whole.to_dict()
    so2 = ti.get_group("so2")
    flips = ti.smallest_flip(model, so2, x, steps=12)
    cat = ti.FlipResult.cat(
        [ti.smallest_flip(model, so2, x[:4], steps=12), ti.smallest_flip(model, so2, x[4:], steps=12)]
    )
    for f in ("magnitude", "element", "direction", "prediction", "new_prediction"):
        torch.testing.assert_close(getattr(cat, f), getattr(flips, f), equal_nan=True)
    with pytest.raises(ValueError, match="same elements"):
        ti.WorstCaseResult.cat([whole, ti.worst_case(model, rot, x, y, elements=[0, 1])])
    with pytest.raises(ValueError, match="searched alike"):
        ti.FlipResult.cat([flips, ti.smallest_flip(model, so2, x, steps=12, max_magnitude=90.0)])
    with pytest.raises(TypeError, match="non-empty sequence of FlipResult"):
        ti.FlipResult.cat([])


def test_flip_summary_and_signed_parameter_against_the_fields():
    inf, nan = math.inf, math.nan
    flips = ti.FlipResult(
        torch.tensor([10.0, 30.0, inf, 20.0], dtype=DT),
        torch.tensor([10.0, 330.0, nan, 20.0], dtype=DT),
        torch.tensor([1, -1, 0, 1]),
        torch.zeros(4, dtype=torch.long),
        torch.tensor([1, 1, -1, 2]),
        "degrees",
        180.0,
        1e-3,
    )
    torch.testing.assert_close(flips.signed, torch.tensor([10.0, -30.0, nan, 20.0], dtype=DT), equal_nan=True)
    d = flips.to_dict()
    assert (d["n_samples"], d["never"], d["flipped"], d["median"]) == (4, 1, 0.75, 20.0)
    assert d["q10"] == pytest.approx(12.0) and d["q90"] == pytest.approx(28.0)  # numpy's linear quantiles
    assert d["q90"] == pytest.approx(float(np.quantile([10.0, 30.0, 20.0], 0.9)))
    scale = ti.FlipResult(
        flips.magnitude / 100,
        flips.element,
        flips.direction,
        flips.prediction,
        flips.new_prediction,
        "log-scale",
        math.log(2),
        1e-4,
    )
    torch.testing.assert_close(scale.signed[[0, 1, 3]], torch.tensor([0.1, -0.3, 0.2], dtype=DT).exp())


def test_smallest_flip_on_so2_with_the_circle_mask_is_not_flipped_by_the_mask():
    """A model that reads only the corners, which every non-identity rotation zeroes: the mask, not the rotation,
    changes what it sees. Before the inputs were masked first, every sample 'flipped' at about 1e-3 degrees."""
    corners = ~ti.get_group("so2").disk(12, torch.device("cpu"), torch.bool)
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(0)) - 3.0 * corners  # corners < 0

    def model(x):
        s = (x * corners).sum((-3, -2, -1))
        return torch.stack([s, -s], -1)  # class 1 while the corners sum below 0, class 0 once they are 0

    assert bool((model(x).argmax(1) == 1).all())
    result = ti.smallest_flip(model, ti.get_group("so2"), x)
    assert torch.isinf(result.magnitude).all(), result.magnitude  # the masked corners are 0 at every angle
    assert bool((result.prediction == 0).all())  # compared against the masked input's prediction


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 0], [0, 1, 2, -1, 0]])
def test_worst_case_names_labels_outside_the_classes(labels):
    # before: gather's "index 3 is out of bounds for dimension 2 with size 3"
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"0\.\.2 .*3 scores.*got labels \[-?[13]\]"):
        ti.worst_case(model, ti.get_group("rotation", order=4), torch.randn(5, 1, 4, 4), torch.tensor(labels))


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ti.worst_case(m, ti.get_group("rotation", order=4), x, torch.zeros(5, dtype=torch.long)),
        lambda m, x: ti.smallest_flip(m, ti.get_group("so2"), x),
        lambda m, x: ti.smallest_flip(m, ti.get_group("rotation", order=4), x),
    ],
)
def test_nan_scores_raise_instead_of_reading_as_never_flipping(call):
    # before: worst_case reported accuracy 0 and smallest_flip "never flips" (magnitude inf) for a NaN model
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def model(z):
        return lin(z) * float("nan")

    with pytest.raises(ValueError, match="NaN or \\+inf scores on x"):
        call(model, torch.randn(5, 1, 4, 4))


def test_nan_only_on_transformed_inputs_is_named():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(5, 1, 4, 4)

    def model(z):
        out = lin(z)
        return torch.where((z == x[:1]).flatten(1).all(1, keepdim=True), out, out * float("nan"))

    with pytest.raises(ValueError, match="NaN or \\+inf scores on the transformed inputs"):
        ti.smallest_flip(model, ti.get_group("rotation", order=4), x[:1])
    masked = lambda z: lin(z).index_fill(1, torch.tensor([2]), -math.inf)  # noqa: E731 (a masked class is fine)
    result = ti.worst_case(masked, ti.get_group("rotation", order=4), x, torch.zeros(5, dtype=torch.long))
    assert result.margins.isfinite().all()
