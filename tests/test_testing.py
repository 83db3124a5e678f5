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
