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


def test_elements_must_be_a_list_of_elements():
    """elements=4 raised "'int' object is not iterable"; elements='12' averaged over the elements 1 and 2."""
    so2 = ti.get_group("so2")
    with pytest.raises(TypeError, match=r"list of elements that form a subgroup.*got elements=4"):
        ti.GroupAveraged(ti.MLP(), so2, elements=4)
    with pytest.raises(TypeError, match=r"elements must be a sequence of group elements.*got str"):
        ti.GroupAveraged(ti.MLP(), ti.get_group("rotation", order=4), elements="12")
    with pytest.raises(ValueError, match="elements must not be empty"):
        ti.GroupAveraged(ti.MLP(), so2, elements=[])
    assert ti.GroupAveraged(ti.MLP(), so2, elements=(-90, 0.0)).elements == [270.0, 0.0]


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


# ------------------------------------------------------------------ output actions: the equivariant reference (20.3)
F64 = torch.float64
IMAGE_GROUPS = [
    ("rotation", {"order": 4}),
    ("rotation", {"order": 2}),
    ("flip", {"axis": "x"}),
    ("flip", {"axis": "y"}),
    ("dihedral", {}),
]


def averaged_loop(model, group, x, action):
    """1/|G| sum_g g^-1 . f(g x), element by element, with the group's own act and the action called directly."""
    with torch.no_grad():
        rows = [action(group.inverse(g), model(group.act(g, x))) for g in group.elements()]
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("spec", IMAGE_GROUPS, ids=group_id)
def test_a_generic_conv_net_averaged_with_same_is_equivariant_on_every_element(spec):
    group = make_group(spec)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 5, padding=2))
    x = torch.randn(3, 1, 12, 12)
    with pytest.raises(AssertionError, match="is not equivariant"):
        ti.assert_equivariant(net, group, x, "same")  # the plain net is not
    averaged = ti.GroupAveraged(net, group, output_action="same")
    ti.assert_equivariant(averaged, group, x, "same")  # every element, float32 tolerances
    errors = ti.assert_equivariant(averaged, group, x, "same", dtype=F64)
    assert errors.shape == (group.order,) and float(errors.max()) < 1e-12
    xd = x.double()
    reference = averaged_loop(net.double(), group, xd, lambda g, y: group.act(g, y))  # net and averaged: float64
    torch.testing.assert_close(averaged(xd), reference, rtol=1e-12, atol=1e-12)
    for g in group.elements():  # f(g x) = g . f(x), directly
        torch.testing.assert_close(averaged(group.act(g, xd)), group.act(g, averaged(xd)))
    with pytest.raises(AssertionError, match="is not invariant"):  # an equivariant output is not an invariant one
        ti.assert_invariant(averaged, group, xd)
    assert "output_action='same'" in repr(averaged)


def test_permutation_and_representation_actions():
    """Classes swapped by the mirror; a 2-vector turned by the rotation matrix of each quarter turn."""
    torch.manual_seed(1)
    flip, rot = ti.get_group("flip"), ti.get_group("rotation", order=4)
    x = torch.randn(4, *IN_SHAPE, dtype=F64)
    swap = {0: [0, 1], 1: [1, 0]}
    mlp = ti.MLP(in_shape=IN_SHAPE, num_classes=2, hidden=8).double()
    with pytest.raises(AssertionError):
        ti.assert_equivariant(mlp, flip, x, swap)
    averaged = ti.GroupAveraged(mlp, flip, output_action=swap)
    ti.assert_equivariant(averaged, flip, x, swap)
    torch.testing.assert_close(averaged(x.flip(-1)), averaged(x)[:, [1, 0]])
    perm = ti.OutputAction.permutation(swap)
    torch.testing.assert_close(averaged(x), averaged_loop(mlp, flip, x, perm), rtol=1e-12, atol=1e-12)

    def rho(g):
        c, s = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][g]
        return torch.tensor([[c, -s], [s, c]], dtype=F64)

    averaged = ti.GroupAveraged(mlp, rot, output_action=rho)
    with pytest.raises(AssertionError):
        ti.assert_equivariant(mlp, rot, x, rho)
    ti.assert_equivariant(averaged, rot, x, rho)
    for g in rot.elements():
        torch.testing.assert_close(averaged(rot.act(g, x)), averaged(x) @ rho(g).T)
    torch.testing.assert_close(
        averaged(x), averaged_loop(mlp, rot, x, ti.OutputAction.representation(rho)), rtol=1e-12, atol=1e-12
    )


def test_output_action_is_checked_when_built():
    rot, flip = ti.get_group("rotation", order=4), ti.get_group("flip")
    mlp = ti.MLP(in_shape=IN_SHAPE, num_classes=2, hidden=4)
    with pytest.raises(ValueError, match=r"output_action must be 'trivial', 'same'.*got 'rotate'"):
        ti.GroupAveraged(mlp, rot, output_action="rotate")
    with pytest.raises(ValueError, match=r"none is given for the inverses of \['rot90', 'rot270'\]"):
        ti.GroupAveraged(mlp, rot, output_action={0: [0, 1], 2: [1, 0]})
    ti.GroupAveraged(mlp, rot, elements=[0, 2], output_action={0: [0, 1], 2: [1, 0]})  # the subgroup it covers
    with pytest.raises(ValueError, match="output_action='same' acts on each output"):  # logits cannot be rotated
        ti.GroupAveraged(mlp, flip, output_action="same")(torch.randn(2, *IN_SHAPE))


def test_integer_outputs_are_averaged_as_float64():
    # was "mean(): could not infer output dtype ... Got: Long"
    rot = ti.get_group("rotation", order=4)

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ti.MLP(in_shape=(1, 6, 6), num_classes=3, hidden=8).double()

        def forward(self, t):
            return (100 * self.net(t)).round().long()

    scores = Scores()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    got = ti.GroupAveraged(scores, rot)(x)
    with torch.no_grad():
        want = torch.stack([scores(rot.act(g, x)) for g in rot.elements()]).double().mean(0)
    assert got.dtype == torch.float64
    assert torch.equal(got, want)
    assert torch.equal(ti.GroupAveraged(scores, rot)(rot.act(1, x)), got)  # still exactly invariant
