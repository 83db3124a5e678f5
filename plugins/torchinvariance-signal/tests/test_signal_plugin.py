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
