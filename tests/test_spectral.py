"""Input-Jacobian and weight spectral norms vs numpy SVD; the paper's Proposition 3.1."""

import numpy as np
import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti
from torchinvariance.spectral import _power as _original_power

F64 = torch.float64


def _linear(out_features=4, in_features=12, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias).double()


@pytest.mark.parametrize("method", ["auto", "exact", "power"])
def test_linear_model_equals_top_singular_value(method):
    lin = _linear()
    x = torch.randn(3, 12, dtype=F64)
    top = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)[0]
    got = ti.jacobian_spectral_norm(lin, x, method=method)
    assert got.shape == (3,) and got.dtype == F64 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), top, rtol=1e-7)


@pytest.mark.parametrize("method", ["exact", "power"])
def test_two_layer_net_matches_svd_of_autograd_jacobian(method):
    net = mlp(36, classes=5, hidden=16, dtype=F64, seed=3)
    x = torch.randn(4, 1, 6, 6, dtype=F64)
    jac = torch.autograd.functional.jacobian(net, x).reshape(4, 5, 4, 36)
    ref = [np.linalg.svd(jac[b, :, b].numpy(), compute_uv=False)[0] for b in range(4)]
    got = ti.jacobian_spectral_norm(net, x, method=method)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    assert np.ptp(ref) > 1e-3  # per-sample values really differ: no mixing across the batch


def test_auto_uses_power_for_large_outputs(monkeypatch):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(100, 36, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(36, 36, dtype=F64))
    spectrum = torch.linspace(1.0, 0.1, 36, dtype=F64)
    spectrum[0] = 3.0
    lin = nn.Linear(36, 100).double()
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(spectrum) @ v.T)
    net = nn.Sequential(nn.Flatten(), lin)
    x = torch.randn(2, 1, 6, 6, dtype=F64)
    import torchinvariance.spectral as spectral

    used = []
    monkeypatch.setattr(spectral, "_power", lambda *a: used.append("power") or _original_power(*a))
    np.testing.assert_allclose(ti.jacobian_spectral_norm(net, x).numpy(), 3.0, rtol=1e-7)
    assert used == ["power"]  # 100 outputs > 64: no full Jacobian
    np.testing.assert_allclose(ti.jacobian_spectral_norm(net, x, method="exact").numpy(), 3.0, rtol=1e-12)
    # power iteration approaches the top singular value from below
    few = ti.jacobian_spectral_norm(net, x, method="power", n_iter=1, tol=0)
    assert (few <= 3.0 * (1 + 1e-12)).all() and (few > 1.0).all()


def test_weight_spectral_norms_linear_and_conv():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5), nn.Linear(5, 2))
    norms = ti.weight_spectral_norms(net)
    assert list(norms) == ["0.weight", "3.weight", "4.weight"]
    for key, module in (("0.weight", net[0]), ("3.weight", net[3]), ("4.weight", net[4])):
        w = module.weight.detach().double().numpy()
        np.testing.assert_allclose(
            norms[key], np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0], rtol=1e-12
        )
        assert type(norms[key]) is float
    assert ti.weight_spectral_norms(nn.Linear(3, 2)).keys() == {"weight"}
    assert ti.weight_spectral_norms(nn.ReLU()) == {}


def test_errors():
    lin = _linear()
    x = torch.randn(2, 12, dtype=F64)
    with pytest.raises(ValueError, match="method must be one of"):
        ti.jacobian_spectral_norm(lin, x, method="svd")
    with pytest.raises(ValueError, match="n_iter"):
        ti.jacobian_spectral_norm(lin, x, method="power", n_iter=0)
    with pytest.raises(TypeError, match="floating point"):
        ti.jacobian_spectral_norm(lin, torch.ones(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        ti.jacobian_spectral_norm(lin, x[:0])
    with pytest.raises(TypeError, match=r"nn\.Module"):
        ti.weight_spectral_norms(lambda t: t)


# ----------------------------------------------------------------------------- Proposition 3.1
def _logit_invariance_descent(sign, steps=40, seed=0):
    """Gradient steps (sign=+1 descent, -1 ascent) on the LI loss of h(x) = W x; spectral norms per step."""
    torch.manual_seed(seed)
    group = ti.get_group("rotation", order=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5, bias=False)).double()
    x = torch.randn(6, 1, 6, 6, dtype=F64)
    loss_fn = ti.InvarianceLoss(model, group, divergence="l2")
    # Sigma = mean over (g, x) of eps eps^T with eps = x - g x; the mean-reduced LI gradient is W Sigma
    eps = (x.unsqueeze(0) - group.orbit(x)).reshape(4 * 6, 36)
    sigma = eps.T @ eps / eps.shape[0]
    lr = 1.0 / torch.linalg.eigvalsh(sigma).max().item()
    weight = model[1].weight
    norms = [ti.jacobian_spectral_norm(model, x[:1]).item()]
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = loss_fn(x)
        losses.append(loss.item())
        loss.backward()
        torch.testing.assert_close(weight.grad, weight.detach() @ sigma)  # the proof's gradient
        with torch.no_grad():
            weight -= sign * 0.5 * lr * weight.grad
        norms.append(ti.jacobian_spectral_norm(model, x[:1]).item())
        np.testing.assert_allclose(norms[-1], ti.weight_spectral_norms(model)["1.weight"], rtol=1e-10)
    return np.array(norms), np.array(losses)


def test_proposition_3_1_logit_invariance_descent_never_increases_spectral_norm():
    norms, losses = _logit_invariance_descent(+1)
    assert (np.diff(norms) <= 1e-12 * norms[0]).all()
    assert norms[-1] < 0.99 * norms[0]  # and it does decay
    assert losses[-1] < 0.05 * losses[0]


def test_proposition_3_1_check_can_fail():
    norms, _ = _logit_invariance_descent(-1, steps=5)  # gradient ASCENT on LI increases the norm
    assert (np.diff(norms) > 0).all()


@pytest.mark.parametrize("method", ["exact", "power"])
def test_a_train_mode_batchnorm_model_is_measured_in_eval_mode_and_left_as_it_was(method):
    """Before: a train-mode BatchNorm failed on the one-sample probe ("Expected more than 1 value per channel")."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 4, dtype=torch.float64)
    got = ti.jacobian_spectral_norm(model, x, method=method)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no running statistic moved
    # eval mode: the model is affine, J = W2 diag(gamma / sqrt(var + eps)) W1 for every sample
    w = (
        model[2].weight
        @ torch.diag(model[1].weight / torch.sqrt(model[1].running_var + model[1].eps))
        @ model[0].weight
    )
    expected = torch.linalg.matrix_norm(w.detach(), ord=2)
    torch.testing.assert_close(got, expected.expand(5), rtol=1e-6, atol=1e-9)
    # eval_mode=False keeps train mode: the batch statistics couple the samples, and one sample cannot be probed
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ti.jacobian_spectral_norm(model, x, method=method, eval_mode=False)


@pytest.mark.parametrize("method", ["exact", "power"])
def test_a_model_returning_a_dict_with_logits_is_measured_like_its_logits(method):
    # was "the model must return a tensor with the batch (1) in dim 0; got dict", though the metrics take such models
    net = mlp(12, 3, dtype=F64)
    x = torch.randn(4, 12, dtype=F64)
    plain = ti.jacobian_spectral_norm(net, x, method=method)
    wrapped = ti.jacobian_spectral_norm(lambda t: {"logits": net(t)}, x, method=method)
    assert torch.allclose(wrapped, plain, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one output per sample"):
        ti.jacobian_spectral_norm(lambda t: {"scores": net(t)}, x, method=method)
