import numpy as np
import pytest
import torch
from helpers import BUILTIN_GROUPS, OrbitAveraged, group_id, make_group, mlp
from scipy.stats import entropy

import torchinvariance as ti

DIVS = ["l2", "kl", "normalized_l2"]


def _batch(b=5, size=6, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, size, size, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("divergence", DIVS)
def test_gradcheck_float64(divergence):
    group = ti.get_group("rotation", order=4)
    model = mlp(36, dtype=torch.float64)
    x = _batch(3, dtype=torch.float64).requires_grad_()
    loss = ti.InvarianceLoss(model, group, divergence=divergence)
    assert torch.autograd.gradcheck(lambda t: loss(t), (x,))
    # and the divergence itself, w.r.t. both of its arguments
    a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ti.losses.DIVERGENCES[divergence], (a, b))


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
@pytest.mark.parametrize("divergence", DIVS)
def test_invariant_model_has_zero_error_and_generic_mlp_does_not(spec, divergence):
    group = make_group(spec)
    x = _batch(4)
    base = mlp(36)
    inv = OrbitAveraged(base, group)
    values = ti.InvarianceLoss(inv, group, divergence=divergence, reduction="none")(x)
    assert values.shape == (group.order, 4)
    assert values.abs().max() <= 1e-6
    generic = ti.InvarianceLoss(base, group, divergence=divergence, reduction="none")(x)
    assert (generic[1:] > 1e-6).all()  # test the tester: every non-identity term is positive
    assert torch.equal(generic[0], torch.zeros(4))


def test_kl_matches_scipy_entropy():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, dtype=torch.float64)
    x = _batch(6, dtype=torch.float64)
    values = ti.InvarianceLoss(model, group, divergence="kl", reduction="none")(x).detach().numpy()
    with torch.no_grad():
        p = torch.softmax(model(x), -1).numpy()
        for i, g in enumerate(group.elements()):
            q = torch.softmax(model(group.act(g, x)), -1).numpy()
            ref = entropy(p, q, axis=1)
            np.testing.assert_allclose(values[i], ref, rtol=1e-10, atol=1e-12)


def test_l2_and_normalized_match_numpy():
    group = ti.get_group("translation", order=3)
    model = mlp(36, dtype=torch.float64)
    x = _batch(6, dtype=torch.float64)
    l2 = ti.InvarianceLoss(model, group, "l2", reduction="none")(x).detach().numpy()
    nl2 = ti.InvarianceLoss(model, group, "normalized_l2", reduction="none")(x).detach().numpy()
    with torch.no_grad():
        fx = model(x).numpy()
        for i, g in enumerate(group.elements()):
            fgx = model(group.act(g, x)).numpy()
            np.testing.assert_allclose(l2[i], 0.5 * ((fx - fgx) ** 2).sum(1), rtol=1e-12)
            np.testing.assert_allclose(nl2[i], ((fx - fgx) ** 2).sum(1) / (fx**2).sum(1), rtol=1e-12)


def test_reductions_and_logits_reuse():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, dtype=torch.float64)
    x = _batch(5, dtype=torch.float64)
    none = ti.InvarianceLoss(model, group, reduction="none")(x)
    mean = ti.InvarianceLoss(model, group, reduction="mean")(x)
    total = ti.InvarianceLoss(model, group, reduction="sum")(x)
    torch.testing.assert_close(mean, none.sum() / (4 * 5))
    torch.testing.assert_close(total, none.sum())
    logits = model(x)
    torch.testing.assert_close(ti.InvarianceLoss(model, group, reduction="none")(x, logits=logits), none)


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x)


def test_one_batched_forward_and_no_recompute_with_logits():
    group = ti.get_group("dihedral")
    counting = CountingModel(mlp(36))
    x = _batch(5)
    ti.InvarianceLoss(counting, group)(x)
    assert (counting.calls, counting.rows) == (1, 8 * 5)
    counting.calls = counting.rows = 0
    logits = counting(x)
    ti.InvarianceLoss(counting, group)(x, logits=logits)
    assert (counting.calls, counting.rows) == (2, 5 + 7 * 5)  # only the 7 non-identity elements


def test_elements_sampling_and_explicit_list():
    group = ti.get_group("dihedral")
    counting = CountingModel(mlp(36))
    x = _batch(5)
    logits = counting(x)
    counting.rows = 0
    loss = ti.InvarianceLoss(counting, group, elements=2, reduction="none", generator=torch.Generator().manual_seed(0))
    out = loss(x, logits=logits)
    assert out.shape == (2, 5)
    assert counting.rows <= 2 * 5
    explicit = ti.InvarianceLoss(counting, group, elements=[0, 3], reduction="none")(x, logits=logits)
    full = ti.InvarianceLoss(counting, group, reduction="none")(x, logits=logits)
    torch.testing.assert_close(explicit, full[[0, 3]])


def test_chunked_matches_unchunked_and_backprops():
    group = ti.get_group("dihedral")
    model = mlp(36, dtype=torch.float64)
    x = _batch(4, dtype=torch.float64)
    a = ti.InvarianceLoss(model, group)(x)
    ga = torch.autograd.grad(a, list(model.parameters()))
    b = ti.InvarianceLoss(model, group, chunk_size=3)(x)
    gb = torch.autograd.grad(b, list(model.parameters()))
    torch.testing.assert_close(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


def test_composition_sums_weighted_terms():
    model = mlp(36, dtype=torch.float64)
    x = _batch(4, dtype=torch.float64)
    rot = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    shift = ti.InvarianceLoss(model, ti.get_group("translation", order=3))
    both = rot + 0.5 * shift
    torch.testing.assert_close(both(x), rot(x) + 0.5 * shift(x))
    torch.testing.assert_close((2 * both)(x), 2 * rot(x) + shift(x))
    assert list(both.parameters()) == []  # the losses hold the model without owning its weights


def test_feature_level_invariance():
    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
    x = _batch(3)
    loss = ti.InvarianceLoss(features, ti.get_group("flip"), reduction="none")(x)
    with torch.no_grad():
        ref = 0.5 * (features(x) - features(x.flip(-1))).pow(2).sum((1, 2, 3))
    torch.testing.assert_close(loss[1], ref)


def test_callable_divergence():
    model = mlp(36)
    x = _batch(3)

    def l1(a, b):
        return (a - b).abs().sum(1)

    loss = ti.InvarianceLoss(model, ti.get_group("flip"), divergence=l1, reduction="none")(x)
    with torch.no_grad():
        torch.testing.assert_close(loss[1], (model(x) - model(x.flip(-1))).abs().sum(1))


def test_bad_input():
    group = ti.get_group("rotation", order=4)
    model = mlp(36)
    with pytest.raises(ValueError, match=r"non-empty batch.*\(0, 1, 6, 6\)"):
        ti.InvarianceLoss(model, group)(torch.zeros(0, 1, 6, 6))
    with pytest.raises(ValueError, match="square"):
        ti.InvarianceLoss(mlp(30), group)(torch.zeros(2, 1, 6, 5))
    conv = torch.nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match=r"\(batch, classes\).*\(2, 2, 4, 4\)"):
        ti.InvarianceLoss(conv, group, divergence="kl")(torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match="divergence must be one of"):
        ti.InvarianceLoss(model, group, divergence="l3")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ti.InvarianceLoss(model, group, reduction="avg")
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        ti.InvarianceLoss(model, group, reduction="none") + ti.InvarianceLoss(model, group)


def test_autocast_bf16_close_to_fp32():
    model = mlp(36)
    x = _batch(8)
    loss = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    ref = loss(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    torch.testing.assert_close(low, ref, rtol=0.1, atol=1e-3)
    low.backward()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = mlp(36)
    x = _batch(8)
    loss = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    compiled = torch.compile(loss)
    torch.testing.assert_close(compiled(x), loss(x), rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(compiled(x), list(model.parameters()))
    g2 = torch.autograd.grad(loss(x), list(model.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    model = mlp(36)
    x = _batch(8)
    loss = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    ref = loss(x)
    torch.testing.assert_close(loss.cuda()(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- errors when built (issue 20 item 4)
def test_losses_check_group_elements_and_output_action_when_built():
    from helpers import Listed

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    rot = ti.get_group("rotation", order=4)
    # a wrong listing of elements() skipped an element in every training step
    with pytest.raises(ValueError, match="does not list its elements correctly"):
        ti.InvarianceLoss(model, Listed([0, 1, 2]))
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        ti.InvarianceLoss(model, ti.get_group("so2"), elements=2, generator=3)
    # permutations missing for an element the loss uses failed in the first step that drew it
    with pytest.raises(ValueError, match=r"inverses of \['rot90', 'rot270'\]"):
        ti.EquivarianceLoss(model, rot, output_action={0: [0, 1, 2], 2: [2, 1, 0]})
    with pytest.raises(ValueError, match="same length"):
        ti.EquivarianceLoss(model, rot, output_action=[[0, 1, 2], [1, 0], [0, 1, 2], [1, 2, 0]])
    with pytest.raises(ValueError, match=r"inverses of \['id'\]"):  # the identity's row is acted on too
        ti.EquivarianceLoss(model, ti.get_group("flip"), output_action={1: [1, 0, 2]}, elements=[1])
    with pytest.raises(ValueError, match="draws new elements"):
        ti.EquivarianceLoss(model, ti.get_group("so2"), output_action={0.0: [0, 1, 2]}, elements=2)
    # what is complete is accepted, and runs
    x = torch.randn(2, 1, 4, 4)
    ti.EquivarianceLoss(model, rot, output_action={0: [0, 1, 2], 2: [2, 1, 0]}, elements=[2])(x)
    ti.EquivarianceLoss(model, rot, output_action=[[0, 1, 2]] * 4, elements=3)(x)
    so2 = ti.get_group("so2")
    ti.EquivarianceLoss(model, so2, output_action={0.0: [0, 1, 2], 270.0: [1, 0, 2]}, elements=[90.0])(
        so2.mask_input(x)
    )


# ----------------------------------------------------------------------------- dropout (issue 22 item 14)
class _PooledDropout(torch.nn.Module):
    """Sum over pixels (exactly rotation-invariant), then Linear, Dropout(0.5), Linear; float64."""

    def __init__(self, pooled=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.pooled = pooled
        self.head = torch.nn.Sequential(
            torch.nn.Linear(1 if pooled else 36, 16), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)
        ).double()

    def forward(self, x):
        return self.head(x.sum((-2, -1)) if self.pooled else x.flatten(1))


def _dropout_reference(model, group, x, seed, shared):
    """Explicit loop in float64: each copy in its own forward, from one seed (shared) or from one stacked forward."""
    torch.manual_seed(seed)
    if shared:
        outs = []
        for g in group.elements():
            torch.manual_seed(seed)
            outs.append(model(group.act(g, x)))
    else:
        outs = list(model(torch.cat([group.act(g, x) for g in group.elements()])).split(x.shape[0]))
    return sum(0.5 * (o - outs[0]).pow(2).sum() for o in outs) / (group.order * x.shape[0])


def test_dropout_default_gives_each_copy_its_own_mask_and_shared_randomness_one():
    rot = ti.get_group("rotation", order=4)
    x = _batch(6, dtype=torch.float64)
    model = _PooledDropout().train()
    # the default, pinned: one batched forward, every row its own mask, so an invariant model scores > 0
    torch.manual_seed(5)
    default = ti.InvarianceLoss(model, rot)(x)
    torch.testing.assert_close(default, _dropout_reference(model, rot, x, 5, shared=False))
    assert float(default.detach()) > 1e-3
    with torch.no_grad():
        assert float(ti.InvarianceLoss(model.eval(), rot)(x)) < 1e-24  # eval: no dropout, exactly invariant
    model.train()
    # shared_randomness: every copy replays f(x)'s random state, so the invariant model scores 0 in train mode
    for chunk_size in (None, 1, 3):
        reg = ti.InvarianceLoss(model, rot, shared_randomness=True, chunk_size=chunk_size)
        torch.manual_seed(5)
        value, fx = reg.forward_with_logits(x)
        after = torch.rand(4)
        torch.manual_seed(5)
        ref_fx = model(x)
        torch.testing.assert_close(fx, ref_fx, rtol=0, atol=0)  # f(x) as a plain forward draws it
        assert torch.equal(after, torch.rand(4))  # ... and the generator is left as that one forward leaves it
        assert float(value.detach()) < 1e-24
    # test the tester: a model that is not invariant scores > 0 with shared masks, equal to the explicit loop,
    # and trains (the gradient flows, also through the checkpointed chunks)
    generic = _PooledDropout(pooled=False).train()
    for chunk_size in (None, 2):
        torch.manual_seed(7)
        value = ti.InvarianceLoss(generic, rot, shared_randomness=True, chunk_size=chunk_size)(x)
        torch.testing.assert_close(value, _dropout_reference(generic, rot, x, 7, shared=True))
        assert float(value.detach()) > 1e-3
        generic.zero_grad()
        value.backward()
        assert float(generic.head[0].weight.grad.abs().max()) > 0
    # EquivarianceLoss takes the option too; logits= from another forward cannot share its masks
    torch.manual_seed(5)
    assert float(ti.EquivarianceLoss(model, rot, "trivial", shared_randomness=True)(x).detach()) < 1e-24
    with pytest.raises(ValueError, match=r"shared_randomness=True.*forward_with_logits"):
        ti.InvarianceLoss(model, rot, shared_randomness=True)(x, logits=model(x))
    with pytest.raises(TypeError, match="shared_randomness must be True or False"):
        ti.InvarianceLoss(model, rot, shared_randomness="yes")
    assert "shared_randomness=True" in repr(ti.InvarianceLoss(model, rot, shared_randomness=True))


def test_orbit_forward_shared_randomness_replays_one_state_per_element():
    rot = ti.get_group("rotation", order=4)
    x = _batch(3, dtype=torch.float64)
    drop = torch.nn.Dropout(0.5).train()
    model = lambda z: drop(torch.ones(z.shape[0], 8, dtype=z.dtype)) * z.sum((-2, -1))  # noqa: E731
    torch.manual_seed(0)
    out = ti.orbit_forward(model, rot, x, shared_randomness=True)
    for i in range(4):  # the same masks, an invariant output (up to the order of the pixel sum)
        torch.testing.assert_close(out[i], out[0], rtol=0, atol=1e-12)
    torch.manual_seed(0)
    independent = ti.orbit_forward(model, rot, x)
    assert float((independent[1] - independent[0]).abs().max()) > 0.1  # test the tester: one forward draws anew
    with pytest.raises(TypeError, match="shared_randomness must be a bool or a RandomState"):
        ti.orbit_forward(model, rot, x, shared_randomness=1)


def test_weighted_loss_checks_its_terms_when_built():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    reg = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    # before: built fine, then the call failed with a bare AssertionError
    with pytest.raises(ValueError, match=r"at least one \(weight, loss\) term; got none"):
        ti.WeightedInvarianceLoss([])
    # before: built fine, then "Linear.forward() got an unexpected keyword argument 'logits'"
    with pytest.raises(TypeError, match=r"must be an InvarianceLoss.*term 1 is Linear"):
        ti.WeightedInvarianceLoss([(1.0, reg), (1.0, torch.nn.Linear(2, 2))])
    # before: "cannot unpack non-iterable InvarianceLoss object"
    with pytest.raises(TypeError, match=r"\(weight, loss\) pairs; term 0 is InvarianceLoss"):
        ti.WeightedInvarianceLoss([reg])
    both = ti.WeightedInvarianceLoss(((2.0, reg), (1.0, 0.5 * reg)))  # any sequence of pairs, nested sums too
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(both(x), 2.5 * reg(x))
