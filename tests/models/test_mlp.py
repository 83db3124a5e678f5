import math

import numpy as np
import pytest
import torch
from torch import nn

import torchinvariance as ti
from torchinvariance.models import PAPER_PARAMETER_COUNT, mlp_parameter_count


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count_is_the_documented_number():
    model = ti.MLP()  # paper setting: (1, 36, 36), 9 classes, hidden 128, depth 5
    assert n_params(model) == 216_713 == PAPER_PARAMETER_COUNT
    assert "216,713" in ti.MLP.__doc__
    # independent count from the layer shapes: 5 Linear layers
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    shapes = [(lin.in_features, lin.out_features) for lin in linears]
    assert shapes == [(1296, 128), (128, 128), (128, 128), (128, 128), (128, 9)]
    assert sum(i * o + o for i, o in shapes) == 216_713


@pytest.mark.parametrize(
    ("in_shape", "classes", "hidden", "depth"),
    [((1, 36, 36), 9, 128, 5), ((3, 8, 8), 10, 32, 2), ((17,), 2, 5, 3), ((2, 4, 6), 7, 16, 6)],
)
def test_parameter_count_formula(in_shape, classes, hidden, depth):
    model = ti.MLP(in_shape=in_shape, num_classes=classes, hidden=hidden, depth=depth)
    d = math.prod(in_shape)
    by_layer = (d * hidden + hidden) + (depth - 2) * (hidden * hidden + hidden) + (hidden * classes + classes)
    assert n_params(model) == by_layer == mlp_parameter_count(d, classes, hidden, depth)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == depth


def test_features_and_head():
    torch.manual_seed(0)
    model = ti.MLP(in_shape=(1, 6, 6), num_classes=4, hidden=8, depth=4)
    x = torch.randn(5, 1, 6, 6)
    feats = model.features(x)
    assert feats.shape == (5, 8)
    assert isinstance(model.features[-1], nn.ReLU)
    assert sum(isinstance(m, nn.ReLU) for m in model.features) == 3  # every hidden layer, none after the head
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 4
    assert torch.equal(model(x), model.head(feats))


def test_forward_matches_numpy_reference():
    torch.manual_seed(1)
    model = ti.MLP(in_shape=(2, 3, 3), num_classes=3, hidden=5, depth=3).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    h = x.numpy().reshape(4, -1)
    for i, lin in enumerate(linears):
        h = h @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
        if i < len(linears) - 1:
            h = np.maximum(h, 0.0)
    np.testing.assert_allclose(model(x).detach().numpy(), h, rtol=1e-12, atol=1e-12)


def test_input_validation():
    model = ti.MLP(in_shape=(1, 6, 6), num_classes=3)
    with pytest.raises(ValueError, match=r"\(B, 1, 6, 6\); got \(2, 1, 6, 5\)"):
        model(torch.zeros(2, 1, 6, 5))
    with pytest.raises(ValueError, match=r"got \(1, 6, 6\)"):
        model(torch.zeros(1, 6, 6))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        model([[0.0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 1}, "depth must be an int >= 2, got 1"),
        ({"hidden": 0}, "hidden must be an int >= 1, got 0"),
        ({"num_classes": 2.5}, "num_classes must be an int >= 1, got 2.5"),
        ({"in_shape": ()}, "in_shape must be a non-empty sequence"),
        ({"in_shape": (1, -3)}, "in_shape must be a non-empty sequence"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ti.MLP(**kwargs)
