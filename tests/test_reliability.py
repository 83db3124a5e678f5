"""Real-model regressions (issue 11): BatchNorm, masked logits, ownership, weights, errors. One test per item."""

import copy
import io
import pickle

import pytest
import torch
from helpers import mlp
from torch import nn

import torchinvariance as ti

F64 = torch.float64
ROT = ti.get_group("rotation", order=4)


def _bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _warm(model, seed=1):
    """A few train-mode forwards so the running statistics are not the defaults."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 4, 4, generator=g) * 2 + 1)
    return model


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


class RotAvg(nn.Module):
    """Rotates its input internally: the input gradient is non-contiguous (item 1)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, z):
        return torch.stack([self.inner(torch.rot90(z, k, (-2, -1))) for k in range(4)]).mean(0)


def test_item1_si_of_a_model_that_rotates_internally_is_one():
    model = RotAvg(mlp(144, classes=3, dtype=F64)).eval()
    x = torch.randn(6, 1, 12, 12, dtype=F64)
    si = ti.saliency_invariance(model, ROT, x, n_steps=8)
    torch.testing.assert_close(si, torch.tensor(1.0, dtype=F64), atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "measure",
    [
        lambda m, x: ti.logit_invariance(m, ROT, x),
        lambda m, x: ti.distribution_invariance(m, ROT, x),
        lambda m, x: ti.saliency_invariance(m, ROT, x, n_steps=4),
        lambda m, x: ti.invariance_error(m, ROT, x),
        lambda m, x: ti.assert_invariant(m, ROT, x, atol=1e9),
        lambda m, x: ti.LogitInvariance(m, ROT).update(x),
        lambda m, x: ti.evaluate_invariance(m, ROT, [(x, torch.zeros(len(x), dtype=torch.long))], progress=False),
    ],
    ids=["li", "di", "si", "invariance_error", "assert_invariant", "LogitInvariance", "evaluate_invariance"],
)
def test_item5_measurements_run_in_eval_mode_restore_the_mode_and_change_no_buffer(measure):
    model = _warm(_bn_model())
    x = torch.randn(5, 1, 4, 4)
    before = _buffers(model)
    modes = [m.training for m in model.modules()]
    measure(model, x)
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes


def test_item5_li_is_the_eval_mode_value_and_train_mode_is_an_explicit_opt_out():
    model = _warm(_bn_model())
    x = torch.randn(6, 1, 4, 4)
    ref = ti.logit_invariance(model.eval(), ROT, x)
    model.train()
    torch.testing.assert_close(ti.logit_invariance(model, ROT, x), ref)
    before = _buffers(model)
    train_value = ti.logit_invariance(model, ROT, x, eval_mode=False)
    assert not torch.allclose(train_value, ref)  # batch statistics differ from running ones
    assert all(torch.equal(before[k], v) for k, v in _buffers(model).items())  # and still no buffer changed
    assert model.training


def test_item5_mode_is_restored_on_exceptions():
    model = _warm(_bn_model())
    with pytest.raises(ValueError):
        ti.logit_invariance(model, ROT, torch.randn(2, 1, 4, 5))  # not square
    assert model.training


def test_item6_regularizer_leaves_running_statistics_as_the_task_forward_left_them():
    x = torch.randn(8, 1, 4, 4)
    for chunk in (None, 2):
        model = _warm(_bn_model())
        reference = copy.deepcopy(model)
        reference(x)  # the task forward alone
        reg = ti.InvarianceLoss(model, ROT, chunk_size=chunk)
        logits = model(x)
        reg(x, logits=logits).backward()  # with chunk_size, backward recomputes the orbit forward
        after, expected = _buffers(model), _buffers(reference)
        assert all(torch.equal(after[k], expected[k]) for k in expected), chunk


def test_item7_kl_loss_with_masked_logits_is_zero_not_nan():
    class Masked(nn.Module):
        def forward(self, z):
            out = z.flatten(1)[:, :3] * 0 + torch.tensor([0.0, 0.0, 1.0])
            return out.masked_fill(torch.tensor([False, True, False]), float("-inf"))

    x = torch.randn(4, 1, 4, 4)
    value = ti.InvarianceLoss(Masked(), ROT, divergence="kl")(x)
    assert torch.equal(value, torch.tensor(0.0))
    assert torch.equal(ti.distribution_invariance(Masked(), ROT, x), torch.tensor(0.0))


def test_item7_di_is_never_negative():
    model = RotAvg(mlp(16, classes=3)).eval()
    terms = ti.distribution_invariance(model, ROT, torch.randn(32, 1, 4, 4), reduction="none")
    assert bool((terms >= 0).all())


def test_item9_weights_must_be_finite_and_non_negative():
    reg = ti.InvarianceLoss(mlp(16), ROT)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            bad * reg
    with pytest.raises(ValueError, match="negative weight turns the penalty into a reward"):
        -1.0 * reg
    with pytest.raises(ValueError, match="finite"):
        ti.WeightedInvarianceLoss([(float("nan"), reg)])
    allowed = ti.WeightedInvarianceLoss([(-1.0, reg)], allow_negative=True)
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close((2 * allowed)(x), -2 * reg(x))
    torch.testing.assert_close((allowed + reg)(x), torch.zeros(()), atol=1e-7, rtol=0)


def test_item10_si_of_a_constant_model_is_one_and_zero_against_nonzero_maps():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 1.0, 2.0]))

        def forward(self, z):
            return self.bias.expand(z.shape[0], 3) + 0 * z.flatten(1)[:, :1]

    si = ti.saliency_invariance(Constant(), ROT, torch.randn(3, 1, 4, 4), n_steps=4, reduction="none")
    assert torch.equal(si, torch.ones(4, 3))
    from torchinvariance.metrics.saliency import _similarity

    ref = torch.zeros(1, 3, 3)
    aligned = torch.stack([torch.zeros(1, 3, 3), torch.ones(1, 3, 3)])
    assert _similarity(ref, aligned).tolist() == [[1.0], [0.0]]
    assert _similarity(torch.ones(1, 3, 3), aligned).tolist() == [[0.0], [1.0]]


def test_item12_the_loss_does_not_own_the_model():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = mlp(16)
            self.reg = ti.InvarianceLoss(self.model, ROT)

    holder = Holder()
    keys = list(holder.state_dict())
    assert keys == [k for k in keys if k.startswith("model.")]  # every weight once
    assert list(holder.reg.state_dict()) == [] and list(holder.reg.parameters()) == []
    fresh = Holder()
    fresh.load_state_dict(holder.model.state_dict() | {}, strict=False)
    fresh.model.load_state_dict(holder.model.state_dict(), strict=True)  # a model-only checkpoint loads strictly
    # .to() moves the model; deepcopy and pickling keep the loss working on its own copy of the model
    reg = ti.InvarianceLoss(mlp(16), ROT).to(F64)
    assert next(reg.model.parameters()).dtype == F64
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    dup = copy.deepcopy(holder)
    assert dup.reg.model is dup.model and dup.model is not holder.model
    buf = io.BytesIO()
    pickle.dump(reg, buf)
    torch.testing.assert_close(pickle.loads(buf.getvalue())(x), reg(x))


def test_item15_chunked_metrics_equal_the_whole_orbit():
    model = mlp(16, dtype=F64)
    x = torch.randn(5, 1, 4, 4, dtype=F64)
    dih = ti.get_group("dihedral")
    for fn in (ti.logit_invariance, ti.distribution_invariance):
        torch.testing.assert_close(fn(model, dih, x, chunk_size=3), fn(model, dih, x), rtol=1e-12, atol=0)
    data = [(x, torch.zeros(5, dtype=torch.long))]
    a = ti.evaluate_invariance(model, dih, data, chunk_size=2, progress=False).to_dict()
    b = ti.evaluate_invariance(model, dih, data, progress=False).to_dict()
    # equal up to the rounding of batched matmuls, which may depend on the batch size (seen on AMD EPYC)
    flat_a, flat_b = _flat(a), _flat(b)
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        expected = flat_b[key]
        assert value == (pytest.approx(expected, rel=1e-12, abs=1e-15) if isinstance(value, float) else expected), key


def _flat(d, prefix=""):
    """``{"li/per_element/1": 0.26, ...}``: a nested dict or list as one level, for a comparison with tolerance."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    out = {}
    for k, v in items:
        if isinstance(v, (dict, list)):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_item16_default_report_is_cheap_and_si_is_capped():
    model = mlp(16)
    data = [(torch.randn(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    report = ti.evaluate_invariance(model, ROT, data, progress=False)
    assert set(report.results) == {"accuracy", "di", "li"}
    seen = []
    original = ti.SaliencyInvariance.update

    def spy(self, x, y=None):
        seen.append(x.shape[0])
        return original(self, x, y)

    ti.SaliencyInvariance.update = spy
    try:
        capped = ti.evaluate_invariance(model, ROT, data, metrics=("li", "si"), si_samples=6, progress=False, n_steps=4)
    finally:
        ti.SaliencyInvariance.update = original
    assert seen == [4, 2] and capped.n_samples == 12


def test_item4_sync_dist_false_needs_no_collective_and_errors_keep_their_cause():
    # without a process group: sync_dist=False behaves like today, an empty loader names the loader
    with pytest.raises(ValueError, match="the loader yielded no batches") as err:
        ti.evaluate_invariance(mlp(16), ROT, [], sync_dist=False, progress=False)
    assert err.value.__cause__ is None or isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="yielded no batches") as err:
        ti.evaluate_invariance(mlp(16), ROT, [], sync_dist=True, progress=False)
    assert isinstance(err.value.__cause__, RuntimeError)  # the real error is chained, not hidden


# ----------------------------------------------------------------------------- unclear errors
def test_errors_name_the_problem_and_the_fix():
    model = mlp(16)
    x = torch.randn(2, 1, 4, 4)
    dict_model = lambda z: {"logits": model(z)}  # noqa: E731
    torch.testing.assert_close(ti.logit_invariance(dict_model, ROT, x), ti.logit_invariance(model, ROT, x))
    with pytest.raises(ValueError, match="returned a container"):
        ti.logit_invariance(lambda z: {"out": model(z)}, ROT, x)
    with pytest.raises(ValueError, match="must return one value per sample"):
        ti.InvarianceLoss(model, ROT, divergence=lambda a, b: (a - b).pow(2).sum())(x)
    with pytest.raises(ValueError, match=r"f\(x\) has shape \(2, 7\).*same number of classes"):
        ti.InvarianceLoss(model, ROT)(x, logits=torch.randn(2, 7))
    with pytest.raises(TypeError, match="elements must be None"):
        ti.InvarianceLoss(model, ROT, elements=1.5)
    with pytest.raises(ValueError, match="kernel_size=9 is too large for 4x4 images"):
        ti.saliency_invariance(model, ROT, x, kernel_size=9, n_steps=2)
    with pytest.raises(TypeError, match="target must be an int class index"):
        ti.saliency_map(model, x, target="1", n_steps=2)
