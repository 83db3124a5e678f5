"""discover_symmetries (LieGG): against explicit loops, finite differences of the model, and models whose
symmetries are known by construction (and one that has none, so the checks can fail)."""

import math

import numpy as np
import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti
from torchinvariance.symmetry import REFERENCE_GENERATORS, affine_coordinates

DT = torch.float64


def blobs(b, seed=0, shrink=1.0):
    """Parameters of smooth test images: 4 Gaussian blobs each, well inside the unit disk (closer with shrink < 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(b, 4, 2, generator=g, dtype=DT) - 0.5) * 0.8 * shrink
    widths = (0.15 + 0.1 * torch.rand(b, 4, generator=g, dtype=DT)) * shrink
    amps = torch.randn(b, 4, generator=g, dtype=DT)
    return centres, widths, amps


def render(params, u, v):
    """The images and their exact derivatives d/du, d/dv at the points (u, v) (any shape, broadcast per sample)."""
    centres, widths, amps = params
    du_ = u[None, None] - centres[..., 0, None, None]
    dv_ = v[None, None] - centres[..., 1, None, None]
    w2 = widths[..., None, None] ** 2
    e = amps[..., None, None] * torch.exp(-(du_**2 + dv_**2) / (2 * w2))
    return e.sum(1), (-e * du_ / w2).sum(1), (-e * dv_ / w2).sum(1)


class Continuum(nn.Module):
    """A model of the continuous image: a tiny MLP of the integrals of the image against smooth templates."""

    def __init__(self, size, templates, outputs=3, seed=1):
        super().__init__()
        area = (2.0 / size) ** 2
        self.register_buffer("templates", templates * area)
        torch.manual_seed(seed)
        self.mlp = nn.Sequential(nn.Linear(templates.shape[0], 16), nn.Tanh(), nn.Linear(16, outputs)).to(DT)

    def forward(self, x):
        return self.mlp((x[:, None] * self.templates).sum((-2, -1)))


def radial_model(size):
    """Rotation-invariant by construction: it sees only ring integrals of the image."""
    u, v = affine_coordinates(size, size)
    r = (u**2 + v**2).sqrt()
    rings = torch.stack([torch.exp(-((r - c) ** 2) / (2 * 0.12**2)) for c in torch.linspace(0, 0.8, 5).tolist()])
    return Continuum(size, rings)


def generic_model(size, seed=3):
    """No symmetry: templates are random blobs."""
    u, v = affine_coordinates(size, size)
    templates, _, _ = render(blobs(4, seed=seed), u, v)
    return Continuum(size, templates)


def rotation_distance(model, size, stencil="central", b=16):
    u, v = affine_coordinates(size, size)
    x, _, _ = render(blobs(b), u, v)
    spectrum = ti.discover_symmetries(model, x, stencil=stencil)
    return spectrum.distances["rotation"][0].item(), spectrum


def test_rotation_invariant_model_finds_the_rotation_generator():
    d4, spectrum = rotation_distance(radial_model(32), 32, stencil="central4")
    assert d4 < 1e-3  # measured 1.1e-4
    assert spectrum.nearest()[0][0] == "rotation"
    s = spectrum.singular_values
    assert (s[1:] >= s[:-1]).all() and s[0] < 1e-2 * s[1]
    # the 3-point stencil: second order in the pixel size (measured 2.7e-3 at 16, 9.2e-4 at 32)
    d16, _ = rotation_distance(radial_model(16), 16)
    d32, _ = rotation_distance(radial_model(32), 32)
    assert d32 < 1.2e-3 and d32 < d16 / 2.5


def test_generic_models_have_no_rotation_generator():
    """Test the tester: the same check fails on models that are not rotation-invariant."""
    d, spectrum = rotation_distance(generic_model(32), 32, stencil="central4")
    assert d > 0.1
    x = render(blobs(16), *affine_coordinates(12, 12))[0]
    spectrum = ti.discover_symmetries(mlp(144, classes=5, dtype=DT), x)
    assert spectrum.distances["rotation"][0].item() > 0.1


def test_translation_invariant_model_finds_both_shifts():
    """|Fourier coefficients| of the image are invariant to shifts, not to rotations or scalings."""
    size = 32
    u, v = affine_coordinates(size, size)
    ks = torch.tensor([[3.0, 1.0], [-1.0, 2.5], [0.5, -2.0]], dtype=DT)
    phase = ks[:, 0, None, None] * u + ks[:, 1, None, None] * v
    area = (2.0 / size) ** 2

    def model(x):
        re = (x[:, None] * torch.cos(phase)).sum((-2, -1)) * area
        im = (x[:, None] * torch.sin(phase)).sum((-2, -1)) * area
        return re**2 + im**2

    # images that vanish at the border: the discrete sum is then exactly shift-invariant for any antisymmetric
    # stencil (summation by parts); what is left is the border (measured 2.6e-8 here, 4e-4 with shrink=0.7)
    x = render(blobs(16, shrink=0.5), u, v)[0]
    spectrum = ti.discover_symmetries(model, x)
    assert spectrum.distances["translation"][:2].max() < 1e-6
    assert spectrum.singular_values[1] < 1e-6 * spectrum.singular_values[2]
    assert spectrum.distances["translation"][2:].min() > 0.1
    assert spectrum.distances["rotation"][:2].min() > 0.1


def matrix_exp_affine(a, s):
    full = torch.zeros(3, 3, dtype=DT)
    full[:2] = a
    return torch.linalg.matrix_exp(s * full)


def finite_difference_lie_derivative(model, params, size, a, s=1e-4):
    """d/ds f(exp(sA) x) at 0 by central differences, with the image evaluated exactly at exp(-sA) p."""
    u, v = affine_coordinates(size, size)
    outs = []
    for sign in (1.0, -1.0):
        inv = matrix_exp_affine(a, -sign * s)
        uu = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
        vv = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
        outs.append(model(render(params, uu, vv)[0]))
    return (outs[0] - outs[1]) / (2 * s)


@pytest.mark.parametrize("which", ["rotation", "scaling", "translation_u", "random"])
def test_lie_derivative_matches_finite_differences_of_the_model(which):
    size = 16
    model = generic_model(size)
    params = blobs(3, seed=5)
    u, v = affine_coordinates(size, size)
    x, du, dv = render(params, u, v)
    if which == "random":
        a = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    else:
        a = REFERENCE_GENERATORS[which]
    ref = finite_difference_lie_derivative(model, params, size, a)  # (B, K)
    assert ref.abs().max() > 1e-2  # not vacuous
    exact = ti.discover_symmetries(model, x, image_gradients=(du, dv))
    got = exact.lie_derivatives @ a.reshape(6)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-8)
    # finite-difference image gradients: close, closer with the 5-point stencil
    err = {
        st: ((ti.discover_symmetries(model, x, stencil=st).lie_derivatives @ a.reshape(6)) - ref).abs().max().item()
        for st in ("central", "central4")
    }
    scale = ref.abs().max().item()
    assert err["central"] < 0.1 * scale and err["central4"] < err["central"]


def test_wrong_sign_or_swapped_axes_fail_the_finite_difference_check():
    """Test the tester: the rows of another convention (sign flipped, u and v swapped) disagree with it."""
    size = 16
    model = generic_model(size)
    params = blobs(3, seed=5)
    u, v = affine_coordinates(size, size)
    x, du, dv = render(params, u, v)
    a = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    ref = finite_difference_lie_derivative(model, params, size, a)
    rows = ti.discover_symmetries(model, x, image_gradients=(du, dv)).lie_derivatives
    swapped = rows[..., [4, 3, 5, 1, 0, 2]]
    for wrong in (-rows, swapped):
        assert not torch.allclose(wrong @ a.reshape(6), ref, rtol=1e-3, atol=1e-6)


def test_rows_match_an_explicit_loop_over_pixels_and_channels():
    """The matrix C with the 3-point stencil, written out pixel by pixel on a (B, C, H, W) batch."""
    torch.manual_seed(0)
    b, c, h, w = 2, 2, 5, 6
    x = torch.randn(b, c, h, w, dtype=DT)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    got = ti.discover_symmetries(model, x).lie_derivatives
    step = 2.0 / min(h, w)
    ref = torch.zeros(b, 3, 6, dtype=DT)
    for i in range(b):
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[i])  # (K, C, H, W)
        for k in range(3):
            for ch in range(c):
                for r in range(h):
                    for col in range(w):
                        uu = (col + 0.5 - w / 2) * step
                        vv = (r + 0.5 - h / 2) * step
                        lo, hi = max(col - 1, 0), min(col + 1, w - 1)
                        gu = (x[i, ch, r, hi] - x[i, ch, r, lo]) / ((hi - lo) * step)
                        lo, hi = max(r - 1, 0), min(r + 1, h - 1)
                        gv = (x[i, ch, hi, col] - x[i, ch, lo, col]) / ((hi - lo) * step)
                        gf = jac[k, ch, r, col]
                        ref[i, k] -= gf * torch.stack([gu * uu, gu * vv, gu, gv * uu, gv * vv, gv])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_singular_values_are_the_rms_lie_derivative_of_orthonormal_generators():
    x = render(blobs(4), *affine_coordinates(10, 10))[0]
    spectrum = ti.discover_symmetries(mlp(100, classes=3, dtype=DT), x)
    g = spectrum.generators.reshape(6, 6)
    torch.testing.assert_close(g @ g.T, torch.eye(6, dtype=DT))
    rows = spectrum.lie_derivatives.reshape(-1, 6)
    rms = (rows @ g.T).pow(2).mean(0).sqrt()
    torch.testing.assert_close(spectrum.singular_values, rms)
    for name, ref in REFERENCE_GENERATORS.items():  # the distance, written out
        d = torch.stack([torch.minimum((gk - ref).norm(), (gk + ref).norm()) for gk in spectrum.generators])
        torch.testing.assert_close(spectrum.distances[name], d)
    assert spectrum.to_dict()["singular_values"] == spectrum.singular_values.tolist()


def test_fewer_rows_than_generators_leave_exact_zeros():
    x = render(blobs(1), *affine_coordinates(8, 8))[0]
    spectrum = ti.discover_symmetries(mlp(64, classes=2, dtype=DT), x)  # 2 rows: 4 directions have no constraint
    assert spectrum.singular_values[:4].abs().max() == 0 and (spectrum.singular_values[4:] > 0).all()
    assert spectrum.generators.shape == (6, 2, 3) and spectrum.lie_derivatives.shape == (1, 2, 6)


def test_reference_generators_are_unit_and_what_they_say():
    u, v = torch.tensor([0.3]), torch.tensor([-0.7])
    p = torch.stack([u, v, torch.ones(1)]).to(DT)
    rot = REFERENCE_GENERATORS["rotation"] @ p  # perpendicular to p
    scl = REFERENCE_GENERATORS["scaling"] @ p  # along p
    assert abs((rot[:, 0] * p[:2, 0]).sum().item()) < 1e-15
    assert abs(scl[0, 0] / p[0, 0] - scl[1, 0] / p[1, 0]) < 1e-15
    for ref in REFERENCE_GENERATORS.values():
        assert math.isclose(ref.norm().item(), 1.0)


def test_measures_in_eval_mode_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(DT).train()
    x = torch.randn(3, 6, 6, dtype=DT)
    before = model[2].running_mean.clone()
    ti.discover_symmetries(model, x)
    assert model.training and torch.equal(model[2].running_mean, before)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"x": "img"}, TypeError),
        ({"x": torch.zeros(2, 6)}, ValueError),
        ({"x": torch.zeros(0, 6, 6)}, ValueError),
        ({"x": torch.zeros(2, 6, 6, dtype=torch.long)}, ValueError),
        ({"stencil": "sobel"}, ValueError),
        ({"image_gradients": (torch.zeros(2, 5, 5), torch.zeros(2, 5, 5))}, ValueError),
        ({"model": 3}, TypeError),
    ],
)
def test_bad_arguments(kwargs, exc):
    args = {"model": mlp(36, classes=2, dtype=DT), "x": torch.zeros(2, 6, 6, dtype=DT)} | kwargs
    with pytest.raises(exc):
        ti.discover_symmetries(args.pop("model"), args.pop("x"), **args)


def test_spectrum_of_stacked_rows_is_the_spectrum_of_all_samples():
    size = 12
    u, v = affine_coordinates(size, size)
    x, _, _ = render(blobs(9, seed=4), u, v)
    model = generic_model(size)
    whole = ti.discover_symmetries(model, x)
    parts = [ti.discover_symmetries(model, x[:4]), ti.discover_symmetries(model, x[4:])]
    joined = ti.SymmetrySpectrum.from_lie_derivatives(torch.cat([p.lie_derivatives for p in parts]))
    torch.testing.assert_close(joined.lie_derivatives, whole.lie_derivatives)
    torch.testing.assert_close(joined.singular_values, whole.singular_values)
    # the singular values straight from numpy's SVD of the stacked rows
    rows = whole.lie_derivatives.reshape(-1, 6).numpy() / math.sqrt(9 * whole.lie_derivatives.shape[1])
    np.testing.assert_allclose(joined.singular_values.numpy(), np.sort(np.linalg.svd(rows, compute_uv=False)))
    for bad in (torch.zeros(3, 5), torch.zeros(0, 2, 6), torch.zeros(2, 2, 6, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\(B, K, 6\)|no rows"):
            ti.SymmetrySpectrum.from_lie_derivatives(bad)


def _lin64():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        # before: autograd's "element 0 of tensors does not require grad and does not have a grad_fn"
        (lambda z: torch.zeros(z.shape[0], 3), "does not depend on x through autograd"),
        (lambda z: _lin64()(z).detach(), "does not depend on x through autograd"),
        (lambda z: (z.flatten(1).sum(1, keepdim=True) > 0).long(), "must be floating point; got torch.int64"),
        # before: linalg.svd's "failed to converge because the input matrix contained non-finite values"
        (lambda z: _lin64()(z) * float("nan"), "NaN or inf outputs on 4 of the 4 samples"),
    ],
)
def test_outputs_that_cannot_be_differentiated_are_named(model, match):
    with pytest.raises(ValueError, match=match):
        ti.discover_symmetries(model, torch.randn(4, 1, 8, 8))


def test_non_finite_inputs_and_rows_are_named():
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="x holds NaN or inf"):
        ti.discover_symmetries(_lin64(), x.masked_fill(x > 2, float("inf")))
    lie = torch.randn(3, 2, 6, dtype=torch.float64)
    lie[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="rows of 1 of the 3 samples hold NaN or inf"):
        ti.SymmetrySpectrum.from_lie_derivatives(lie)


def test_an_output_built_from_parameters_only_has_zero_lie_derivative():
    # before: autograd's "One of the differentiated Tensors appears to not have been used in the graph"
    bias = torch.nn.Parameter(torch.randn(3))
    spectrum = ti.discover_symmetries(lambda z: bias.expand(z.shape[0], 3), torch.randn(4, 1, 8, 8))
    assert torch.equal(spectrum.lie_derivatives, torch.zeros(4, 3, 6, dtype=torch.float64))
    assert torch.equal(spectrum.singular_values, torch.zeros(6, dtype=torch.float64))
