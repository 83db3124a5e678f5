"""Saliency maps and SI (metrics/saliency.py) against independent references (scipy), and their errors."""

import sys

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from helpers import image_batch, mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64


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
    x = image_batch(b=3, c=2, seed=6)
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
    x = image_batch(b=5, seed=7)[:, 0]  # (B, H, W) without a channel dim
    pred = model(x).argmax(1)
    torch.testing.assert_close(ti.saliency_map(model, x, n_steps=4), ti.saliency_map(model, x, target=pred, n_steps=4))
    w = model[1].weight.detach().numpy()[pred.numpy()].reshape(5, 1, 6, 6)
    ref = _reference_map(x.numpy()[:, None], w, 0.9, 1.0, 1, "wrap")
    np.testing.assert_allclose(ti.saliency_map(model, x, n_steps=4).numpy(), ref, rtol=1e-9, atol=1e-12)


def test_saliency_map_nonlinear_model_is_ig_of_target():
    """Against a hand-written Riemann-sum IG (many steps), no threshold, no blur."""
    model = mlp(36, classes=3, dtype=F64, seed=2)
    x = image_batch(b=2, seed=8)
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
    x = image_batch(b=3, seed=9)
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
    ti.saliency_invariance(mlp(36, dtype=F64), group, image_batch(b=3), n_steps=7, backend="captum")
    assert calls == [(24, 24 * 7, 7)]  # whole orbit, all steps in one chunk for small inputs
    calls.clear()
    ti.saliency_invariance(
        mlp(36, dtype=F64), group, image_batch(b=3), n_steps=7, internal_batch_size=48, backend="captum"
    )
    assert calls == [(24, 48, 7)]
    calls.clear()
    ti.saliency_invariance(mlp(36, dtype=F64), group, image_batch(b=3), n_steps=7)
    assert calls == []  # the default backend does not go through captum


def test_chunked_integrated_gradients_equal_one_pass():
    group = ti.get_group("rotation", order=4)
    model, x = mlp(36, dtype=F64, seed=4), image_batch(b=2)
    one_pass = ti.saliency_invariance(model, group, x, n_steps=9, reduction="none")
    chunked = ti.saliency_invariance(model, group, x, n_steps=9, internal_batch_size=8, reduction="none")
    torch.testing.assert_close(chunked, one_pass)
    torch.testing.assert_close(
        ti.saliency_map(model, x, n_steps=9, internal_batch_size=2), ti.saliency_map(model, x, n_steps=9)
    )


def test_saliency_invariance_reductions_and_zero_maps():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, dtype=F64)
    x = image_batch(b=3)
    none = ti.saliency_invariance(model, group, x, n_steps=4, reduction="none")
    torch.testing.assert_close(none[0], torch.ones(3, dtype=F64))  # the identity: 1 for any model
    torch.testing.assert_close(ti.saliency_invariance(model, group, x, n_steps=4), none[1:].mean())
    torch.testing.assert_close(ti.saliency_invariance(model, group, x, n_steps=4, reduction="sum"), none[1:].sum())
    full = ti.saliency_invariance(model, group, x, n_steps=4, include_identity=True)
    torch.testing.assert_close(full, none.mean())
    # x = 0: IG from the zero baseline is 0 everywhere; documented: two all-zero maps are identical (SI 1)
    zero = torch.zeros(2, 1, 6, 6, dtype=F64)
    assert ti.saliency_map(model, zero, n_steps=4).abs().max() == 0
    si = ti.saliency_invariance(model, group, zero, n_steps=4, reduction="none")
    assert torch.equal(si, torch.ones(4, 2, dtype=F64))


# ----------------------------------------------------------------------------- errors
def test_errors_bad_reduction_and_group_shape():
    model = mlp(36, dtype=F64)
    rot, shift = ti.get_group("rotation", order=4), ti.get_group("translation", order=3)
    for fn in (ti.distribution_invariance, ti.logit_invariance, ti.saliency_invariance):
        with pytest.raises(ValueError, match="reduction must be one of"):
            fn(model, rot, image_batch(), reduction="avg")
        with pytest.raises(ValueError, match="square"):
            fn(mlp(24, dtype=F64), rot, image_batch(h=6, w=4))
        with pytest.raises(ValueError, match="divisible by 3"):
            fn(mlp(24, dtype=F64), shift, image_batch(h=6, w=4))
        with pytest.raises(ValueError, match="non-empty"):
            fn(model, rot, image_batch(b=0))
        with pytest.raises(TypeError, match="Group"):
            fn(model, "rotation", image_batch())


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
        with pytest.raises(ValueError, match=r"NaN or \+Inf on the orbit elements \['rot90', 'rot180', 'rot270'\]"):
            fn(Nan(), group, x)
    with pytest.raises(ValueError, match=r"NaN or \+?Inf"):
        ti.saliency_invariance(Nan(), group, -x)


def test_errors_targets_and_outputs():
    model = mlp(36, classes=3, dtype=F64)
    group = ti.get_group("rotation", order=4)
    for bad in (3, -1, [0, 1, 5, 0]):
        with pytest.raises(ValueError, match=r"target out of range: the model has 3 classes"):
            ti.saliency_invariance(model, group, image_batch(), target=bad, n_steps=2)
        with pytest.raises(ValueError, match="target out of range"):
            ti.saliency_map(model, image_batch(), target=bad, n_steps=2)
    with pytest.raises(ValueError, match="one class per sample"):
        ti.saliency_map(model, image_batch(), target=[0, 1], n_steps=2)
    with pytest.raises(TypeError, match="integer class"):
        ti.saliency_map(model, image_batch(), target=torch.tensor([0.5] * 4), n_steps=2)
    features = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"logits shaped \(batch, classes\)"):
        ti.distribution_invariance(features.double(), group, image_batch())
    with pytest.raises(ValueError, match="logits"):
        ti.saliency_map(features.double(), image_batch(), n_steps=2)
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
        ti.saliency_invariance(mlp(36, dtype=F64), ti.get_group("rotation", order=4), image_batch(), **kwargs)


def test_missing_captum_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install torchinvariance\[saliency\]"):
        ti.saliency_map(mlp(36, dtype=F64), image_batch(), n_steps=2, backend="captum")
    # the default (plain torch) saliency backend, DI and LI do not need captum
    assert ti.saliency_map(mlp(36, dtype=F64), image_batch(), n_steps=2).shape == (4, 6, 6)
    ti.logit_invariance(mlp(36, dtype=F64), ti.get_group("flip"), image_batch())


# ----------------------------------------------------------------------------- ablation options of the recipe
def test_quantile_threshold_keeps_the_top_fraction_of_each_map():
    from torchinvariance.metrics.saliency import _postprocess

    maps = torch.arange(100.0, dtype=F64).reshape(1, 10, 10)
    cfg = ti.SaliencyConfig(threshold=0.9, threshold_mode="quantile", kernel_size=1)
    kept = _postprocess(maps, cfg)
    assert int((kept > 0).sum()) == 10 and torch.equal(kept[kept > 0], maps[maps >= 89.1])
    # "max" mode keeps values >= 0.9 * max = 89.1 too on this ramp, but not on a skewed map
    skewed = maps.clone()
    skewed[0, 0, 0] = 1e6
    assert int((_postprocess(skewed, ti.SaliencyConfig(threshold=0.9, kernel_size=1)) > 0).sum()) == 1
    assert int((_postprocess(skewed, cfg) > 0).sum()) == 10


def test_constant_baseline_equals_captum_with_that_baseline():
    from captum.attr import IntegratedGradients

    model = mlp(36, dtype=F64).eval()
    x = image_batch(b=3)
    target = torch.tensor([0, 1, 2])
    cfg = ti.SaliencyConfig(n_steps=20, threshold=0.0, kernel_size=1, baseline=-0.4)
    ours = ti.saliency_map(model, x, target=target, config=cfg)
    ref = IntegratedGradients(model).attribute(x, baselines=torch.full_like(x, -0.4), target=target, n_steps=20)
    torch.testing.assert_close(ours, ref.abs().sum(1), rtol=1e-7, atol=1e-9 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="baseline must be a finite number"):
        ti.SaliencyConfig(baseline=float("nan"))
    with pytest.raises(ValueError, match="threshold_mode must be one of"):
        ti.SaliencyConfig(threshold_mode="top")


def test_config_replaces_the_keyword_options():
    model = mlp(36, dtype=F64).eval()
    x = image_batch(b=2)
    cfg = ti.SaliencyConfig(n_steps=6, threshold=0.5, kernel_size=1)
    torch.testing.assert_close(
        ti.saliency_invariance(model, ROT4 := ti.get_group("rotation", order=4), x, config=cfg),
        ti.saliency_invariance(model, ROT4, x, n_steps=6, threshold=0.5, kernel_size=1),
    )


# ----------------------------------------------------------------------------- value-acting and continuous groups
class FlipInvert(ti.Group):
    """The Klein four-group {id, flip, invert, flip+invert}: bit 0 mirrors left-right, bit 1 negates the values."""

    @property
    def order(self):
        return 4

    def compose(self, g, h):
        return self.check_element(g) ^ self.check_element(h)

    def inverse(self, g):
        return self.check_element(g)

    def transform(self, g, x):
        y = x.flip(-1) if g & 1 else x
        return -y if g & 2 else y

    def transform_map(self, g, maps):
        return maps.flip(-1) if self.check_element(g) & 1 else maps  # only the flip moves pixels


class Invert(ti.CyclicGroup):
    spatial = False  # acts on values only: saliency maps stay where they are

    def __init__(self):
        super().__init__(2)

    def transform(self, g, x):
        return -x if g else x


def test_si_of_an_exactly_invariant_model_is_one_for_groups_that_act_on_values():
    x = image_batch(b=3)
    for group in (FlipInvert(), Invert()):
        ti.check_group(group)
        model = ti.GroupAveraged(mlp(36, dtype=F64), group).eval()
        ti.assert_invariant(model, group, x, dtype=F64)
        si = ti.saliency_invariance(model, group, x, n_steps=8, reduction="none")
        torch.testing.assert_close(si, torch.ones_like(si), rtol=0, atol=1e-9)

    # the bug this guards against: realigning the maps with the full action negates them (similarity 0)
    class Naive(FlipInvert):
        def transform_map(self, g, maps):
            return self.transform(self.check_element(g), maps)

    model = ti.GroupAveraged(mlp(36, dtype=F64), Naive()).eval()
    si = ti.saliency_invariance(model, Naive(), x, n_steps=8, reduction="none")
    assert si[2:].max() < 0.5


def test_blur_after_realignment_for_a_permutation_that_does_not_commute_with_the_filter():
    """A random pairing of pixels (an involution): blurring does not commute with it, yet SI of an invariant model is 1.

    Realigning first and blurring the reference and the realigned map alike makes the comparison exact; blurring
    first and realigning afterwards (the old order) scrambles the blurred map and gives SI < 1.
    """
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(3))
    pairing = torch.arange(36)
    pairing[perm[0::2]], pairing[perm[1::2]] = perm[1::2], perm[0::2]

    class Shuffle(ti.CyclicGroup):
        def __init__(self):
            super().__init__(2)

        def transform(self, g, x):
            return x.flatten(-2)[..., pairing].reshape(x.shape) if g else x

    group = Shuffle()
    ti.check_group(group, image_batch(b=2))
    model = ti.GroupAveraged(mlp(36, dtype=F64), group).eval()
    si = ti.saliency_invariance(model, group, image_batch(b=2), n_steps=8, reduction="none")
    torch.testing.assert_close(si, torch.ones_like(si), rtol=0, atol=1e-9)


def test_si_and_di_li_with_explicit_elements_of_so2():
    so2 = ti.get_group("so2")
    x = so2.mask_input(image_batch(b=2, h=12, w=12))
    model = mlp(144, dtype=F64).eval()
    angles = [0.0, 30.0, 90.0]
    si = ti.saliency_invariance(model, so2, x, n_steps=6, elements=angles, reduction="none")
    assert si.shape == (3, 2) and torch.allclose(si[0], torch.ones(2, dtype=F64))
    li = ti.logit_invariance(model, so2, x, elements=angles, reduction="none")
    ref = torch.stack([0.5 * (model(so2.act(a, x)) - model(x)).pow(2).sum(1) for a in angles])
    torch.testing.assert_close(li, ref)
    floor = ti.interpolation_floor(model, so2, x, elements=angles, reduction="none")
    assert floor.shape == (3, 2) and float(floor[0].abs().max()) < 1e-20 and float(floor[1].min()) > 1e-12
    for fn in (ti.logit_invariance, ti.distribution_invariance):
        with pytest.raises(ValueError, match="continuous: pass elements="):
            fn(model, so2, x)


@pytest.mark.parametrize("backend", ["torch", "captum"])
def test_models_returning_a_dict_or_an_object_with_logits_are_attributed_like_di_and_li_read_them(backend):
    # DI and LI read the logits of {"logits": ...} or of an object with .logits (a Hugging Face ModelOutput); SI too
    class Out:
        def __init__(self, logits):
            self.logits = logits

    model = mlp(36, classes=3, dtype=F64)
    as_dict = lambda z: {"logits": model(z), "hidden": z}  # noqa: E731
    as_object = lambda z: Out(model(z))  # noqa: E731
    rot = ti.get_group("rotation", order=4)
    x = image_batch()
    expected_map = ti.saliency_map(model, x, n_steps=4, backend=backend)
    expected_si = ti.saliency_invariance(model, rot, x, n_steps=4, reduction="none", backend=backend)
    for wrapped in (as_dict, as_object):
        torch.testing.assert_close(ti.saliency_map(wrapped, x, n_steps=4, backend=backend), expected_map)
        si = ti.saliency_invariance(wrapped, rot, x, n_steps=4, reduction="none", backend=backend)
        torch.testing.assert_close(si, expected_si)
    metric = ti.SaliencyInvariance(as_dict, rot, n_steps=4, backend=backend)
    metric.update(x)
    torch.testing.assert_close(metric.compute(), expected_si[1:].mean().float())
