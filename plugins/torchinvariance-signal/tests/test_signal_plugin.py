import torch

import torchinvariance as ti


def test_groups_come_from_the_registry():
    assert {"time_reversal", "time_shift"} <= set(ti.list_groups())
    rev = ti.get_group("time_reversal")
    shift = ti.get_group("time_shift", order=4)
    x = torch.randn(3, 8)
    for group in (rev, shift):
        for g in group.elements():
            for h in group.elements():
                assert torch.equal(group.act(group.compose(g, h), x), group.act(g, group.act(h, x)))
            assert torch.equal(group.act(group.inverse(g), group.act(g, x)), x)


def test_invariance_loss_with_plugin_group():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    loss = ti.InvarianceLoss(model, ti.get_group("time_reversal"))
    assert loss(torch.randn(4, 8)) > 0


def test_every_group_passes_check_group():
    for name, params in [
        ("time_reversal", {}),
        ("time_shift", {"order": 4}),
        ("polarity", {}),
        ("fractional_shift", {}),
    ]:
        ti.check_group(ti.get_group(name, **params))


def test_fractional_shift_matches_integer_roll_and_trains_with_sampled_elements():
    shift = ti.get_group("fractional_shift")
    assert not shift.exact and not shift.is_finite and not ti.get_group("polarity").spatial
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(shift.act(0.25, x), x.roll(4, dims=-1))
    model = torch.nn.Linear(16, 3).double()
    loss = ti.InvarianceLoss(model, shift, elements=4, generator=torch.Generator().manual_seed(0))
    value = loss(x)
    value.backward()
    assert value > 0 and model.weight.grad is not None
