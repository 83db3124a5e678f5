"""torchinvariance.testing: invariance_error measures, assert_invariant decides (and can fail)."""

import numpy as np
import pytest
import torch
from helpers import BUILTIN_GROUPS, OrbitAveraged, Reverse, group_id, make_group, mlp
from torch import nn

import torchinvariance as ti
from torchinvariance.testing import DEFAULT_TOLERANCES


class Counting(nn.Module):
    """Wraps a model and records the batch shape of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.model(x)


def linear_model(seed=0, dtype=torch.float64, classes=3, side=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, classes)).to(dtype)


def numpy_reference(model, x, ks, relative=False):
    """Per-rotation max |f(rot90^k x) - f(x)| with np.rot90 and numpy matrix products (no torch group code)."""
    w = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    xn = x.double().numpy()

    def f(z):
        return z.reshape(len(z), -1) @ w.T + b

    ref = f(xn)
    errs = np.array([np.abs(f(np.rot90(xn, k, axes=(-2, -1))) - ref).max() for k in ks])
    return errs / np.abs(ref).max() if relative else errs


@pytest.mark.parametrize("relative", [False, True])
def test_invariance_error_matches_numpy_reference(relative):
    model = linear_model()
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    rot = ti.get_group("rotation", order=4)
    err = ti.invariance_error(model, rot, x, relative=relative)
    assert err.shape == (4,) and err.dtype == torch.float64
    np.testing.assert_allclose(err.numpy(), numpy_reference(model, x, range(4), relative), rtol=1e-10, atol=1e-14)
    assert err[0] <= 1e-14 and (err[1:] > 1e-3).all()


def test_elements_subset_and_reduction_none():
    model = linear_model(seed=1)
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    rot = ti.get_group("rotation", order=4)
    full = ti.invariance_error(model, rot, x)
    sub = ti.invariance_error(model, rot, x, elements=[3, 1])
    torch.testing.assert_close(sub, full[[3, 1]])
    per_sample = ti.invariance_error(model, rot, x, reduction="none")
    assert per_sample.shape == (4, 3)
    torch.testing.assert_close(per_sample.amax(1), full)
    np.testing.assert_allclose(sub.numpy(), numpy_reference(model, x, [3, 1]), rtol=1e-10, atol=1e-14)


def test_one_batched_forward_over_every_element():
    model = Counting(linear_model())
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    ti.invariance_error(model, ti.get_group("dihedral"), x)
    assert model.calls == [(18, 1, 5, 5)]  # x itself, then the 8 transforms, in one forward
    model.calls.clear()
    ti.assert_invariant(model, ti.get_group("dihedral"), x, atol=1e9)
    assert model.calls == [(18, 1, 5, 5)]


def test_float64_comparison_casts_a_copy():
    model = Counting(linear_model(dtype=torch.float32))
    x = torch.randn(2, 1, 5, 5)
    rot = ti.get_group("rotation", order=4)
    err = ti.invariance_error(model, rot, x, dtype=torch.float64)
    assert err.dtype == torch.float64
    assert model.calls == [] and next(model.parameters()).dtype == torch.float32  # the original is untouched
    assert x.dtype == torch.float32
    np.testing.assert_allclose(err.numpy(), numpy_reference(model.model, x, range(4)), rtol=1e-10, atol=1e-14)
    # already float64: no copy
    model64 = Counting(linear_model(dtype=torch.float64))
    ti.invariance_error(model64, rot, x, dtype=torch.float64)
    assert len(model64.calls) == 1


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_passes_invariant_and_fails_plain_model_on_every_builtin_group(spec):
    group = make_group(spec)
    x = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    plain = mlp(144, seed=0)
    invariant = OrbitAveraged(plain, group)
    err = ti.assert_invariant(invariant, group, x)
    assert err.shape == (group.order,)
    ti.assert_invariant(invariant, group, x, dtype=torch.float64)
    errors = ti.invariance_error(plain, group, x)
    worst = int(errors.argmax())
    with pytest.raises(AssertionError) as info:
        ti.assert_invariant(plain, group, x)
    message = str(info.value)
    assert message.startswith(f"Sequential is not invariant to {group!r}: worst element {group.element_name(worst)!r}")
    assert f"= {float(errors[worst]):.3e} >" in message
    for g in group.elements():
        assert f"{group.element_name(g)}: " in message  # every element's error is listed


class AlmostInvariant(nn.Module):
    """An exactly invariant part plus eps times a non-invariant part: relative error ~ eps."""

    def __init__(self, group, eps):
        super().__init__()
        self.plain = mlp(25, seed=3, dtype=torch.float64)
        self.invariant = OrbitAveraged(self.plain, group)
        self.eps = eps

    def forward(self, x):
        return self.invariant(x) + self.eps * self.plain(x)


def test_default_tolerance_is_keyed_on_dtype():
    assert DEFAULT_TOLERANCES[torch.float32] == (1e-6, 1e-5)
    assert DEFAULT_TOLERANCES[torch.float64] == (1e-12, 1e-10)
    rot = ti.get_group("rotation", order=4)
    model = AlmostInvariant(rot, eps=1e-8)
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rel = ti.invariance_error(model, rot, x, relative=True)
    assert 1e-10 < rel.max() < 1e-6
    with pytest.raises(AssertionError, match=r"computed in torch\.float64"):
        ti.assert_invariant(model, rot, x)  # float64 tolerance: fails
    ti.assert_invariant(model, rot, x, dtype=torch.float32)  # the same model within float32 tolerance: passes
    ti.assert_invariant(model, rot, x, rtol=1e-6)  # explicit tolerance (atol then 0)
    with pytest.raises(AssertionError):
        ti.assert_invariant(model, rot, x, atol=1e-14)  # explicit atol, rtol then 0


def test_nan_fails():
    rot = ti.get_group("rotation", order=2)
    with pytest.raises(AssertionError, match="nan"):
        ti.assert_invariant(lambda x: x.flatten(1) * float("nan"), rot, torch.randn(2, 1, 4, 4), atol=1.0)


def test_plain_functions_and_one_dimensional_groups():
    x = torch.randn(3, 7, dtype=torch.float64)

    def total(z):
        return z.sum(-1, keepdim=True)

    ti.assert_invariant(total, Reverse(), x)
    with pytest.raises(AssertionError, match=r"first_sample is not invariant to Reverse.*worst element 'g1'"):

        def first_sample(z):
            return z[:, :1]

        ti.assert_invariant(first_sample, Reverse(), x)


def test_bad_arguments():
    rot = ti.get_group("rotation", order=4)
    model = linear_model()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"reduction must be one of \('max', 'none'\), got 'mean'"):
        ti.invariance_error(model, rot, x, reduction="mean")
    with pytest.raises(ValueError, match=r"floating torch\.dtype"):
        ti.invariance_error(model, rot, x, dtype=torch.int64)
    with pytest.raises(ValueError, match="elements must not be empty"):
        ti.invariance_error(model, rot, x, elements=[])
    with pytest.raises(ValueError, match=r"has elements 0\.\.3"):
        ti.invariance_error(model, rot, x, elements=[4])
    with pytest.raises(ValueError, match=r"non-empty batch \(B, \.\.\.\)"):
        ti.invariance_error(model, rot, torch.randn(5, 5))
    with pytest.raises(ValueError, match="one output per sample"):
        ti.invariance_error(lambda z: z.sum(), rot, x)
    with pytest.raises(TypeError, match="Group"):
        ti.invariance_error(model, "rotation", x)
    with pytest.raises(ValueError, match="atol and rtol must be >= 0"):
        ti.assert_invariant(model, rot, x, atol=-1.0)


# ------------------------------------------------------------------ continuous groups: floors, dict outputs, the disk
F64 = torch.float64
SO2 = ti.get_group("so2")


def smooth_images(n, size=16, seed=0):
    """Smooth images that fade out inside the inscribed disk (small interpolation floors)."""
    coarse = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    c = (torch.arange(size, dtype=F64) + 0.5) / size * 2 - 1
    return SO2.mask_input(images * torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / 0.25))


def loop_reference(model, group, x, elements, action=None, disk=False):
    """Per element and sample: the error and the floor of the assertions, by an explicit loop over elements."""

    def mask(y):
        if not disk:
            return y
        c = (torch.arange(y.shape[-1], dtype=F64) + 0.5) / y.shape[-1] * 2 - 1
        return y * ((c[:, None] ** 2 + c[None, :] ** 2) <= 1.0).to(y.dtype)

    def back(g, y):
        return y if action is None else group.act(group.inverse(g), y)

    with torch.no_grad():
        fx = mask(model(x))
        errors, floors = [], []
        for g in elements:
            gx = group.act(g, x)
            errors.append((mask(back(g, model(gx))) - fx).abs().flatten(1).amax(1))
            floor = (mask(model(group.act(group.inverse(g), gx))) - fx).abs().flatten(1).amax(1)
            if action is not None:
                own = (mask(group.act(group.inverse(g), group.act(g, model(x)))) - fx).abs().flatten(1).amax(1)
                floor = torch.maximum(floor, own)
            floors.append(floor)
    return torch.stack(errors), torch.stack(floors), float(fx.abs().max())


@pytest.mark.parametrize(("group", "elements"), [(SO2, [30.0, 37.5, 90.0]), (ti.get_group("scale"), [0.8, 1.25])])
def test_dict_outputs_on_continuous_groups(group, elements):
    """The interpolation floor reads a dict's logits as the orbit does (it called .reshape on the dict, issue 22.15)."""
    model = linear_model(side=16, dtype=F64)
    as_dict = lambda z: {"logits": model(z), "features": z}  # noqa: E731
    x = smooth_images(3)
    expected = ti.invariance_error(model, group, x, elements=elements)
    torch.testing.assert_close(ti.invariance_error(as_dict, group, x, elements=elements), expected)
    with pytest.raises(AssertionError) as plain:
        ti.assert_invariant(model, group, x, elements=elements)
    with pytest.raises(AssertionError) as wrapped:
        ti.assert_invariant(as_dict, group, x, elements=elements)
    assert str(wrapped.value).replace("<lambda>", "Sequential") == str(plain.value)
    errors, _, _ = loop_reference(model, group, x, elements)
    torch.testing.assert_close(expected, errors.amax(1))
    conv = lambda z: {"logits": torch.nn.functional.conv2d(z, torch.ones(2, 1, 1, 1, dtype=F64))}  # noqa: E731
    ti.assert_equivariant(conv, group, x, "same", elements=elements)


def test_the_floor_of_one_sample_does_not_cover_another():
    """A resampling-sensitive noise image no longer sets the tolerance of a smooth image (issue 20 item 5).

    f(x) = sum(x^2) + 3 <ramp, x>: the energy term is rotation invariant but reacts strongly to the smoothing of
    resampling pixel noise (a large floor for that sample); the ramp term is not invariant and shows on the smooth
    sample, above its own floor but below the noise sample's.
    """
    size = 16
    ramp = ((torch.arange(size, dtype=F64) + 0.5) / size * 2 - 1).expand(size, size)

    def model(z):
        return ((z**2).flatten(1).sum(1) + 3 * (ramp * z[:, 0]).flatten(1).sum(1))[:, None]

    noise = SO2.mask_input(torch.randn(1, 1, size, size, dtype=F64, generator=torch.Generator().manual_seed(1)))
    x = torch.cat([noise, smooth_images(1)])
    errors, floors, _ = loop_reference(model, SO2, x, [30.0])
    assert floors[0, 0] > errors[0, 1] > 2 * floors[0, 1]  # the construction: what a batch-wide floor hid
    assert errors.max() <= floors.max()  # the old rule (max error <= max floor over the batch) passed it
    with pytest.raises(AssertionError, match=r"worst element 'rot30' has max \|f\(g x\) - f\(x\)\| = .* on sample 1"):
        ti.assert_invariant(model, SO2, x, elements=[30.0])
    ti.assert_invariant(model, SO2, x[:1], elements=[30.0])  # alone, the noise sample is within its floor


@pytest.mark.parametrize("seed", range(3))
def test_decision_matches_a_per_sample_loop(seed):
    """Pass iff each sample's error is within atol + rtol * max|f(x)| + its own floor (invariant and plain models)."""
    torch.manual_seed(seed)
    pooled = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Tanh(), nn.Conv2d(8, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    plain = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    x = torch.cat([smooth_images(2, seed=seed), SO2.mask_input(torch.randn(2, 1, 16, 16, dtype=F64))])
    elements = [20.0, 45.0, 90.0, 200.0]
    for model in (pooled.double(), plain.double()):
        errors, floors, scale = loop_reference(model, SO2, x, elements)
        atol, rtol = DEFAULT_TOLERANCES[F64]
        passes = bool((errors <= atol + rtol * scale + floors).all())
        if passes:
            torch.testing.assert_close(ti.assert_invariant(model, SO2, x, elements=elements), errors.amax(1))
        else:
            with pytest.raises(AssertionError):
                ti.assert_invariant(model, SO2, x, elements=elements)
        assert passes is (model is pooled)


def test_a_failure_says_when_the_floor_is_most_of_the_tolerance():
    plain = linear_model(side=16, dtype=F64)
    with pytest.raises(AssertionError, match=r"The interpolation floor is \d+% of this tolerance.*multiples of 90"):
        ti.assert_invariant(plain, SO2, SO2.mask_input(torch.randn(4, 1, 16, 16, dtype=F64)), elements=[30.0])
    with pytest.raises(AssertionError) as exact:  # an exact group has no floor and no such note
        ti.assert_invariant(plain, ti.get_group("rotation"), torch.randn(4, 1, 16, 16, dtype=F64))
    assert "interpolation floor" not in str(exact.value)
    with pytest.raises(AssertionError) as tight:  # a floor far below atol is not "most of the tolerance"
        ti.assert_invariant(plain, SO2, smooth_images(2), elements=[90.0], atol=1e-3, rtol=0.0)
    assert "interpolation floor" in str(tight.value) and "% of this tolerance" not in str(tight.value)


def pointwise_with_bias(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 1), nn.Tanh(), nn.Conv2d(6, 2, 1)).double()


def test_same_on_so2_compares_on_the_disk():
    """A pointwise net with a bias is equivariant to every rotation; so2's mask zeroes its output corners (issue 20.5).

    On the whole image the error is the bias of the corners at every angle; on the disk ("auto") it passes, and a
    generic 3x3 convolution still fails.
    """
    x, angles = smooth_images(3), [30.0, 37.5, 90.0, 150.0]
    net = pointwise_with_bias()
    whole = ti.equivariance_error(net, SO2, x, "same", elements=angles, mask=None)
    corners = net(x)[..., 0, 0].abs().max()
    assert bool((whole >= corners - 1e-12).all())  # the corners alone make the error of the whole image
    errors = ti.assert_equivariant(net, SO2, x, elements=angles)  # default mask="auto": the disk
    ref_errors, ref_floors, _ = loop_reference(net, SO2, x, angles, action="same", disk=True)
    torch.testing.assert_close(errors, ref_errors.amax(1))
    assert bool((ref_errors <= ref_floors + 1e-10).all())
    torch.testing.assert_close(ti.equivariance_error(net, SO2, x, "same", elements=angles, mask="circle"), errors)
    assert float(errors[2]) < 1e-12  # 90 degrees is exact on inputs zero outside the disk
    generic = nn.Conv2d(1, 2, 3, padding=1).double()
    with pytest.raises(AssertionError, match="not equivariant to SO2"):
        ti.assert_equivariant(generic, SO2, x, elements=angles)
    with pytest.raises(AssertionError, match="worst element 'rot90'"):
        ti.assert_equivariant(generic, SO2, x, elements=[90.0])


def test_disk_mask_arguments():
    x = smooth_images(2)
    rot = ti.get_group("rotation")
    with pytest.raises(ValueError, match=r"mask must be one of \('auto', 'circle', None\), got 'disk'"):
        ti.equivariance_error(nn.Conv2d(1, 1, 1).double(), SO2, x, "same", elements=[30.0], mask="disk")
    with pytest.raises(ValueError, match=r"H == W.*got outputs of shape \(2, 3\)"):
        ti.equivariance_error(linear_model(side=16), SO2, x, "trivial", elements=[30.0], mask="circle")
    # on an exact group the disk is opt-in, and a pointwise net passes with or without it
    for mask in ("auto", None, "circle"):
        ti.assert_equivariant(pointwise_with_bias(), rot, x, mask=mask)


def test_relative_errors_of_integer_outputs_are_floats():
    # a model returning class indices (argmax): relative=True divided with torch.finfo of an integer dtype (TypeError)
    rot = ti.get_group("rotation", order=4)
    x = torch.arange(32.0).reshape(2, 1, 4, 4)
    model = lambda z: z.flatten(1)[:, :2].round().long()  # noqa: E731
    absolute = ti.invariance_error(model, rot, x)
    relative = ti.invariance_error(model, rot, x, relative=True)
    assert absolute.dtype == torch.long and relative.dtype == torch.float32
    torch.testing.assert_close(relative, absolute.float() / 17.0)  # max |f(x)| = 17, the second pixel of sample 1
    rel_eq = ti.equivariance_error(model, rot, x, "trivial", relative=True)
    torch.testing.assert_close(rel_eq, relative)


def test_bool_outputs_are_compared_as_0_and_1():
    """A model returning flags (logits > 0): bool tensors cannot be subtracted (NotImplementedError before)."""
    rot = ti.get_group("rotation", order=4)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda z: z.flatten(1)[:, :3] > 0  # noqa: E731
    got = ti.invariance_error(model, rot, x)
    expected = [int((model(torch.rot90(x, k, (-2, -1))) != model(x)).any()) for k in range(4)]
    assert got.tolist() == expected and expected[0] == 0 and max(expected) == 1
    torch.testing.assert_close(ti.invariance_error(model, rot, x, relative=True), got.float())  # max |f(x)| = 1
    with pytest.raises(AssertionError, match="not invariant"):
        ti.assert_invariant(model, rot, x)
    # class indices: a failing assertion crashed ranking the errors (inf cannot be an int64) instead of failing
    with pytest.raises(AssertionError, match=r"not invariant.*computed in torch.int64"):
        ti.assert_invariant(lambda z: z.flatten(1)[:, :3].argmax(1), rot, x)


def test_dtype_with_a_plain_function_names_the_cause():
    """dtype= casts an nn.Module; a function closing over float32 weights failed with a bare matmul dtype error."""
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    rot = ti.get_group("rotation", order=4)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(TypeError, match=r"dtype=torch.float64 casts x and an nn.Module's parameters.*function"):
        ti.assert_invariant(lambda z: lin(z), rot, x, dtype=torch.float64)
    assert ti.invariance_error(lin, rot, x, dtype=torch.float64).dtype == torch.float64  # the module itself: cast
    assert ti.invariance_error(lambda z: z.sum((1, 2, 3)), rot, x, dtype=torch.float64).dtype == torch.float64
