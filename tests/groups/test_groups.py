import pytest
import torch
from helpers import BUILTIN_GROUPS, Listed, group_id, make_group
from hypothesis import given, settings
from hypothesis import strategies as st

import torchinvariance as ti

GROUP_PARAMS = pytest.mark.parametrize("spec", BUILTIN_GROUPS, ids=group_id)


def _image(group, shape=(2, 3, 6, 6), dtype=torch.float64):
    torch.manual_seed(0)
    return torch.randn(shape, dtype=torch.float64).to(dtype)


@GROUP_PARAMS
def test_axioms_every_pair(spec):
    group = make_group(spec)
    x = _image(group)
    els = group.elements()
    assert len(els) == group.order == len(set(els))
    assert els[0] == group.identity
    assert torch.equal(group.act(group.identity, x), x)
    for g in els:
        gx = group.act(g, x)
        assert torch.equal(group.act(group.inverse(g), gx), x), g
        assert group.compose(g, group.inverse(g)) == group.identity
        for h in els:
            assert torch.equal(group.act(group.compose(g, h), x), group.act(g, group.act(h, x))), (g, h)


@GROUP_PARAMS
def test_action_is_faithful(spec):
    """Distinct elements act differently on a generic image (the table is not trivial)."""
    group = make_group(spec)
    x = _image(group)
    images = [group.act(g, x) for g in group.elements()]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not torch.equal(images[i], images[j])


@GROUP_PARAMS
def test_cayley_table_is_latin_square(spec):
    group = make_group(spec)
    table = group.cayley_table()
    for row in table:
        assert sorted(row) == list(group.elements())
    for col in zip(*table):
        assert sorted(col) == list(group.elements())


@GROUP_PARAMS
def test_orbit_matches_act_and_is_one_tensor(spec):
    group = make_group(spec)
    x = _image(group)
    orbit = group.orbit(x)
    assert orbit.shape == (group.order, *x.shape)
    for i, g in enumerate(group.elements()):
        assert torch.equal(orbit[i], group.act(g, x))


@GROUP_PARAMS
def test_act_per_sample(spec):
    group = make_group(spec)
    x = _image(group, shape=(7, 1, 6, 6))
    gs = [i % group.order for i in range(7)]
    out = group.act_per_sample(gs, x)
    for i, g in enumerate(gs):
        assert torch.equal(out[i], group.act(g, x[i]))


@GROUP_PARAMS
def test_action_is_differentiable_and_preserves_dtype(spec):
    group = make_group(spec)
    x = _image(group).requires_grad_()
    for g in group.elements():
        y = group.act(g, x)
        assert y.dtype == x.dtype and y.device == x.device
    torch.autograd.gradcheck(lambda t: group.orbit(t), (x,))


def test_known_values():
    x = torch.tensor([[1, 2], [3, 4]])
    rot = ti.get_group("rotation", order=4)
    assert torch.equal(rot.act(1, x), torch.tensor([[2, 4], [1, 3]]))
    assert torch.equal(rot.act(2, x), torch.tensor([[4, 3], [2, 1]]))
    assert torch.equal(ti.get_group("rotation", order=2).act(1, x), rot.act(2, x))
    shift = ti.get_group("translation", order=3, axis="x")
    row = torch.arange(6).reshape(1, 6)
    assert shift.act(1, row).tolist() == [[4, 5, 0, 1, 2, 3]]
    assert ti.get_group("flip", axis="y").act(1, x).tolist() == [[3, 4], [1, 2]]
    d4 = ti.get_group("dihedral")
    assert d4.order == 8
    assert torch.equal(d4.act(4, x), x.flip(-1))


def test_sample_is_uniform_and_seeded():
    group = ti.get_group("dihedral")
    gen = torch.Generator().manual_seed(0)
    draws = group.sample(8000, generator=gen)
    counts = torch.bincount(torch.tensor(draws), minlength=8).float()
    assert counts.min() > 800 and counts.max() < 1200
    assert group.sample(5, torch.Generator().manual_seed(3)) == group.sample(5, torch.Generator().manual_seed(3))


@settings(max_examples=40, deadline=None)
@given(
    spec=st.sampled_from(BUILTIN_GROUPS),
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    size=st.sampled_from([6, 12]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]),
)
def test_axioms_property(spec, lead, size, dtype):
    group = make_group(spec)
    x = (torch.randn(*lead, size, size) * 10).to(dtype)
    g, h = group.elements()[-1], group.elements()[len(group.elements()) // 2]
    assert torch.equal(group.act(group.compose(g, h), x), group.act(g, group.act(h, x)))
    assert torch.equal(group.act(group.inverse(g), group.act(g, x)), x)
    assert group.orbit(x).dtype == dtype


def test_bad_input_errors():
    rot = ti.get_group("rotation", order=4)
    with pytest.raises(ValueError, match=r"square.*\(1, 36, 35\)"):
        rot.act(1, torch.zeros(1, 36, 35))
    with pytest.raises(ValueError, match="divisible by 3"):
        ti.get_group("translation", order=3).act(1, torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match=r"elements 0\.\.3"):
        rot.act(4, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        rot.act(1, torch.zeros(4))
    with pytest.raises(ValueError, match="axis"):
        ti.get_group("flip", axis="z")


# ----------------------------------------------------------------------------- elements are integers (issue 11 item 8)
def test_non_integer_elements_are_rejected_not_truncated():
    import numpy as np

    rot = ti.get_group("rotation", order=4)
    x = torch.randn(2, 1, 4, 4)
    for bad in (1.7, 1.0, torch.tensor(1.7), True, "1"):
        with pytest.raises(ValueError, match=r"has elements 0\.\.3 \(integers\)"):
            rot.act(bad, x)
    with pytest.raises(ValueError, match=r"has elements 0\.\.3"):
        rot.act_per_sample([1.7, 0], x)
    with pytest.raises(ValueError, match=r"dtype torch.float32"):
        rot.act_per_sample(torch.tensor([1.7, 0.0]), x)
    with pytest.raises(ValueError, match=r"has elements 0\.\.3"):
        ti.assert_invariant(torch.nn.Flatten(), rot, x, elements=[1.7])
    # integer numpy scalars and 0-d integer tensors are elements
    assert torch.equal(rot.act(np.int64(1), x), rot.act(1, x))
    assert torch.equal(rot.act(torch.tensor(1), x), rot.act(1, x))
    assert torch.equal(rot.act_per_sample(np.array([1, 3]), x), torch.stack([rot.act(1, x[0]), rot.act(3, x[1])]))


def test_legacy_act_hook_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'_act', which is now called 'transform'"):

        class Old(ti.CyclicGroup):
            event_ndim = 1

            def __init__(self):
                super().__init__(2)

            def _act(self, g, x):
                return x.flip(-1) if g else x

    assert Old().act(1, torch.arange(3.0)).tolist() == [2.0, 1.0, 0.0]


# --------------------------------------------------------------------------- listing of the elements (issue 22 item 8)
def test_check_group_fails_when_elements_lists_fewer_than_order():
    ti.check_group(Listed([0, 1, 2, 3]))  # the reference: a correct listing passes
    with pytest.raises(AssertionError, match=r"elements: elements\(\) lists 3 elements but the order is 4"):
        ti.check_group(Listed([0, 1, 2]))
    with pytest.raises(AssertionError, match=r"lists 1 element\(s\) more than once"):
        ti.check_group(Listed([0, 1, 2, 2]))
    with pytest.raises(AssertionError, match=r"lists \[7\], which check_element\(\) rejects"):
        ti.check_group(Listed([0, 1, 2, 3, 7]))


def test_a_short_listing_is_rejected_where_elements_none_means_the_whole_group():
    short = Listed([0, 1, 2])
    model = torch.nn.Flatten()
    x = _image(short, (2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"does not list its elements correctly: .*3 elements but the order is 4"):
        ti.orbit.resolve_elements(short, None)
    for measure in (ti.logit_invariance, ti.distribution_invariance):
        with pytest.raises(ValueError, match="lists 3 elements but the order is 4"):
            measure(model, short, x)
    with pytest.raises(ValueError, match="lists 3 elements but the order is 4"):
        ti.LogitInvariance(model, short)
    # explicit elements do not need the listing
    assert ti.logit_invariance(model, short, x, elements=[1, 3], reduction="none").shape == (2, 2)


def test_check_group_fails_when_elements_does_not_start_with_the_identity():
    with pytest.raises(AssertionError, match=r"must list the identity g0 first .*; it starts with g1"):
        ti.check_group(Listed([1, 2, 3, 0]))


@pytest.mark.parametrize("order", [3, 6, 8, 12])
def test_rotation_of_another_order_names_so2_and_its_angles(order):
    """Orders other than 2 and 4 are not exact on the pixel grid: the error names so2 at the angles (issue 20.6)."""
    pattern = rf"need order in \{{2, 4\}}; got order={order}\. .*continuous group so2"
    with pytest.raises(ValueError, match=pattern) as e:
        ti.get_group("rotation", order=order)
    angles = [float(a) for a in str(e.value).split("so2:angles=")[1].split(")")[0].split(",")]
    assert angles == [360.0 * k / order for k in range(order)]
    so2 = ti.get_group("so2")
    x = so2.mask_input(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    for angle in angles:  # the named angles are elements; the multiples of 90 degrees are exact
        if angle % 90 == 0:
            torch.testing.assert_close(so2.act(angle, x), torch.rot90(x, int(angle) // 90, (-2, -1)))
    assert ti.orbit_forward(torch.nn.Flatten(), so2, x, angles).shape == (order, 2, 64)


@pytest.mark.parametrize("order", [1, 4.0, True, -4, "8"])
def test_rotation_rejects_other_orders_without_a_hint(order):
    with pytest.raises(ValueError, match=r"need order in \{2, 4\}; got order=.*[^.]$"):
        ti.get_group("rotation", order=order)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: ti.InvarianceLoss(m, "rotation"),
        lambda m, x: ti.logit_invariance(m, "rotation", x),
        lambda m, x: ti.assert_invariant(m, "flip", x),
    ],
)
def test_a_group_name_where_a_group_is_expected_points_to_get_group(call):
    # was "group must be a torchinvariance Group, got str", which does not say what to do
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(TypeError, match=r"got the string '(rotation|flip)'.*ti\.get_group\('(rotation|flip)'\)"):
        call(model, torch.randn(2, 1, 4, 4))
