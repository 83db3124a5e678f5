import numpy as np
import pytest
import torch
from helpers import BUILTIN_GROUPS, Reverse, group_id, make_group, train_non_invariant
from torch import nn

import torchinvariance as ti

IN_SHAPE = (1, 12, 12)  # square, width divisible by 3 and height by 2: every built-in group acts on it
POOLS = ["max", "mean"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_invariant_at_init_and_after_training(spec, pool):
    group = make_group(spec)
    torch.manual_seed(0)
    model = ti.GroupInvariantMLP(group, in_shape=IN_SHAPE, num_classes=5, hidden=16, depth=3, pool=pool)
    x = torch.randn(6, *IN_SHAPE)
    for _ in range(2):
        ti.assert_invariant(model, group, x)  # float32, default tolerance
        ti.assert_invariant(model, group, x, dtype=torch.float64)  # float64 copy: rtol 1e-10
        ti.assert_invariant(model.features, group, x, dtype=torch.float64)  # the pooled features already are
        train_non_invariant(model, group, x, classes=model.num_classes)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_tied_layer_matches_loop_reference(spec, pool):
    group = make_group(spec)
    torch.manual_seed(1)
    model = ti.GroupInvariantMLP(group, in_shape=IN_SHAPE, num_classes=3, hidden=7, depth=2, pool=pool).double()
    x = torch.randn(4, *IN_SHAPE, dtype=torch.float64)
    lin = model.features[0].linear
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    responses = np.stack([np.maximum(group.act(g, x).reshape(4, -1).numpy() @ w.T + b, 0.0) for g in group.elements()])
    expected = responses.max(0) if pool == "max" else responses.mean(0)
    np.testing.assert_allclose(model.features(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_one_batched_matmul_over_the_orbit():
    group = ti.get_group("dihedral")
    model = ti.GroupInvariantMLP(group, in_shape=IN_SHAPE, num_classes=3, hidden=4, depth=3)
    seen = []
    model.features[0].linear.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    model(torch.randn(5, *IN_SHAPE))
    assert seen == [(8, 5, 144)]


def test_same_parameter_count_as_mlp():
    group = ti.get_group("rotation", order=4)
    assert n_params(ti.GroupInvariantMLP(group)) == n_params(ti.MLP()) == 216_713
    kw = {"in_shape": IN_SHAPE, "num_classes": 4, "hidden": 9, "depth": 4}
    assert n_params(ti.GroupInvariantMLP(group, **kw)) == n_params(ti.MLP(**kw))
    model = ti.GroupInvariantMLP(group, **kw)
    assert isinstance(model.features[-1], nn.ReLU) and isinstance(model.head, nn.Linear)


def test_not_invariant_to_another_group():
    torch.manual_seed(0)
    model = ti.GroupInvariantMLP(ti.get_group("flip", axis="x"), in_shape=IN_SHAPE, num_classes=5, hidden=16)
    x = torch.randn(6, *IN_SHAPE)
    ti.assert_invariant(model, ti.get_group("flip", axis="x"), x)
    with pytest.raises(AssertionError, match="worst element 'rot"):
        ti.assert_invariant(model, ti.get_group("rotation", order=4), x)


class SignalShift(ti.CyclicGroup):
    """A plugin-style group on 1-D signals (..., T), defined outside torchinvariance."""

    event_ndim = 1

    def transform(self, g, x):
        return x.roll(g * x.shape[-1] // self.order, dims=-1)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("in_shape", [(16,), (3, 16)])
def test_plugin_style_one_dimensional_groups(in_shape, pool):
    registry = ti.GroupRegistry(autoload=False)
    registry.register("test_signal_shift", SignalShift, provider="tests")
    registry.register("test_signal_reversal", Reverse, provider="tests")
    torch.manual_seed(0)
    x = torch.randn(5, *in_shape)
    for group in (registry.get("test_signal_shift", order=4), registry.get("test_signal_reversal")):
        model = ti.GroupInvariantMLP(group, in_shape=in_shape, num_classes=3, hidden=8, pool=pool)
        ti.assert_invariant(model, group, x, dtype=torch.float64)
        train_non_invariant(model, group, x, classes=model.num_classes)
        ti.assert_invariant(model, group, x, dtype=torch.float64)
        with pytest.raises(AssertionError):
            ti.assert_invariant(ti.MLP(in_shape=in_shape, num_classes=3, hidden=8), group, x)


def test_installed_signal_plugin():
    pytest.importorskip("torchinvariance_signal")
    group = ti.get_group("time_shift", order=4)
    torch.manual_seed(0)
    model = ti.GroupInvariantMLP(group, in_shape=(2, 12), num_classes=3, hidden=8)
    ti.assert_invariant(model, group, torch.randn(4, 2, 12), dtype=torch.float64)


def test_bad_arguments():
    rot = ti.get_group("rotation", order=4)
    with pytest.raises(ValueError, match=r"pool must be one of \('max', 'mean'\), got 'sum'"):
        ti.GroupInvariantMLP(rot, in_shape=IN_SHAPE, pool="sum")
    with pytest.raises(ValueError, match=r"cannot act on inputs of shape.*square"):
        ti.GroupInvariantMLP(rot, in_shape=(1, 12, 10))
    with pytest.raises(ValueError, match=r"cannot act on inputs of shape.*divisible by 5"):
        ti.GroupInvariantMLP(ti.get_group("translation", order=5, axis="x"), in_shape=IN_SHAPE)
    with pytest.raises(TypeError, match="Group"):
        ti.GroupInvariantMLP("rotation", in_shape=IN_SHAPE)
    for name in ("so2", "scale"):  # built fine and failed in the first forward ("no finite order")
        with pytest.raises(ValueError, match=r"finite group; (SO2|Scale)\(.*\) is continuous.*GroupAveraged"):
            ti.GroupInvariantMLP(ti.get_group(name), in_shape=IN_SHAPE)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, 1, 12, 12\)"):
        ti.GroupInvariantMLP(rot, in_shape=IN_SHAPE)(torch.zeros(2, 1, 8, 8))
