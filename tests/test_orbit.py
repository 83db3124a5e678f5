"""The orbit primitive (orbit.py): one batched forward, element order, chunking, output checks."""

import pytest
import torch
from helpers import BUILTIN_GROUPS, Reverse, Rows, group_id, make_group, mlp

import torchinvariance as ti

F64 = torch.float64


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_equals_one_forward_per_element(spec):
    """Reference: a separate forward per element, for EVERY element of every built-in group."""
    group = make_group(spec)
    x = torch.randn(3, 1, 6, 6, dtype=F64)
    model = Rows(mlp(36, dtype=F64))
    out = ti.orbit_forward(model, group, x)
    assert model.calls == [group.order * 3]  # one batched forward
    assert out.shape == (group.order, 3, 5)
    for i, g in enumerate(group.elements()):
        torch.testing.assert_close(out[i], model.inner(group.act(g, x)), rtol=0, atol=1e-13)


def test_explicit_elements_keep_their_order_and_repeats():
    group = ti.get_group("rotation", order=4)
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    model = mlp(16, dtype=F64)
    out = ti.orbit_forward(model, group, x, [3, 0, 3])
    ref = torch.stack([model(group.act(g, x)) for g in (3, 0, 3)])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)
    # integer numpy / tensor elements are accepted
    import numpy as np

    torch.testing.assert_close(ti.orbit_forward(model, group, x, [np.int64(3), torch.tensor(1)])[0], ref[0])


def test_chunks_give_the_same_outputs_with_one_forward_per_chunk():
    group = ti.get_group("dihedral")
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    model = Rows(mlp(16, dtype=F64))
    whole = ti.orbit_forward(model, group, x)
    model.calls.clear()
    chunked = ti.orbit_forward(model, group, x, chunk_size=3)
    assert model.calls == [6, 6, 4]
    # not bit equality: a matmul's rounding may depend on the batch size and a row's position (seen on AMD EPYC)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)


def test_keeps_the_graph_and_works_on_1d_groups():
    group = Reverse()
    model = torch.nn.Linear(5, 2)
    x = torch.randn(4, 3, 5)
    out = ti.orbit_forward(model, group, x)
    assert out.shape == (2, 4, 3, 2)
    out.sum().backward()
    assert model.weight.grad is not None


def test_dict_and_model_output_logits_are_used():
    group = ti.get_group("flip")
    inner = mlp(16)
    x = torch.randn(2, 1, 4, 4)

    class Out:
        def __init__(self, logits):
            self.logits = logits

    ref = ti.orbit_forward(inner, group, x)
    torch.testing.assert_close(ti.orbit_forward(lambda z: {"logits": inner(z)}, group, x), ref)
    torch.testing.assert_close(ti.orbit_forward(lambda z: Out(inner(z)), group, x), ref)


def test_errors_name_what_was_expected():
    group = ti.get_group("rotation", order=4)
    x = torch.randn(2, 1, 4, 4)
    model = mlp(16)
    with pytest.raises(ValueError, match=r"one output per sample.*fed 8 inputs.*shape \(\)"):
        ti.orbit_forward(lambda z: z.sum(), group, x)
    with pytest.raises(ValueError, match=r"returned a container"):
        ti.orbit_forward(lambda z: (model(z), model(z)), group, x)
    with pytest.raises(ValueError, match="elements must not be empty"):
        ti.orbit_forward(model, group, x, [])
    with pytest.raises(ValueError, match=r"has elements 0\.\.3"):
        ti.orbit_forward(model, group, x, [4])
    with pytest.raises(ValueError, match=r"has elements 0\.\.3"):
        ti.orbit_forward(model, group, x, [1.7])
    with pytest.raises(TypeError, match="sequence of group elements"):
        ti.orbit_forward(model, group, x, 2)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ti.orbit_forward(model, group, x, chunk_size=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        ti.orbit_forward(model, group, x[:0])
    with pytest.raises(ValueError, match="square images"):
        ti.orbit_forward(model, group, torch.randn(2, 1, 4, 5))
    with pytest.raises(TypeError, match="callable"):
        ti.orbit_forward(3, group, x)
