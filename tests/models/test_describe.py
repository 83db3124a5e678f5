import pytest
import torch

import torchinvariance as ti


def mlp_flops(batch, d, hidden, depth, classes, first_layer_copies=1):
    """2 m k n per matrix product: the first layer once per group element, then the ordinary layers."""
    return 2 * batch * (first_layer_copies * d * hidden + (depth - 2) * hidden * hidden + hidden * classes)


def test_mlp_paper_setting():
    d = ti.models.describe(ti.MLP(), input_shape=(1, 1, 36, 36))
    assert d["model"] == "MLP"
    assert d["parameters"] == d["trainable_parameters"] == 216_713
    assert d["input_shape"] == (1, 1, 36, 36)
    assert d["flops"] == mlp_flops(1, 1296, 128, 5, 9) == 432_384
    assert d["flops_by_operator"] == {"aten.addmm": 432_384}
    assert isinstance(d, dict)


@pytest.mark.parametrize(("name", "params"), [("rotation", {"order": 4}), ("dihedral", {}), ("flip", {"axis": "y"})])
def test_group_invariant_mlp_costs_order_times_the_first_layer(name, params):
    group = ti.get_group(name, **params)
    model = ti.GroupInvariantMLP(group, in_shape=(2, 8, 8), num_classes=3, hidden=6, depth=4)
    d = ti.models.describe(model, input_shape=(5, 2, 8, 8))
    assert (
        d["parameters"]
        == ti.models.describe(ti.MLP(in_shape=(2, 8, 8), num_classes=3, hidden=6, depth=4))["parameters"]
    )
    assert d["flops"] == mlp_flops(5, 128, 6, 4, 3, first_layer_copies=group.order)


def test_group_averaged_costs_order_times_the_model():
    group = ti.get_group("dihedral")
    inner = ti.MLP(in_shape=(1, 6, 6), num_classes=4, hidden=5, depth=3)
    d = ti.models.describe(ti.GroupAveraged(inner, group), input_shape=(3, 1, 6, 6))
    assert d["model"] == "GroupAveraged"
    assert d["flops"] == 8 * mlp_flops(3, 36, 5, 3, 4)
    assert d["parameters"] == sum(p.numel() for p in inner.parameters())


def test_counts_only_without_input_shape_and_frozen_parameters():
    model = ti.MLP(in_shape=(1, 4, 4), num_classes=2, hidden=3, depth=2)
    model.head.requires_grad_(False)
    d = ti.models.describe(model)
    assert d["parameters"] == (16 * 3 + 3) + (3 * 2 + 2)
    assert d["trainable_parameters"] == 16 * 3 + 3
    assert d["flops"] is None and d["input_shape"] is None and d["flops_by_operator"] == {}
    assert "FLOPs" not in str(d)


def test_printable_table():
    text = str(ti.models.describe(ti.MLP(), input_shape=(2, 1, 36, 36)))
    lines = text.splitlines()
    assert lines[0] == "MLP"
    assert "216,713" in lines[1] and "parameters" in lines[1]
    assert "forward FLOPs" in text and f"{2 * 432_384:,}" in text and "aten.addmm" in text


def test_keeps_mode_and_validates():
    model = ti.MLP(in_shape=(1, 4, 4), num_classes=2).eval()
    ti.models.describe(model, input_shape=(1, 1, 4, 4))
    assert not model.training
    with pytest.raises(ValueError, match=r"input_shape must be a full input shape \(B, \.\.\.\)"):
        ti.models.describe(model, input_shape=(1, 0, 4))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ti.models.describe(lambda x: x)


def test_float64_model_gets_float64_input():
    model = ti.MLP(in_shape=(1, 4, 4), num_classes=2, hidden=3).double()
    assert ti.models.describe(model, input_shape=(1, 1, 4, 4))["flops"] == mlp_flops(1, 16, 3, 5, 2)
    assert next(model.parameters()).dtype == torch.float64


def test_counting_flops_leaves_the_model_as_it_was():
    # describe() runs one forward on zeros in the model's own mode: in train mode that forward must not count as data
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    )
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert ti.models.describe(model, input_shape=(2, 1, 4, 4))["flops"] > 0
    assert model.training and bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
