"""The vmapped ensemble trainer: each member gets what the sequential trainer gives that run, independently."""

import copy
import dataclasses
import functools

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import torchinvariance as ti
from benchmarks.paper import data as D
from benchmarks.paper.ensemble import Ensemble, train_ensemble
from benchmarks.paper.labels import DETACHED
from benchmarks.paper.profiles import PROFILES
from benchmarks.paper.train import RunSpec, TrainingData, accuracy, make_group, make_model, step_losses, train

CPU = torch.device("cpu")
TINY = dataclasses.replace(PROFILES["smoke"], name="tiny", epochs=2, batch_size=96, sizes=(320, 64, 128))


@pytest.fixture(scope="module")
def rot():
    return D.build("mnist", make_group("rotation"), D.default_data_root(), TINY.sizes)


def _close(a: dict, b: dict, atol: float = 5e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize(("kind", "nu"), [("DA", None), ("WT", None), ("IR-l2", 3.0), ("IR-kl", 10.0), (DETACHED, 1.0)])
def test_an_ensemble_of_one_equals_the_sequential_trainer(rot, kind, nu):
    """Float tolerance, not bit equality: vmap runs the layers as batched matmuls, which round differently."""
    spec = RunSpec("mnist", "rotation", kind, seed=5, nu=nu)
    state, hist = train(spec, rot, TINY, CPU, progress=False)
    [(state_e, hist_e)] = train_ensemble([spec], rot, TINY, CPU, progress=False)
    _close(state, state_e)
    assert hist_e["val_acc"] == hist["val_acc"] and hist_e["best_epoch"] == hist["best_epoch"]
    assert hist_e["best_val_acc"] == hist["best_val_acc"] and hist_e["epochs"] == hist["epochs"] == TINY.epochs
    torch.testing.assert_close(torch.tensor(hist_e["train_loss"]), torch.tensor(hist["train_loss"]), rtol=1e-5, atol=0)
    # the regularizer is small (normalized L2: a ratio of small numbers), so its relative rounding is larger
    torch.testing.assert_close(torch.tensor(hist_e["train_reg"]), torch.tensor(hist["train_reg"]), rtol=1e-3, atol=0)
    assert hist_e["ensemble"]["size"] == 1


def test_members_are_independent(rot):
    """Changing one member's nu leaves the other member's trajectory bit for bit unchanged, and so does its company."""
    a = RunSpec("mnist", "rotation", "IR-l2", seed=0, nu=1.0)
    (sa1, ha1), (sb1, _) = train_ensemble([a, RunSpec("mnist", "rotation", "IR-l2", 1, 3.0)], rot, TINY, CPU)
    (sa2, ha2), (sb2, _) = train_ensemble([a, RunSpec("mnist", "rotation", "IR-l2", 1, 300.0)], rot, TINY, CPU)
    [(sa0, ha0)] = train_ensemble([a], rot, TINY, CPU, progress=False)
    for k in sa1:
        assert torch.equal(sa1[k], sa2[k]) and torch.equal(sa1[k], sa0[k]), k
    for key in ("train_loss", "train_reg", "val_acc", "best_epoch"):
        assert ha1[key] == ha2[key] == ha0[key], key
    assert any(not torch.equal(sb1[k], sb2[k]) for k in sb1)  # the changed member did change


def test_each_member_keeps_its_own_seed_data_order_and_nu(rot):
    specs = [RunSpec("mnist", "rotation", "IR-l2", seed=s, nu=nu) for s, nu in ((0, 1.0), (1, 1.0), (0, 10.0))]
    ens = Ensemble(specs, TrainingData(rot, CPU), TINY, CPU)
    torch.manual_seed(1)
    alone = make_model("IR-l2", rot.group)
    assert torch.equal(ens.params["head.weight"][1], alone.state_dict()["head.weight"])  # seeded initialisation
    assert torch.equal(ens.params["head.weight"][0], ens.params["head.weight"][2])  # same seed, same init
    assert ens.nus.tolist() == [1.0, 1.0, 10.0]
    perm, els = ens.draws()
    ref = D.epoch_draws(TINY.sizes[0], 4, torch.Generator().manual_seed(10_000 + 1))
    assert torch.equal(perm[1], ref[0]) and torch.equal(els[1], ref[1])  # member 1's own generator
    assert not torch.equal(perm[0], perm[1]) and torch.equal(perm[0], perm[2])
    with pytest.raises(ValueError, match="one \\(dataset, group, model kind\\)"):
        Ensemble([specs[0], RunSpec("mnist", "rotation", "DA", 0)], TrainingData(rot, CPU), TINY, CPU)
    with pytest.raises(ValueError, match="must differ in seed or nu"):
        train_ensemble([specs[0], specs[0]], rot, TINY, CPU)
    with pytest.raises(ValueError, match="needs a finite regularizer weight"):
        train_ensemble([RunSpec("mnist", "rotation", "IR-l2", 0)], rot, TINY, CPU)


def test_the_best_checkpoint_is_the_best_validation_epoch(rot):
    spec = RunSpec("mnist", "rotation", "DA", seed=2)
    short = dataclasses.replace(TINY, epochs=3)
    [(state, hist)] = train_ensemble([spec], rot, short, CPU, progress=False)
    accs = hist["val_acc"]
    assert hist["best_epoch"] == accs.index(max(accs)) + 1 and hist["best_val_acc"] == max(accs)
    model = make_model("DA", rot.group)
    model.load_state_dict(state)
    assert accuracy(model, rot.val, CPU) == hist["best_val_acc"]


@pytest.mark.parametrize(
    "divergence",
    ["l2", "kl", "normalized_l2", functools.partial(ti.normalized_l2_divergence, detach_denominator=True)],
)
def test_the_vmapped_regularizer_is_the_librarys(divergence):
    """The ensemble's loss, per member, equals ti.InvarianceLoss on that member's own module, value and gradient."""
    kind = {"l2": "IR-l2", "kl": "IR-kl", "normalized_l2": "IR-normalized_l2"}.get(divergence, DETACHED)
    group = make_group("rotation")
    torch.manual_seed(0)
    models = [ti.MLP(in_shape=(1, 12, 12), num_classes=5, hidden=16, depth=2) for _ in range(3)]
    x, y = torch.randn(3, 8, 1, 12, 12), torch.randint(5, (3, 8))
    nus = torch.tensor([0.5, 2.0, 7.0])
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")  # a skeleton: functional_call supplies every parameter

    def member(p, b, xb, yb, nu):
        return step_losses(lambda inp: functional_call(base, (p, b), (inp,)), group, kind, xb, yb, nu)

    out = vmap(member)(params, buffers, x, y, nus)
    out[:, 0].sum().backward()
    for e, m in enumerate(models):
        reg = ti.InvarianceLoss(m, group, divergence=divergence)(x[e])
        task = torch.nn.functional.cross_entropy(m(x[e]), y[e])
        torch.testing.assert_close(out[e, 2], reg, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[e, 1], task, rtol=1e-5, atol=1e-7)
        (task + nus[e] * reg).backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(params[k].grad[e], p.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_compiled_step_equals_eager(rot):
    """--compile (torch.compile of the vmapped step) trains what eager trains, within float tolerance."""
    try:
        torch.compile(lambda t: t * 2)(torch.ones(2))
    except Exception as exc:  # no working inductor backend (e.g. no C++ compiler)
        pytest.skip(f"torch.compile is unavailable here: {type(exc).__name__}: {exc}")
    one = dataclasses.replace(TINY, epochs=1)
    specs = [RunSpec("mnist", "rotation", "IR-l2", seed=s, nu=nu) for s, nu in ((0, 1.0), (1, 10.0))]
    eager = train_ensemble(specs, rot, one, CPU, progress=False)
    compiled = train_ensemble(specs, rot, one, CPU, compile=True, progress=False)
    for (s_e, h_e), (s_c, h_c) in zip(eager, compiled):
        _close(s_e, s_c)
        torch.testing.assert_close(torch.tensor(h_c["train_loss"]), torch.tensor(h_e["train_loss"]), rtol=1e-4, atol=0)
        assert h_c["ensemble"]["compile"] and not h_e["ensemble"]["compile"]
