"""DI, LI, SI and saliency maps against independent references (numpy / scipy)."""

import sys

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from helpers import BUILTIN_GROUPS, OrbitAveraged, group_id, make_group, mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64


def _x(b=4, c=1, h=6, w=6, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype)


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
    model, x = mlp(36, classes=5, dtype=F64, seed=3), _x(b=5, seed=1)
    logits = _orbit_logits_np(model, group, x)
    p = _softmax(logits)
    ref = np.array([[scipy.stats.entropy(p[0, b], p[i, b]) for b in range(5)] for i in range(group.order)])
    with torch.no_grad():
        got = ti.distribution_invariance(model, group, x, reduction="none")
    assert got.shape == (group.order, 5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ti.distribution_invariance(model, group, x).item(), ref.mean(), rtol=1e-9)
    np.testing.assert_allclose(ti.distribution_invariance(model, group, x, "sum").item(), ref.sum(), rtol=1e-9)
    assert ref[1:].min() > 1e-6  # the random model is not invariant: the metric can fail


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_logit_invariance_matches_numpy(spec):
    group = make_group(spec)
    model, x = mlp(36, classes=4, dtype=F64, seed=5), _x(b=3, seed=2)
    logits = _orbit_logits_np(model, group, x)
    ref = 0.5 * ((logits[:1] - logits) ** 2).sum(-1)
    got = ti.logit_invariance(model, group, x, reduction="none")
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ti.logit_invariance(model, group, x).item(), ref.mean(), rtol=1e-9)
    np.testing.assert_allclose(ti.logit_invariance(model, group, x, reduction="sum").item(), ref.sum(), rtol=1e-9)
    assert ref[1:].min() > 1e-6


def test_logit_invariance_any_output_shape_and_float32():
    group = ti.get_group("rotation", order=4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh())  # (N, 2, 4, 4) feature maps
    x = _x(b=2, dtype=torch.float32)
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
    li = ti.logit_invariance(model, group, _x(b=3))
    ti.distribution_invariance(model, group, _x(b=3))
    assert calls == [24, 24]
    li.backward()  # differentiable like InvarianceLoss
    assert inner[1].weight.grad is not None


def test_li_equals_invariance_loss():
    group = ti.get_group("rotation", order=4)
    model, x = mlp(36, dtype=F64), _x()
    loss = ti.InvarianceLoss(model, group, divergence="l2", reduction="none")(x)
    torch.testing.assert_close(ti.logit_invariance(model, group, x, reduction="none"), loss)


# ----------------------------------------------------------------------------- exact invariance
@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_exactly_invariant_model_every_element(spec):
    group = make_group(spec)
    model = OrbitAveraged(mlp(36, classes=5, dtype=F64, seed=7), group).eval()
    x = _x(b=4, seed=3)
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
        assert ti.distribution_invariance(model, group, _x(dtype=torch.float32), reduction="none").abs().max() <= 1e-6
        assert ti.logit_invariance(model, group, _x(dtype=torch.float32), reduction="none").abs().max() <= 1e-6


def test_exactly_invariant_model_default_n_steps():
    group = ti.get_group("dihedral")
    model = OrbitAveraged(mlp(36, classes=5, dtype=F64, seed=11), group).eval()
    si = ti.saliency_invariance(model, group, _x(b=3, seed=4), reduction="none")  # n_steps=50
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
    x = _x(b=6, h=12, w=12, seed=5)
    si = ti.saliency_invariance(model, group, x, n_steps=8, reduction="none")
    torch.testing.assert_close(si[0], torch.ones(6, dtype=F64))
    # the realigned maps of rotated inputs sit in other quadrants: (almost) no overlap
    assert si[1:].max() < 0.35
    assert ti.saliency_invariance(model, group, x, n_steps=8) < 0.5


# ----------------------------------------------------------------------------- saliency map reference
def _linear_model(c=2, h=6, w=6, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)).double()


def _reference_map(x, weight_rows, threshold, sigma, radius, mode):
    """IG of a linear model from a zero baseline is exactly x * w; then numpy/scipy post-processing."""
    a = np.abs(x * weight_rows).sum(1)  # (B, H, W), summed over channels
    a = np.where(a >= threshold * a.max(axis=(1, 2), keepdims=True), a, 0.0)
    if radius == 0:
        return a
    return np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma, truncate=radius / sigma, mode=mode) for m in a])


@pytest.mark.parametrize(("padding", "mode"), [("circular", "wrap"), ("reflect", "mirror"), ("zeros", "constant")])
@pytest.mark.parametrize(("threshold", "kernel_size", "sigma"), [(0.9, 3, 1.0), (0.0, 5, 0.7), (0.5, 1, 1.0)])
def test_saliency_map_linear_model_matches_scipy(padding, mode, threshold, kernel_size, sigma):
    model = _linear_model()
    x = _x(b=3, c=2, seed=6)
    target = torch.tensor([2, 0, 1])
    got = ti.saliency_map(
        model, x, target=target, n_steps=5, threshold=threshold, kernel_size=kernel_size, sigma=sigma, padding=padding
    )
    w = model[1].weight.detach().numpy()[target.numpy()].reshape(3, 2, 6, 6)
    ref = _reference_map(x.numpy(), w, threshold, sigma, kernel_size // 2, mode)
    assert got.shape == (3, 6, 6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_saliency_map_default_target_is_prediction_and_3d_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).double()
    x = _x(b=5, seed=7)[:, 0]  # (B, H, W) without a channel dim
    pred = model(x).argmax(1)
    torch.testing.assert_close(ti.saliency_map(model, x, n_steps=4), ti.saliency_map(model, x, target=pred, n_steps=4))
    w = model[1].weight.detach().numpy()[pred.numpy()].reshape(5, 1, 6, 6)
    ref = _reference_map(x.numpy()[:, None], w, 0.9, 1.0, 1, "wrap")
    np.testing.assert_allclose(ti.saliency_map(model, x, n_steps=4).numpy(), ref, rtol=1e-9, atol=1e-12)


def test_saliency_map_nonlinear_model_is_ig_of_target():
    """Against a hand-written Riemann-sum IG (many steps), no threshold, no blur."""
    model = mlp(36, classes=3, dtype=F64, seed=2)
    x = _x(b=2, seed=8)
    alphas = (torch.arange(2000, dtype=F64) + 0.5) / 2000
    path = (alphas.reshape(-1, 1, 1, 1, 1) * x).reshape(-1, 1, 6, 6).requires_grad_(True)
    model(path)[:, 1].sum().backward()
    ref = (x * path.grad.reshape(2000, 2, 1, 6, 6).mean(0)).abs().sum(1)
    got = ti.saliency_map(model, x, target=1, threshold=0.0, kernel_size=1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- saliency invariance details
def test_saliency_invariance_matches_per_element_reference_with_same_target():
    group = ti.get_group("dihedral")
    model = mlp(36, classes=3, dtype=F64, seed=9)
    x = _x(b=3, seed=9)
    pred = model(x).argmax(1)
    maps = [ti.saliency_map(model, group.act(g, x), target=pred, n_steps=6) for g in group.elements()]
    aligned = np.stack([group.act(group.inverse(g), m).numpy() for g, m in zip(group.elements(), maps)])
    a, ref_map = aligned.reshape(8, 3, -1), aligned[0].reshape(3, -1)
    ref = (a * ref_map).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(ref_map, axis=-1))
    got = ti.saliency_invariance(model, group, x, n_steps=6, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    # an explicit target is used for every orbit element
    other = (pred + 1) % 3
    maps = [ti.saliency_map(model, group.act(g, x), target=other, n_steps=6) for g in group.elements()]
    m1 = group.act(group.inverse(1), maps[1]).reshape(3, -1)
    m0 = maps[0].reshape(3, -1)
    ref1 = (m1 * m0).sum(-1) / (m1.norm(dim=-1) * m0.norm(dim=-1))
    got1 = ti.saliency_invariance(model, group, x, target=other, n_steps=6, reduction="none")[1]
    torch.testing.assert_close(got1, ref1)


def test_saliency_invariance_one_captum_call(monkeypatch):
    from captum.attr import IntegratedGradients

    calls = []
    original = IntegratedGradients.attribute

    def spy(self, inputs, *args, **kwargs):
        calls.append((inputs.shape[0], kwargs.get("internal_batch_size"), kwargs.get("n_steps")))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(IntegratedGradients, "attribute", spy)
    group = ti.get_group("dihedral")
    ti.saliency_invariance(mlp(36, dtype=F64), group, _x(b=3), n_steps=7, backend="captum")
    assert calls == [(24, 24 * 7, 7)]  # whole orbit, all steps in one chunk for small inputs
    calls.clear()
    ti.saliency_invariance(mlp(36, dtype=F64), group, _x(b=3), n_steps=7, internal_batch_size=48, backend="captum")
    assert calls == [(24, 48, 7)]
    calls.clear()
    ti.saliency_invariance(mlp(36, dtype=F64), group, _x(b=3), n_steps=7)
    assert calls == []  # the default backend does not go through captum


def test_chunked_integrated_gradients_equal_one_pass():
    group = ti.get_group("rotation", order=4)
    model, x = mlp(36, dtype=F64, seed=4), _x(b=2)
    one_pass = ti.saliency_invariance(model, group, x, n_steps=9, reduction="none")
    chunked = ti.saliency_invariance(model, group, x, n_steps=9, internal_batch_size=8, reduction="none")
    torch.testing.assert_close(chunked, one_pass)
    torch.testing.assert_close(
        ti.saliency_map(model, x, n_steps=9, internal_batch_size=2), ti.saliency_map(model, x, n_steps=9)
    )


def test_saliency_invariance_reductions_and_zero_maps():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, dtype=F64)
    x = _x(b=3)
    none = ti.saliency_invariance(model, group, x, n_steps=4, reduction="none")
    torch.testing.assert_close(ti.saliency_invariance(model, group, x, n_steps=4), none.mean())
    torch.testing.assert_close(ti.saliency_invariance(model, group, x, n_steps=4, reduction="sum"), none.sum())
    # x = 0: IG from the zero baseline is 0 everywhere; documented: all-zero maps have similarity 0
    zero = torch.zeros(2, 1, 6, 6, dtype=F64)
    assert ti.saliency_map(model, zero, n_steps=4).abs().max() == 0
    si = ti.saliency_invariance(model, group, zero, n_steps=4, reduction="none")
    assert torch.equal(si, torch.zeros(4, 2, dtype=F64))


# ----------------------------------------------------------------------------- IG backends: torch vs captum
def _conv_classifier(seed=0, classes=4):
    """Nonlinear multi-channel classifier (3 input channels) in float64, eval mode."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, classes))
        .double()
        .eval()
    )


def test_gauss_legendre_steps_are_captums():
    from captum.attr._utils.approximation_methods import approximation_parameters

    from torchinvariance.metrics._functional import _gauss_legendre

    step_sizes, alphas = approximation_parameters("gausslegendre")
    for n in (1, 2, 7, 50):
        got_alphas, got_weights = _gauss_legendre(n)
        np.testing.assert_allclose(got_alphas, alphas(n), rtol=0, atol=1e-15)
        np.testing.assert_allclose(got_weights, step_sizes(n), rtol=0, atol=1e-15)
        assert abs(sum(got_weights) - 1.0) < 1e-13


@pytest.mark.parametrize("n_steps", [1, 7, 50])
@pytest.mark.parametrize("steps_per_chunk", [None, 1, 3])
def test_torch_ig_equals_captum_integrated_gradients(n_steps, steps_per_chunk):
    """Raw attributions (signed, per channel) against captum's IntegratedGradients itself."""
    from captum.attr import IntegratedGradients

    from torchinvariance.metrics._functional import _integrated_gradients

    model, x = _conv_classifier(seed=n_steps), _x(b=6, c=3, seed=11)
    target = torch.tensor([0, 1, 2, 3, 2, 0])  # every class, different per sample
    ibs = None if steps_per_chunk is None else 6 * steps_per_chunk
    ref = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps, internal_batch_size=ibs
    )
    got = _integrated_gradients(model, x, target, n_steps, ibs, "torch")
    assert got.dtype == F64 and got.shape == x.shape and not got.requires_grad
    # captum rounds its step weights to float32 (relative 6e-8), hence 1e-7 and not 1e-15
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9 * float(ref.abs().max()))
    assert float(ref.abs().max()) > 1e-2  # the comparison is not between two near-zero tensors


def test_saliency_backends_agree():
    group = ti.get_group("dihedral")
    model, x = _conv_classifier(seed=5), _x(b=3, c=3, seed=12)
    for kwargs in ({}, {"internal_batch_size": 24 * 8}, {"target": 1, "threshold": 0.0, "kernel_size": 1}):
        torch.testing.assert_close(
            ti.saliency_map(model, x, **kwargs),
            ti.saliency_map(model, x, backend="captum", **kwargs),
            rtol=1e-7,
            atol=1e-12,
        )
        torch.testing.assert_close(
            ti.saliency_invariance(model, group, x, reduction="none", **kwargs),
            ti.saliency_invariance(model, group, x, reduction="none", backend="captum", **kwargs),
            rtol=1e-7,
            atol=1e-9,
        )
    metrics = {}
    for backend in ("torch", "captum"):
        metrics[backend] = ti.SaliencyInvariance(model, group, n_steps=12, backend=backend)
        metrics[backend].update(x)
    torch.testing.assert_close(metrics["torch"].compute(), metrics["captum"].compute(), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="backend must be one of"):
        ti.SaliencyInvariance(model, group, backend="jax")


def test_evaluate_invariance_passes_the_backend_through(monkeypatch):
    import torchinvariance.metrics._functional as functional

    seen = []
    original = functional._integrated_gradients

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(functional, "_integrated_gradients", spy)
    model, group = _conv_classifier(seed=6), ti.get_group("rotation", order=4)
    data = [(_x(b=2, c=3, seed=13), torch.tensor([0, 1]))]
    reports = {
        backend: ti.evaluate_invariance(model, group, data, metrics=("si",), progress=False, n_steps=6, backend=backend)
        for backend in ("torch", "captum")
    }
    assert seen == ["torch", "captum"]
    np.testing.assert_allclose(
        reports["torch"].to_dict()["si"]["per_element"], reports["captum"].to_dict()["si"]["per_element"], rtol=1e-7
    )


def test_torch_backend_one_forward_and_one_grad_per_chunk(monkeypatch):
    """The whole orbit in one call: one forward and one autograd.grad per chunk of steps, no captum."""
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    rows, grads = [], []
    original_grad = torch.autograd.grad

    def grad_spy(outputs, inputs, *args, **kwargs):
        grads.append((tuple(outputs.shape), inputs.shape[0]))
        return original_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad_spy)
    inner = mlp(36, dtype=F64).eval()

    def model(x):
        rows.append(x.shape[0])
        return inner(x)

    group = ti.get_group("dihedral")
    ti.saliency_invariance(model, group, _x(b=3), n_steps=7)
    assert rows == [3, 24 * 7]  # f(x) for the target, then ALL steps of the whole orbit in one forward
    assert grads == [((), 24 * 7)]  # one scalar, one backward
    rows.clear(), grads.clear()
    ti.saliency_invariance(model, group, _x(b=3), n_steps=7, internal_batch_size=48)
    assert rows == [3, 48, 48, 48, 24]  # 2 steps of the 24 orbit rows per chunk: 2 + 2 + 2 + 1
    assert grads == [((), 48)] * 3 + [((), 24)]


def test_torch_backend_under_no_grad_and_with_trainable_parameters():
    """Works inside ``torch.no_grad()`` and leaves the parameters' ``.grad`` untouched."""
    model, x = _conv_classifier(seed=7), _x(b=2, c=3, seed=14)
    ref = ti.saliency_map(model, x, n_steps=5)
    with torch.no_grad():
        torch.testing.assert_close(ti.saliency_map(model, x, n_steps=5), ref)
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- errors
def test_errors_bad_reduction_and_group_shape():
    model = mlp(36, dtype=F64)
    rot, shift = ti.get_group("rotation", order=4), ti.get_group("translation", order=3)
    for fn in (ti.distribution_invariance, ti.logit_invariance, ti.saliency_invariance):
        with pytest.raises(ValueError, match="reduction must be one of"):
            fn(model, rot, _x(), reduction="avg")
        with pytest.raises(ValueError, match="square"):
            fn(mlp(24, dtype=F64), rot, _x(h=6, w=4))
        with pytest.raises(ValueError, match="divisible by 3"):
            fn(mlp(24, dtype=F64), shift, _x(h=6, w=4))
        with pytest.raises(ValueError, match="non-empty"):
            fn(model, rot, _x(b=0))
        with pytest.raises(TypeError, match="Group"):
            fn(model, "rotation", _x())


def test_errors_non_finite_outputs():
    class Nan(nn.Module):
        def forward(self, x):
            out = x.flatten(1)[:, :3].clone()
            out[x.flatten(1)[:, 0] > 0] = float("nan")  # NaN only where pixel (0, 0) is positive
            return out

    group = ti.get_group("rotation", order=4)
    x = torch.ones(2, 1, 6, 6, dtype=F64)
    x[:, :, 0, 0] = -1.0  # fine on the identity, NaN once the corner moves
    for fn in (ti.distribution_invariance, ti.logit_invariance):
        with pytest.raises(ValueError, match=r"NaN or Inf on the orbit elements \['rot90', 'rot180', 'rot270'\]"):
            fn(Nan(), group, x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ti.saliency_invariance(Nan(), group, -x)


def test_errors_targets_and_outputs():
    model = mlp(36, classes=3, dtype=F64)
    group = ti.get_group("rotation", order=4)
    for bad in (3, -1, [0, 1, 5, 0]):
        with pytest.raises(ValueError, match=r"target out of range: the model has 3 classes"):
            ti.saliency_invariance(model, group, _x(), target=bad, n_steps=2)
        with pytest.raises(ValueError, match="target out of range"):
            ti.saliency_map(model, _x(), target=bad, n_steps=2)
    with pytest.raises(ValueError, match="one class per sample"):
        ti.saliency_map(model, _x(), target=[0, 1], n_steps=2)
    with pytest.raises(TypeError, match="integer class"):
        ti.saliency_map(model, _x(), target=torch.tensor([0.5] * 4), n_steps=2)
    features = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"logits shaped \(batch, classes\)"):
        ti.distribution_invariance(features.double(), group, _x())
    with pytest.raises(ValueError, match="logits"):
        ti.saliency_map(features.double(), _x(), n_steps=2)
    with pytest.raises(TypeError, match="floating point"):
        ti.saliency_map(model, torch.ones(2, 1, 6, 6, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 0}, "n_steps"),
        ({"threshold": 1.5}, "threshold"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"sigma": 0.0}, "sigma"),
        ({"padding": "replicate"}, "padding must be one of"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
        ({"internal_batch_size": 10}, "smaller than the 16 inputs"),
        ({"internal_batch_size": 10, "backend": "captum"}, "smaller than the 16 inputs"),
        ({"backend": "numpy"}, r"backend must be one of \('torch', 'captum'\).*got 'numpy'"),
        ({"backend": None}, "backend must be one of"),
    ],
)
def test_errors_saliency_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ti.saliency_invariance(mlp(36, dtype=F64), ti.get_group("rotation", order=4), _x(), **kwargs)


def test_missing_captum_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install torchinvariance\[saliency\]"):
        ti.saliency_map(mlp(36, dtype=F64), _x(), n_steps=2, backend="captum")
    # the default (plain torch) saliency backend, DI and LI do not need captum
    assert ti.saliency_map(mlp(36, dtype=F64), _x(), n_steps=2).shape == (4, 6, 6)
    ti.logit_invariance(mlp(36, dtype=F64), ti.get_group("flip"), _x())
