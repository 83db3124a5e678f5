"""Integrated gradients (metrics/_integrated_gradients.py): the torch backend against captum, chunking, backends."""

import sys

import numpy as np
import pytest
import torch
from helpers import image_batch, mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64


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

    from torchinvariance.metrics._integrated_gradients import _gauss_legendre

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

    from torchinvariance.metrics._integrated_gradients import integrated_gradients as _integrated_gradients

    model, x = _conv_classifier(seed=n_steps), image_batch(b=6, c=3, seed=11)
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
    model, x = _conv_classifier(seed=5), image_batch(b=3, c=3, seed=12)
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
    import torchinvariance.metrics.saliency as saliency

    seen = []
    original = saliency.integrated_gradients

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(saliency, "integrated_gradients", spy)
    model, group = _conv_classifier(seed=6), ti.get_group("rotation", order=4)
    data = [(image_batch(b=2, c=3, seed=13), torch.tensor([0, 1]))]
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
    ti.saliency_invariance(model, group, image_batch(b=3), n_steps=7)
    assert rows == [3, 24 * 7]  # f(x) for the target, then ALL steps of the whole orbit in one forward
    assert grads == [((), 24 * 7)]  # one scalar, one backward
    rows.clear(), grads.clear()
    ti.saliency_invariance(model, group, image_batch(b=3), n_steps=7, internal_batch_size=48)
    assert rows == [3, 48, 48, 48, 24]  # 2 steps of the 24 orbit rows per chunk: 2 + 2 + 2 + 1
    assert grads == [((), 48)] * 3 + [((), 24)]


def test_torch_backend_under_no_grad_and_with_trainable_parameters():
    """Works inside ``torch.no_grad()`` and leaves the parameters' ``.grad`` untouched."""
    model, x = _conv_classifier(seed=7), image_batch(b=2, c=3, seed=14)
    ref = ti.saliency_map(model, x, n_steps=5)
    with torch.no_grad():
        torch.testing.assert_close(ti.saliency_map(model, x, n_steps=5), ref)
    assert all(p.grad is None for p in model.parameters())
