"""DI and LI (metrics/_functional.py) against independent references (numpy / scipy); exact invariance of DI/LI/SI."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from helpers import BUILTIN_GROUPS, Listed, OrbitAveraged, group_id, image_batch, make_group, mlp
from torch import nn

import torchinvariance as ti
from torchinvariance.metrics._functional import li_terms

F64 = torch.float64


def _orbit_logits_np(model, group, x):
    """Reference: one separate forward per group element."""
    with torch.no_grad():
        return np.stack([model(group.act(g, x)).numpy() for g in group.elements()])


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- DI / LI references
@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_distribution_invariance_matches_scipy_entropy(spec):
    group = make_group(spec)
    model, x = mlp(36, classes=5, dtype=F64, seed=3), image_batch(b=5, seed=1)
    logits = _orbit_logits_np(model, group, x)
    p = _softmax(logits)
    ref = np.array([[scipy.stats.entropy(p[0, b], p[i, b]) for b in range(5)] for i in range(group.order)])
    with torch.no_grad():
        got = ti.distribution_invariance(model, group, x, reduction="none")
    assert got.shape == (group.order, 5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    # default: means and sums over the non-identity elements (the paper's convention); include_identity: all rows
    np.testing.assert_allclose(ti.distribution_invariance(model, group, x).item(), ref[1:].mean(), rtol=1e-9)
    np.testing.assert_allclose(ti.distribution_invariance(model, group, x, "sum").item(), ref[1:].sum(), rtol=1e-9)
    full = ti.distribution_invariance(model, group, x, include_identity=True).item()
    np.testing.assert_allclose(full, ref.mean(), rtol=1e-9)
    assert ref[1:].min() > 1e-6  # the random model is not invariant: the metric can fail


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_logit_invariance_matches_numpy(spec):
    group = make_group(spec)
    model, x = mlp(36, classes=4, dtype=F64, seed=5), image_batch(b=3, seed=2)
    logits = _orbit_logits_np(model, group, x)
    ref = 0.5 * ((logits[:1] - logits) ** 2).sum(-1)
    got = ti.logit_invariance(model, group, x, reduction="none")
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ti.logit_invariance(model, group, x).item(), ref[1:].mean(), rtol=1e-9)
    np.testing.assert_allclose(ti.logit_invariance(model, group, x, reduction="sum").item(), ref[1:].sum(), rtol=1e-9)
    full = ti.logit_invariance(model, group, x, include_identity=True).item()
    np.testing.assert_allclose(full, ref.mean(), rtol=1e-9)
    assert ref[1:].min() > 1e-6


def test_logit_invariance_any_output_shape_and_float32():
    group = ti.get_group("rotation", order=4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh())  # (N, 2, 4, 4) feature maps
    x = image_batch(b=2, dtype=torch.float32)
    with torch.no_grad():
        out = np.stack([model(group.act(g, x)).numpy() for g in group.elements()]).astype(np.float64)
        got = ti.logit_invariance(model, group, x, reduction="none")
    ref = 0.5 * ((out[:1] - out) ** 2).reshape(4, 2, -1).sum(-1)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_di_li_use_one_batched_forward_and_keep_graph():
    calls = []
    inner = mlp(36, classes=3, dtype=F64)

    def model(inp):
        calls.append(inp.shape[0])
        return inner(inp)

    group = ti.get_group("dihedral")
    li = ti.logit_invariance(model, group, image_batch(b=3))
    ti.distribution_invariance(model, group, image_batch(b=3))
    assert calls == [24, 24]
    li.backward()  # differentiable like InvarianceLoss
    assert inner[1].weight.grad is not None


def test_li_equals_invariance_loss():
    group = ti.get_group("rotation", order=4)
    model, x = mlp(36, dtype=F64), image_batch()
    loss = ti.InvarianceLoss(model, group, divergence="l2", reduction="none")(x)
    torch.testing.assert_close(ti.logit_invariance(model, group, x, reduction="none"), loss)


# ----------------------------------------------------------------------------- exact invariance
@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_exactly_invariant_model_every_element(spec):
    group = make_group(spec)
    model = OrbitAveraged(mlp(36, classes=5, dtype=F64, seed=7), group).eval()
    x = image_batch(b=4, seed=3)
    with torch.no_grad():
        di = ti.distribution_invariance(model, group, x, reduction="none")
        li = ti.logit_invariance(model, group, x, reduction="none")
    si = ti.saliency_invariance(model, group, x, n_steps=6, reduction="none")
    for values in (di, li, si):
        assert values.shape == (group.order, 4)
    assert di.abs().max() <= 1e-6
    assert li.abs().max() <= 1e-6
    assert si.min() >= 1 - 1e-5
    # test the tester: the same network without orbit averaging fails every check
    base = mlp(36, classes=5, dtype=F64, seed=7)
    with torch.no_grad():
        assert ti.logit_invariance(base, group, x, reduction="none")[1:].min() > 1e-6
    assert ti.saliency_invariance(base, group, x, n_steps=6) < 1 - 1e-2


def test_exactly_invariant_model_float32_di_li():
    group = ti.get_group("dihedral")
    model = OrbitAveraged(mlp(36, classes=5, seed=7), group).eval()
    with torch.no_grad():
        assert (
            ti.distribution_invariance(model, group, image_batch(dtype=torch.float32), reduction="none").abs().max()
            <= 1e-6
        )
        assert ti.logit_invariance(model, group, image_batch(dtype=torch.float32), reduction="none").abs().max() <= 1e-6


def test_exactly_invariant_model_default_n_steps():
    group = ti.get_group("dihedral")
    model = OrbitAveraged(mlp(36, classes=5, dtype=F64, seed=11), group).eval()
    si = ti.saliency_invariance(model, group, image_batch(b=3, seed=4), reduction="none")  # n_steps=50
    assert si.shape == (8, 3)
    assert si.min() >= 1 - 1e-5


class _Quadrant(nn.Module):
    """Looks only at the top-left quadrant of the image."""

    def __init__(self, size=8, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.size = size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear((size // 2) ** 2, 16), nn.Tanh(), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x[..., : self.size // 2, : self.size // 2])


def test_quadrant_model_has_low_saliency_invariance_under_rotation():
    group = ti.get_group("rotation", order=4)
    model = _Quadrant(size=12).double()
    x = image_batch(b=6, h=12, w=12, seed=5)
    si = ti.saliency_invariance(model, group, x, n_steps=8, reduction="none")
    torch.testing.assert_close(si[0], torch.ones(6, dtype=F64))
    # the realigned maps of rotated inputs sit in other quadrants: (almost) no overlap
    assert si[1:].max() < 0.35
    assert ti.saliency_invariance(model, group, x, n_steps=8) < 0.5


# ----------------------------------------------------------------------------- the reference row (issue 22 item 2)
@pytest.mark.parametrize("measure", [ti.distribution_invariance, ti.logit_invariance])
def test_a_group_listing_the_identity_elsewhere_is_rejected_not_measured_against_g0_x(measure):
    model = mlp(16, dtype=F64)
    x = image_batch(b=3, h=4, w=4)
    with pytest.raises(ValueError, match=r"must list the identity g0 first .*; it starts with g1"):
        measure(model, Listed([1, 2, 3, 0]), x)
    with pytest.raises(ValueError, match="must list the identity g0 first"):
        ti.evaluate_invariance(model, Listed([1, 2, 3, 0]), [(x, torch.zeros(3, dtype=torch.long))])
    # explicit elements in that order are measured against f(x): the identity's row is 0, every other row is not
    terms = measure(model, Listed([1, 2, 3, 0]), x, elements=[1, 2, 3, 0], reduction="none")
    assert float(terms[3].abs().max()) < 1e-12  # 0 up to the rounding of batched matmuls (1e-16 on AMD EPYC)
    assert bool((terms[:3] > 1e-6).all())
    torch.testing.assert_close(terms, measure(model, Listed([0, 1, 2, 3]), x, reduction="none")[[1, 2, 3, 0]])


# ----------------------------------------------------------------------------- large logits (issue 22 item 10)
def _antisymmetric(scale):
    """Float32 logits ``scale * (left column - right column)``: their sign flips under the left-right flip."""
    return lambda z: scale * (z[:, 0, :, :1] - z[:, 0, :, -1:]).sum(1)


def test_li_differences_are_taken_in_float64_so_large_float32_logits_stay_finite():
    """(2e19)^2 overflows float32 but half of it does not: float32 differences gave inf, float64 ones 2e38."""
    flip = ti.get_group("flip")
    x = torch.zeros(3, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([1.0, 0.5, 0.25])  # f(x) = 1e19 * (1, 0.5, 0.25), f(flip x) = -f(x)
    model = _antisymmetric(1e19)
    # reference: an explicit loop in float64 over the elements and samples
    ref = np.zeros((2, 3))
    for i, g in enumerate(flip.elements()):
        for b in range(3):
            d = model(flip.act(g, x[b : b + 1])).double() - model(x[b : b + 1]).double()
            ref[i, b] = 0.5 * float((d**2).sum())
    terms = ti.logit_invariance(model, flip, x, reduction="none")
    assert terms.dtype == torch.float32 and bool(torch.isfinite(terms).all())
    np.testing.assert_allclose(terms.double().numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(ti.logit_invariance(model, flip, x).item(), ref[1].mean(), rtol=1e-6)
    # the terms themselves are float64, and a float64 model's LI is unchanged
    fx = model(x)
    assert li_terms(fx, torch.stack([fx, -fx])).dtype == F64
    # test the tester: at 1e20 the value itself is beyond float32, and the function says so with inf
    assert torch.isinf(ti.logit_invariance(_antisymmetric(1e20), flip, x))


def test_interpolation_floor_checks_its_batch_and_elements_like_the_metrics():
    model = mlp(16, classes=3, dtype=F64)
    rot, so2 = ti.get_group("rotation", order=4), ti.get_group("so2")
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    for group in (rot, so2):  # an exact group used to return NaN or 0 without looking, so2 a range() error
        with pytest.raises(ValueError, match="elements must not be empty"):
            ti.interpolation_floor(model, group, x, elements=[])
        with pytest.raises(ValueError, match=r"needs a non-empty batch \(B, \.\.\.\)"):
            ti.interpolation_floor(model, group, x[:0], elements=[1])
        with pytest.raises(TypeError, match=r"needs a torch\.Tensor batch"):
            ti.interpolation_floor(model, group, [1.0, 2.0], elements=[1])
        with pytest.raises(ValueError, match="square images"):
            ti.interpolation_floor(model, group, torch.randn(2, 1, 4, 5, dtype=F64), elements=[1])
    with pytest.raises(TypeError, match="elements must be a sequence of group elements"):
        ti.interpolation_floor(model, so2, x, elements="30")  # not the angles 3 and 0
    assert float(ti.interpolation_floor(model, rot, x)) == 0.0
    assert ti.interpolation_floor(model, so2, x, elements=[30.0, 60.0], reduction="none").shape == (2, 2)


def test_interpolation_floor_means_over_the_elements_the_metric_means_over():
    """The floor is read against LI/DI, whose mean skips the identity: so does the floor's (it halved before)."""
    so2 = ti.get_group("so2")
    model = mlp(64, dtype=F64)
    x = so2.mask_input(torch.randn(4, 1, 8, 8, dtype=F64))
    per = ti.interpolation_floor(model, so2, x, elements=[0.0, 30.0], reduction="none")
    assert float(per[0].abs().max()) == 0.0 and float(per[1].min()) > 0  # the identity's round trip is exact
    torch.testing.assert_close(ti.interpolation_floor(model, so2, x, elements=[0.0, 30.0]), per[1].mean())
    torch.testing.assert_close(
        ti.interpolation_floor(model, so2, x, elements=[0.0, 30.0], include_identity=True), per.mean()
    )
    torch.testing.assert_close(
        ti.interpolation_floor(model, so2, x, elements=[0.0, 30.0], reduction="sum"), per[1].sum()
    )
    li = ti.logit_invariance(model, so2, x, elements=[0.0, 30.0], reduction="none")
    assert ti.logit_invariance(model, so2, x, elements=[0.0, 30.0]) == li[1].mean()  # the convention it follows
    with pytest.raises(ValueError, match="only the identity"):
        ti.interpolation_floor(model, so2, x, elements=[0.0])


def test_integer_logits_give_the_di_of_their_float64_values_in_the_function_and_the_class():
    # was log_softmax's NotImplementedError "not implemented for 'Long'" (LI worked on the same model)
    rot = ti.get_group("rotation", order=4)
    net = mlp(64, 3, dtype=F64)
    scores = lambda t: (100 * net(t)).round().long()  # noqa: E731
    x = image_batch(3, h=8, w=8)
    # reference: scipy's KL of the softmax of the integer scores, element by element
    with torch.no_grad():
        orbit = np.stack([scores(rot.act(g, x)).numpy().astype(np.float64) for g in rot.elements()])
    p = _softmax(orbit)
    want = np.mean([scipy.stats.entropy(p[0, b], p[i, b]) for i in range(1, 4) for b in range(3)])
    got = ti.distribution_invariance(scores, rot, x)
    assert got.dtype == F64 and abs(float(got) - want) <= 1e-6 * max(1.0, want)
    metric = ti.DistributionInvariance(scores, rot)
    metric.update(x)
    assert abs(float(metric.compute()) - want) <= 1e-6 * max(1.0, want)


def test_non_finite_outputs_name_each_element_once():
    # elements=[0.0, 30.0] puts the identity before a list that has it: the message said ['rot0', 'rot0', 'rot30']
    so2 = ti.get_group("so2")
    nan_model = lambda t: t.flatten(1)[:, :3] * float("nan")  # noqa: E731
    with pytest.raises(ValueError, match=r"orbit elements \['rot0', 'rot30'\] of SO2"):
        ti.distribution_invariance(nan_model, so2, image_batch(2, h=8, w=8), elements=[0.0, 30.0])
