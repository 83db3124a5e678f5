"""Continuous groups (groups/_continuous.py): so2 and scale, sampled losses, interpolation floors."""

import math

import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64


def _smooth(b=4, size=24, seed=0):
    """Band-limited images, centred and zero outside the inscribed disk."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, 1, 4, 4, generator=g, dtype=F64)
    x = nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    c = (torch.arange(size, dtype=F64) + 0.5) / size * 2 - 1
    x = x * torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 0.35**2))
    return ti.get_group("so2").mask_input(x)


def test_so2_algebra_modulo_360_and_names():
    so2 = ti.get_group("so2")
    assert so2.compose(350.0, 20.0) == pytest.approx(10.0)
    assert so2.inverse(30.0) == pytest.approx(330.0)
    assert so2.check_element(-90) == pytest.approx(270.0)
    assert so2.same_element(359.9999999999, 0.0)
    assert so2.element_name(37.5) == "rot37.5" and not so2.exact and not so2.is_finite
    with pytest.raises(TypeError, match="continuous group"):
        so2.elements()
    with pytest.raises(TypeError, match="continuous group"):
        _ = so2.order
    with pytest.raises(ValueError, match="real-number elements"):
        so2.act(float("nan"), torch.zeros(1, 4, 4))
    angles = so2.sample(1000, generator=torch.Generator().manual_seed(0))
    assert min(angles) >= 0 and max(angles) < 360 and 150 < sum(angles) / len(angles) < 210


def test_so2_multiples_of_90_match_rot90_and_the_round_trip_is_small():
    so2 = ti.get_group("so2")
    x = _smooth()
    rot = ti.get_group("rotation", order=4)
    for k in range(4):
        torch.testing.assert_close(so2.act(90.0 * k, x), rot.act(k, x), rtol=0, atol=1e-6)
    back = so2.act(-37.5, so2.act(37.5, x))
    rel = float((back - x).norm() / x.norm())
    assert rel < 0.1, rel  # bilinear, twice, on 24x24 pixels


def test_scale_algebra_sampling_and_round_trip():
    scale = ti.get_group("scale", min_scale=0.8, max_scale=1.25)
    assert scale.compose(2.0, 0.25) == 0.5 and scale.inverse(4.0) == 0.25 and scale.identity == 1.0
    draws = scale.sample(500, generator=torch.Generator().manual_seed(1))
    assert 0.8 <= min(draws) and max(draws) <= 1.25
    assert abs(sum(math.log(s) for s in draws) / 500) < 0.03  # log-uniform around 1
    x = _smooth()
    back = scale.act(1 / 1.1, scale.act(1.1, x))
    assert float((back - x).norm() / x.norm()) < 0.1
    with pytest.raises(ValueError, match="positive scale factors"):
        scale.act(-1.0, x)


def test_check_group_passes_builtins_and_reports_a_tolerance_for_interpolating_ones():
    for name, params in [("rotation", {"order": 4}), ("dihedral", {}), ("translation", {"order": 3})]:
        assert ti.check_group(ti.get_group(name, **params))["tolerance"] is None
    for name in ("so2", "scale"):
        report = ti.check_group(ti.get_group(name))
        assert report["action_checked"] and 0 < report["tolerance"] < 0.5


def test_gap_model_is_far_more_invariant_than_an_mlp_under_so2():
    so2 = ti.get_group("so2")
    x = _smooth(b=6)
    torch.manual_seed(0)
    gap = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).double()
    plain = mlp(24 * 24, classes=3, dtype=F64)
    angles = [15.0, 37.5, 100.0, 233.0]
    e_gap = ti.invariance_error(gap, so2, x, elements=angles, relative=True)
    e_mlp = ti.invariance_error(plain, so2, x, elements=angles, relative=True)
    assert float(e_mlp.max()) >= 10 * float(e_gap.max()), (e_gap, e_mlp)


def test_sampled_loss_backpropagates_and_explicit_angles_work():
    so2 = ti.get_group("so2")
    model = mlp(24 * 24, classes=3, dtype=F64)
    x = _smooth(b=3)
    loss = ti.InvarianceLoss(model, so2, elements=3, generator=torch.Generator().manual_seed(0))
    value = loss(x)
    value.backward()
    assert float(value.detach()) > 0 and all(p.grad is not None for p in model.parameters())
    explicit = ti.InvarianceLoss(model, so2, elements=[0.0, 45.0], reduction="none")(x)
    ref = 0.5 * (model(so2.act(45.0, x)) - model(x)).pow(2).sum(1)
    torch.testing.assert_close(explicit[1], ref)
    assert torch.equal(explicit[0], torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="continuous: its elements cannot be enumerated"):
        ti.InvarianceLoss(model, so2)


def test_assert_invariant_adds_the_interpolation_floor():
    """A model averaged over the 24 multiples of 15 degrees: invariant up to resampling, which the floor covers."""
    so2 = ti.get_group("so2")
    x = _smooth(b=3)
    inner = mlp(24 * 24, classes=3, dtype=F64)
    angles = [15.0 * k for k in range(24)]

    class Averaged(nn.Module):
        def forward(self, z):
            return ti.orbit_forward(inner, so2, z, angles).mean(0)

    model = Averaged()
    errors = ti.assert_invariant(model, so2, x, elements=[15.0, 90.0, 165.0])
    assert float(errors.max()) > 1e-9  # not exact: the resampling shows
    with pytest.raises(AssertionError, match="interpolation floor"):
        ti.assert_invariant(inner, so2, x, elements=[15.0, 90.0])  # a plain MLP is far above the floor


# ----------------------------------------------------------------------------- angles in [0, 360) (issue 22 item 12)
@pytest.mark.parametrize("tiny", [-1e-300, -5e-324, -1e-14, -0.0])
def test_so2_angles_stay_in_0_360_for_tiny_negative_angles(tiny):
    so2 = ti.get_group("so2")
    assert tiny % 360.0 in (360.0, 0.0)  # Python's modulo, which rounds all but -0.0 up to 360.0
    results = {
        "check_element": so2.check_element(tiny),
        "inverse": so2.inverse(-tiny),
        "compose": so2.compose(tiny, 0.0),
        "resolve_elements": ti.orbit.resolve_elements(so2, [tiny])[0],
    }
    for what, angle in results.items():
        assert 0.0 <= angle < 360.0, (what, angle)
        assert angle == 0.0 and math.copysign(1.0, angle) == 1.0, (what, angle)
    # such an angle is the identity: exact, and left out of the non-identity mean
    x = _smooth(b=2, size=8)
    assert torch.equal(so2.act(tiny, x), x)
    with pytest.raises(ValueError, match="only the identity"):
        ti.logit_invariance(mlp(64, dtype=F64), so2, x, elements=[tiny])


# ----------------------------------------------------------------------------- issue 22 items 22 and 23
@pytest.mark.parametrize("factor", [5e-324, 1e-300, 1e-7, 1e7, 1e300])
def test_scale_rejects_factors_whose_inverse_is_not_finite_or_absurd(factor):
    """5e-324 was accepted, its inverse is inf, and act() returned NaN images."""
    scale = ti.get_group("scale")
    with pytest.raises(ValueError, match=r"scale factors in \[1e-06, 1e\+06\].*got"):
        scale.check_element(factor)
    with pytest.raises(ValueError, match=r"scale factors in \[1e-06, 1e\+06\]"):
        scale.act(factor, torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"1e-06 <= min_scale <= 1 <= max_scale <= 1e\+06"):
        ti.get_group("scale", min_scale=min(factor, 1.0), max_scale=max(factor, 1.0))


def test_scale_accepts_the_range_ends_with_finite_images():
    scale = ti.get_group("scale")
    x = torch.rand(2, 1, 8, 8, dtype=F64)
    for factor in (1e-6, 1e6):
        assert scale.check_element(factor) == factor and math.isfinite(scale.inverse(factor))
        assert bool(torch.isfinite(scale.act(factor, x)).all())


def _builtin_interpolating():
    for interpolation in ("bilinear", "nearest", "bicubic"):
        for mask in ("circle", None):
            yield "so2", {"interpolation": interpolation, "mask": mask}
        yield "scale", {"interpolation": interpolation}


@pytest.mark.parametrize(
    ("name", "params"), list(_builtin_interpolating()), ids=lambda v: v if isinstance(v, str) else str(v)
)
def test_every_builtin_group_with_every_interpolation_passes_its_own_check(name, params):
    """so2 and scale with interpolation='nearest' failed check_group: the round trip undoes its own rounding."""
    report = ti.check_group(ti.get_group(name, **params))
    assert report["action_checked"] and 0 < report["tolerance"] < 1


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
def test_check_group_still_fails_an_action_that_is_not_one_with_every_interpolation(interpolation):
    """Test the tester: rotations by phi(g) = g + 10 sin(g) (or scalings by an odd wobble in log s) round-trip
    exactly, so only the composition check can catch them, also with the looser tolerance of nearest sampling."""

    class Wobbly(ti.SO2):
        def transform(self, g, x):
            return x if g == 0.0 else super().transform(self.check_element(g + 10 * math.sin(math.radians(g))), x)

    class WobblyScale(ti.Scale):
        def transform(self, g, x):
            return x if g == 1.0 else super().transform(g * math.exp(0.1 * math.sin(20 * math.log(g))), x)

    for group in (Wobbly(interpolation=interpolation), WobblyScale(interpolation=interpolation)):
        with pytest.raises(AssertionError, match=r"action: \(.*\)·x and .* differ by .* > tolerance"):
            ti.check_group(group)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
@pytest.mark.parametrize("name", ["so2", "scale"])
def test_integer_and_bool_images_keep_their_dtype(name, dtype):
    """so2's circle mask turned int64/uint8/bool inputs into float32."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2 if dtype == torch.bool else 200, (2, 1, 12, 12), generator=gen).to(dtype)
    element = 30.0 if name == "so2" else 1.2
    for interpolation in ("bilinear", "nearest", "bicubic"):
        group = ti.get_group(name, interpolation=interpolation)
        out = group.act(element, x)
        assert out.dtype == dtype and out.shape == x.shape
        # reference: the same resampling of the values as floats (float64 for the wide integers, which float32
        # cannot hold exactly), rounded and clamped to the dtype's range
        ref = group.act(element, x.to(F64 if dtype in (torch.int32, torch.int64) else torch.float32))
        lo, hi = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
        assert torch.equal(out, ref.round().clamp(lo, hi).to(dtype))
    if name == "so2":
        masked = ti.get_group("so2").mask_input(x)
        assert masked.dtype == dtype
        disk = ti.get_group("so2").disk(12, dtype=torch.bool)
        assert torch.equal(masked[..., disk], x[..., disk]) and not masked[..., ~disk].any()
        # nearest sampling keeps integer labels exact: a quarter turn of a masked label map is rot90
        labels = ti.get_group("so2").mask_input(x)
        turned = ti.get_group("so2", interpolation="nearest").act(90.0, labels)
        assert torch.equal(turned, torch.rot90(labels, 1, (-2, -1)))


@pytest.mark.parametrize("name", ["so2", "scale"])
def test_act_per_sample_on_an_empty_batch_is_empty_like_for_a_finite_group(name):
    group = ti.get_group(name)
    x = torch.randn(0, 1, 8, 8, dtype=torch.float64)
    for gs in ([], torch.zeros(0, dtype=torch.float64)):
        out = group.act_per_sample(gs, x)
        assert out.shape == x.shape and out.dtype == x.dtype
    assert ti.get_group("rotation", order=4).act_per_sample([], x).shape == x.shape
    with pytest.raises(ValueError, match="one element per sample: got 1 elements for a batch of 0"):
        group.act_per_sample([group.identity], x)


@pytest.mark.parametrize("name", ["so2", "scale"])
def test_check_group_takes_integer_images(name):
    """check_group(x=<uint8 or long images>) failed: torch takes no norm of integer tensors."""
    x = torch.randint(0, 255, (2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    for dtype in (torch.long, torch.uint8):
        report = ti.check_group(ti.get_group(name), x=x.to(dtype))
        assert report["action_checked"] and report["elements"] > 0
