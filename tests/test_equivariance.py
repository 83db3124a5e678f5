"""Output actions (actions.py), EquivarianceLoss, equivariance_error and assert_equivariant."""

import math
import pickle

import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64
ROT = ti.get_group("rotation", order=4)


class C4Conv(nn.Module):
    """A convolution whose kernel is averaged over the four rotations (circular padding): exactly C4-equivariant."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(2, 1, 3, 3, dtype=F64))

    def forward(self, x):
        w = torch.stack([torch.rot90(self.weight, k, (-2, -1)) for k in range(4)]).mean(0)
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), w)


def _generic_conv(seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular", bias=False).double()


def test_symmetric_convolution_scores_zero_under_same_on_every_element():
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    model = C4Conv()
    values = ti.EquivarianceLoss(model, ROT, "same", reduction="none")(x)
    assert values.shape == (4, 3) and float(values.detach().abs().max()) < 1e-24
    errors = ti.assert_equivariant(model, ROT, x, "same")
    assert errors.shape == (4,) and float(errors.max()) < 1e-12
    # reference: g^-1 f(g x) computed by hand, element by element
    for g in ROT.elements():
        ref = ROT.act(ROT.inverse(g), model(ROT.act(g, x)))
        torch.testing.assert_close(ref, model(x), rtol=0, atol=1e-12)


def test_generic_convolution_scores_positive_gets_a_gradient_and_fails_the_assertion():
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    conv = _generic_conv()
    loss = ti.EquivarianceLoss(conv, ROT, "same")
    value = loss(x)
    ref = torch.stack(
        [0.5 * (ROT.act(ROT.inverse(g), conv(ROT.act(g, x))) - conv(x)).pow(2).flatten(1).sum(1) for g in range(4)]
    ).mean()
    torch.testing.assert_close(value, ref)
    value.backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().max()) > 0
    with pytest.raises(AssertionError, match=r"Conv2d is not equivariant to Rotation\(order=4\): worst element 'rot"):
        ti.assert_equivariant(conv, ROT, x, "same")
    # and the invariance check of the same model under the trivial action also fails: a conv is not invariant
    with pytest.raises(AssertionError, match="not invariant"):
        ti.assert_invariant(conv, ROT, x)


def test_logits_reuse_and_composition():
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    conv = _generic_conv(1)
    loss = ti.EquivarianceLoss(conv, ROT, "same")
    torch.testing.assert_close(loss(x, logits=conv(x)), loss(x))
    both = loss + 0.5 * ti.InvarianceLoss(conv, ROT)
    torch.testing.assert_close(both(x), loss(x) + 0.5 * ti.InvarianceLoss(conv, ROT)(x))
    assert "output_action='same'" in repr(loss)
    assert pickle.loads(pickle.dumps(loss))(x).shape == ()


def test_permutation_action_on_classes():
    """A classifier that sees the flip and swaps two classes is equivariant under that permutation."""
    flip = ti.get_group("flip")
    inner = mlp(16, classes=1, dtype=F64)

    class Swapping(nn.Module):
        def forward(self, x):
            sym = 0.5 * (inner(x) + inner(x.flip(-1)))  # invariant, and the same for both classes
            ramp = torch.arange(x.shape[-1], dtype=x.dtype)  # not flip-symmetric, so the sum below is not 0
            anti = ((x - x.flip(-1)) * ramp).flatten(1).sum(1, keepdim=True)  # changes sign under the flip
            return sym + torch.cat([anti, -anti], 1)

    x = torch.randn(4, 1, 4, 4, dtype=F64)
    swap = {0: [0, 1], 1: [1, 0]}
    ti.assert_equivariant(Swapping(), flip, x, swap)
    assert float(ti.equivariance_error(Swapping(), flip, x, swap).max()) < 1e-12
    with pytest.raises(AssertionError):
        ti.assert_invariant(Swapping(), flip, x)


def test_representation_and_callable_actions():
    """A vector output rotating with the image: rho is the 2x2 rotation by 90 degrees per quarter turn."""

    def centroid(x):  # intensity-weighted centre of mass: rotates with the image (square grid, centred coords)
        h = x.shape[-1]
        c = torch.arange(h, dtype=x.dtype) - (h - 1) / 2
        w = x.flatten(1).sum(1, keepdim=True)
        xs = (x.sum(-2).flatten(1) * c).sum(1, keepdim=True) / w  # column coordinate
        ys = (x.sum(-1).flatten(1) * c).sum(1, keepdim=True) / w  # row coordinate (down)
        return torch.cat([xs, -ys], 1)  # (x right, y up)

    def rho(g):
        c, s = round(math.cos(math.pi / 2 * int(g))), round(math.sin(math.pi / 2 * int(g)))
        return torch.tensor([[c, -s], [s, c]], dtype=F64)

    x = torch.rand(3, 1, 6, 6, dtype=F64)
    ti.assert_equivariant(centroid, ROT, x, rho)
    ti.assert_equivariant(centroid, ROT, x, ti.OutputAction.representation(rho))
    ti.assert_equivariant(centroid, ROT, x, lambda g, y: y @ rho(g).T)
    with pytest.raises(AssertionError):
        ti.assert_equivariant(centroid, ROT, x, lambda g, y: y)  # the trivial action is wrong here


def test_bad_output_actions():
    with pytest.raises(ValueError, match="output_action must be 'trivial', 'same'"):
        ti.EquivarianceLoss(mlp(16), ROT, "mirror")
    with pytest.raises(ValueError, match=r"must be a permutation of 0\.\.n-1"):
        ti.OutputAction.permutation([[0, 0]])
    with pytest.raises(ValueError, match="takes one argument"):
        ti.EquivarianceLoss(mlp(16), ROT, lambda a, b, c: a)


# ----------------------------------------------------------------------------- outputs an action does not fit
def _logits_model(classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, classes)).double()


@pytest.mark.parametrize("classes", [3, 2])  # B == C: the (B, C) matrix is square, a rotation would accept it
def test_same_on_logits_raises_instead_of_rotating_across_samples(classes):
    """Issue 22 item 6: 'same' on (B, C) outputs rotated the logits matrix across samples and returned numbers."""
    x = torch.randn(3, 1, 4, 4, dtype=F64) if classes == 3 else torch.randn(2, 1, 4, 4, dtype=F64)
    model = _logits_model(classes)
    match = r"output_action='same'.*at least 2 dims after the batch dim.*got outputs of shape \(\d, \d\)"
    with pytest.raises(ValueError, match=match):
        ti.equivariance_error(model, ROT, x, "same")
    with pytest.raises(ValueError, match=match):
        ti.EquivarianceLoss(model, ROT, "same")(x)
    with pytest.raises(ValueError, match=match):
        ti.EquivarianceLoss(model, ROT, "same")(x, logits=model(x))
    with pytest.raises(ValueError, match=match):
        ti.orbit_forward(model, ROT, x, output_action="same")
    # an output of exactly (B, H, W), a mask without channels, is image-shaped and still works
    mask = lambda z: z[:, 0] * 2.0  # noqa: E731  equivariant: pointwise
    assert float(ti.equivariance_error(mask, ROT, x, "same").max()) == 0.0
    # a 1-D group's "same" needs one dim after the batch dim: (B, T) outputs are fine
    from helpers import Reverse

    assert float(ti.equivariance_error(lambda z: z[:, 0], Reverse(), torch.randn(4, 2, 5), "same").max()) == 0.0


def test_a_callable_action_must_keep_the_output_shape():
    """Issue 22 item 7: a (1, C) result was reshaped into the batch (error) or trained on a slice (loss)."""
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    model = _logits_model(3)
    first = lambda g, y: y[:1]  # noqa: E731
    flat = lambda g, y: y.reshape(-1)  # noqa: E731  same number of entries, another shape
    for action in (first, flat, lambda g, y: y.tolist()):
        with pytest.raises(ValueError, match=r"must return a tensor of the output's shape \(3, 3\).*returned"):
            ti.equivariance_error(model, ROT, x, action)
        with pytest.raises(ValueError, match=r"must return a tensor of the output's shape \(3, 3\)"):
            ti.EquivarianceLoss(model, ROT, action)(x)
        with pytest.raises(ValueError, match=r"must return a tensor of the output's shape \(3, 3\)"):
            ti.EquivarianceLoss(model, ROT, action, chunk_size=2)(x, logits=model(x))
    # test the tester: a callable that keeps the shape is used as before
    assert ti.EquivarianceLoss(model, ROT, lambda g, y: y)(x).shape == ()


def test_a_representation_needs_vector_outputs_of_its_size():
    """Issue 22 item 9: rho(g) multiplied the last dim of any output, mixing image columns of feature maps."""
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    conv = nn.Conv2d(1, 2, 1).double()  # (B, 2, 4, 4): the last dim (4) matches a 4x4 rho, but it is a column index
    rho4 = lambda g: torch.eye(4, dtype=F64)  # noqa: E731
    with pytest.raises(ValueError, match=r"acts on vector outputs \(B, d\); got outputs of shape \(2, 2, 4, 4\)"):
        ti.equivariance_error(conv, ROT, x, rho4)
    with pytest.raises(ValueError, match=r"acts on vector outputs \(B, d\)"):
        ti.EquivarianceLoss(conv, ROT, rho4)(x)
    rho2 = lambda g: torch.eye(2, dtype=F64)  # noqa: E731
    with pytest.raises(ValueError, match=r"\(d, d\) matrix with d = 3.*got a matrix of shape \(2, 2\)"):
        ti.equivariance_error(_logits_model(3), ROT, x, rho2)
    # test the tester: the identity representation of the right size on (B, d) outputs is the trivial action
    model = _logits_model(2)
    torch.testing.assert_close(
        ti.equivariance_error(model, ROT, x, rho2), ti.invariance_error(model, ROT, x), rtol=0, atol=0
    )
    # and a vector field, whose positions move too, is written as a callable as the message says
    field = lambda z: torch.cat([z, z], 1)  # noqa: E731  two copies of the image: rho = identity, positions move
    rot_field = lambda g, y: torch.einsum("ij,bj...->bi...", rho2(g), ROT.act(g, y))  # noqa: E731
    assert float(ti.equivariance_error(field, ROT, x, rot_field).max()) == 0.0


def test_equivariance_loss_on_so2_compares_same_outputs_on_the_disk():
    """so2's g^-1 zeroes the corners of every copy: an exactly equivariant 1x1 convolution with a bias was
    penalized for f(x)'s corners (loss 19.5 at 90, 180, 270 degrees); on the disk it is 0 up to rounding."""
    torch.manual_seed(0)
    so2 = ti.get_group("so2")
    conv = torch.nn.Conv2d(1, 2, 1).double()
    x = so2.mask_input(torch.randn(3, 1, 12, 12, dtype=torch.float64))
    quarter = [90.0, 180.0, 270.0]
    auto = ti.EquivarianceLoss(conv, so2, "same", elements=quarter)
    assert auto.on_disk and float(auto(x)) < 1e-20
    everywhere = ti.EquivarianceLoss(conv, so2, "same", elements=quarter, mask=None)
    assert float(everywhere(x)) > 1.0  # the corners: 0 in g^-1 f(g x), the bias in f(x)
    # against an explicit loop on the disk, at an angle that interpolates
    disk = so2.disk(12, dtype=torch.float64)
    with torch.no_grad():
        expected = sum(
            0.5 * float((((so2.act(-t, conv(so2.act(t, x))) - conv(x)) * disk) ** 2).sum()) / 3 for t in (30.0,)
        )
        torch.testing.assert_close(
            float(ti.EquivarianceLoss(conv, so2, "same", elements=[30.0])(x)), expected, rtol=1e-10, atol=0
        )
    # a group that does not zero the corners, or another action: no disk unless asked for
    assert not ti.EquivarianceLoss(conv, ti.get_group("rotation", order=4), "same").on_disk
    assert not ti.EquivarianceLoss(conv, ti.get_group("so2", mask=None), "same", elements=[30.0]).on_disk
    assert ti.EquivarianceLoss(conv, ti.get_group("rotation", order=4), "same", mask="circle").on_disk
    with pytest.raises(ValueError, match="mask must be one of"):
        ti.EquivarianceLoss(conv, so2, "same", elements=[30.0], mask="disk")


def test_a_one_argument_callable_on_the_outputs_is_told_it_was_read_as_rho():
    # lambda y: y was read as rho(g) and the error said only "got a matrix of shape ()"
    rot = ti.get_group("rotation", order=4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"one-argument callable is read as the representation.*\(g, y\)"):
        ti.equivariance_error(net, rot, torch.randn(2, 1, 4, 4), output_action=lambda y: y)
