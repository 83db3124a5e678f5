import numpy as np
import pytest
import torch
from helpers import BUILTIN_GROUPS, OrbitAveraged, group_id, make_group, train_non_invariant

import torchinvariance as ti

IN_SHAPE = (1, 12, 12)


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_invariant_at_init_and_after_training(spec):
    group = make_group(spec)
    torch.manual_seed(0)
    model = ti.GroupAveraged(ti.MLP(in_shape=IN_SHAPE, num_classes=5, hidden=16, depth=3), group)
    x = torch.randn(6, *IN_SHAPE)
    for _ in range(2):
        ti.assert_invariant(model, group, x)
        ti.assert_invariant(model, group, x, dtype=torch.float64)
        train_non_invariant(model, group, x, classes=5)


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_plain_mlp_fails_and_message_names_worst_element(spec):
    group = make_group(spec)
    torch.manual_seed(0)
    plain = ti.MLP(in_shape=IN_SHAPE, num_classes=5, hidden=16, depth=3)
    x = torch.randn(6, *IN_SHAPE)
    errors = ti.invariance_error(plain, group, x)
    worst = int(errors.argmax())
    assert worst != 0 and errors[worst] > 1e-3
    with pytest.raises(AssertionError) as info:
        ti.assert_invariant(plain, group, x)
    message = str(info.value)
    assert f"worst element {group.element_name(worst)!r}" in message
    assert f"{float(errors[worst]):.3e}" in message


@pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)
def test_matches_independent_references(spec):
    group = make_group(spec)
    torch.manual_seed(2)
    inner = ti.MLP(in_shape=IN_SHAPE, num_classes=4, hidden=8).double()
    x = torch.randn(3, *IN_SHAPE, dtype=torch.float64)
    out = ti.GroupAveraged(inner, group)(x)
    torch.testing.assert_close(out, OrbitAveraged(inner, group)(x), rtol=1e-12, atol=1e-12)
    loop = np.mean([inner(group.act(g, x)).detach().numpy() for g in group.elements()], axis=0)
    np.testing.assert_allclose(out.detach().numpy(), loop, rtol=1e-12, atol=1e-12)


def test_one_batched_forward():
    group = ti.get_group("dihedral")
    inner = ti.MLP(in_shape=IN_SHAPE, num_classes=3, hidden=4)
    seen = []
    inner.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    ti.GroupAveraged(inner, group)(torch.randn(5, *IN_SHAPE))
    assert seen == [(40, *IN_SHAPE)]


def test_bad_arguments():
    rot = ti.get_group("rotation", order=4)
    with pytest.raises(TypeError, match="Group"):
        ti.GroupAveraged(ti.MLP(), "rotation")
    with pytest.raises(TypeError, match="callable"):
        ti.GroupAveraged(3, rot)
    with pytest.raises(ValueError, match="one output per sample"):
        ti.GroupAveraged(lambda x: x.sum(), rot)(torch.randn(2, 1, 4, 4))


def test_averaging_over_angles_of_so2():
    so2 = ti.get_group("so2")
    inner = ti.MLP(in_shape=(1, 12, 12), num_classes=3, hidden=8).double()
    angles = [90.0 * k for k in range(4)]  # 90-degree turns are exact on the square grid, up to rounding
    model = ti.GroupAveraged(inner, so2, elements=angles)
    x = so2.mask_input(torch.randn(2, 1, 12, 12, dtype=torch.float64))
    ti.assert_invariant(model, so2, x, elements=angles, atol=1e-6, rtol=0)
    with pytest.raises(AssertionError):
        ti.assert_invariant(inner, so2, x, elements=angles, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="continuous: pass the elements"):
        ti.GroupAveraged(inner, so2)
