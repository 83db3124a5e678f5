"""The divergences layer (divergences.py): per-sample and broadcast forms agree, reductions, error messages."""

import numpy as np
import pytest
import scipy.special
import torch

import torchinvariance as ti
from torchinvariance.divergences import DIVERGENCES, check_reduction, orbit_divergence, reduce

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_broadcast_terms_and_total_equal_the_per_sample_form(name):
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(5, 4, generator=g, dtype=F64)
    fgx = torch.randn(3, 5, 4, generator=g, dtype=F64)
    ref = torch.stack([DIVERGENCES[name](fx, fgx[i]) for i in range(3)])
    torch.testing.assert_close(orbit_divergence(name, fx, fgx), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(orbit_divergence(name, fx, fgx, total=True), ref.sum(), rtol=1e-12, atol=1e-14)
    # a callable with the same maths takes the generic path and agrees too
    generic = orbit_divergence(lambda a, b: DIVERGENCES[name](a, b), fx, fgx)
    torch.testing.assert_close(generic, ref, rtol=1e-12, atol=1e-14)


def test_kl_matches_scipy_rel_entr():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, 5, generator=g, dtype=F64)
    u, q = torch.softmax(a, -1).numpy(), torch.softmax(b, -1).numpy()
    np.testing.assert_allclose(ti.kl_divergence(a, b).numpy(), scipy.special.rel_entr(u, q).sum(-1), rtol=1e-12)


def test_kl_with_masked_logits_is_zero_where_distributions_agree_and_has_finite_gradients():
    t = torch.tensor([[0.0, float("-inf"), 1.0]])
    assert torch.equal(ti.kl_divergence(t, t), torch.zeros(1))
    a = torch.tensor([[0.0, float("-inf"), 1.0]], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.5, float("-inf"), 0.2]], dtype=F64, requires_grad=True)
    value = ti.kl_divergence(a, b)
    u, q = torch.softmax(a, -1).detach(), torch.softmax(b, -1).detach()
    expected = (u[:, [0, 2]] * (u[:, [0, 2]].log() - q[:, [0, 2]].log())).sum(-1)
    torch.testing.assert_close(value.detach(), expected)
    value.sum().backward()
    assert torch.isfinite(a.grad[:, [0, 2]]).all() and torch.isfinite(b.grad[:, [0, 2]]).all()
    # and the broadcast form used by the loss
    fgx = torch.stack([t, t])
    assert torch.equal(orbit_divergence("kl", t, fgx), torch.zeros(2, 1))


def test_half_precision_is_compared_in_float32():
    fx = torch.randn(2, 3).to(torch.bfloat16)
    assert orbit_divergence("l2", fx, torch.stack([fx, fx])).dtype == torch.float32


def test_reductions():
    v = torch.arange(6.0).reshape(2, 3)
    assert reduce(v, "mean") == 2.5 and reduce(v, "sum") == 15 and reduce(v, "none") is v
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'max'"):
        check_reduction("max")


def test_errors():
    with pytest.raises(ValueError, match="divergence must be one of"):
        orbit_divergence("l3", torch.zeros(2, 3), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"must return one value per sample.*shape \(4,\); got \(\)"):
        orbit_divergence(lambda a, b: (a - b).sum(), torch.zeros(2, 3), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"needs classifier logits shaped \(batch, classes\)"):
        ti.kl_divergence(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


def test_detached_denominator_has_the_same_value_and_no_gradient_through_the_norm():
    fx = torch.randn(3, 4, dtype=F64, requires_grad=True)
    fgx = torch.randn(3, 4, dtype=F64)
    a = ti.normalized_l2_divergence(fx, fgx)
    b = ti.normalized_l2_divergence(fx, fgx, detach_denominator=True)
    torch.testing.assert_close(a, b)
    (gb,) = torch.autograd.grad(b.sum(), fx)
    denom = fx.detach().pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(gb, 2 * (fx.detach() - fgx) / denom)  # only the numerator is differentiated
    (ga,) = torch.autograd.grad(a.sum(), fx)
    assert not torch.allclose(ga, gb)


@pytest.mark.parametrize("name", ["l2", "normalized_l2"])  # kl needs logits (B, C)
def test_one_value_per_sample_outputs_broadcast_like_the_per_sample_form(name):
    # a regression model returns (B,), one scalar per sample: the orbit outputs are (n, B) with no feature dim
    g = torch.Generator().manual_seed(2)
    fx = torch.randn(5, generator=g, dtype=F64)
    fgx = torch.randn(3, 5, generator=g, dtype=F64)
    ref = torch.stack([DIVERGENCES[name](fx, fgx[i]) for i in range(3)])
    torch.testing.assert_close(orbit_divergence(name, fx, fgx), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(orbit_divergence(name, fx, fgx, total=True), ref.sum(), rtol=1e-12, atol=1e-14)


def test_scalar_output_models_work_in_the_loss_and_logit_invariance():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1), torch.nn.Flatten(0)).double()
    rot = ti.get_group("rotation", order=4)
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    fx = model(x)
    rows = torch.stack([model(torch.rot90(x, k, (-2, -1))) for k in range(4)])  # (4, B)
    ref = 0.5 * (rows - fx) ** 2
    torch.testing.assert_close(ti.InvarianceLoss(model, rot, reduction="none")(x), ref)
    torch.testing.assert_close(ti.logit_invariance(model, rot, x), ref[1:].mean())
    norm = ti.InvarianceLoss(model, rot, divergence="normalized_l2", reduction="none")(x)
    torch.testing.assert_close(norm, (rows - fx) ** 2 / fx**2)
