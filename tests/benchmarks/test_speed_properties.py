"""Structural cost properties of InvarianceLoss (rows through the model, autograd memory) and a smoke run of
``python -m benchmarks.speed``. No wall-clock asserts: the timings live in the benchmark, not in unit tests."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Rows, mlp

import torchinvariance as ti

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.speed.timing import saved_bytes  # noqa: E402  (the benchmark's own memory measure is tested too)

ORDERS = {2: ("rotation", {"order": 2}), 4: ("rotation", {"order": 4}), 8: ("dihedral", {})}


def _batch(b=6, size=6, seed=0, dtype=torch.float32):
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_logits_reuse_sends_only_non_identity_rows_in_one_forward(order):
    group = ti.get_group(ORDERS[order][0], **ORDERS[order][1])
    model = Rows(mlp(36))
    x = _batch()
    logits = model(x)
    model.calls.clear()
    ti.InvarianceLoss(model, group)(x, logits=logits).backward()
    assert model.calls == [(order - 1) * 6]
    model.calls.clear()
    ti.InvarianceLoss(model, group).forward_with_logits(x)
    assert model.calls == [order * 6]  # f(x) and the orbit in ONE forward


def test_elements_cost_grows_with_k_not_with_the_order():
    group = ti.get_group("dihedral")
    model = Rows(mlp(36))
    x = _batch()
    logits = model(x)
    for k in (1, 2, 4):
        model.calls.clear()
        loss = ti.InvarianceLoss(model, group, elements=k, generator=torch.Generator().manual_seed(k))
        loss(x, logits=logits)
        assert sum(model.calls) <= k * 6
    model.calls.clear()
    ti.InvarianceLoss(model, group, elements=[3])(x, logits=logits)
    assert model.calls == [6]


def test_chunks_run_at_most_chunk_size_elements_per_forward():
    group = ti.get_group("dihedral")
    model = Rows(mlp(36))
    x = _batch()
    logits = model(x)
    model.calls.clear()
    loss = ti.InvarianceLoss(model, group, chunk_size=3)(x, logits=logits)
    assert model.calls == [18, 18, 6]  # 7 non-identity elements in chunks of 3
    model.calls.clear()
    loss.backward()
    assert sorted(model.calls) == [6, 18, 18]  # backward recomputes each chunk once (in reverse order)


def _saved(model, loss_fn):
    return saved_bytes(loss_fn, list(model.parameters()))


def test_saved_bytes_counts_each_storage_once_and_skips_parameters():
    lin = torch.nn.Linear(10, 4)
    x = torch.randn(3, 10)
    # linear saves its input (3x10 floats) and the weight (a parameter, not counted)
    assert _saved(lin, lambda: lin(x).sum()) == 3 * 10 * 4
    # two uses of the same input are one storage
    assert _saved(lin, lambda: (lin(x) + lin(x[:2]).sum()).sum()) == 3 * 10 * 4


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_autograd_memory_of_ir_is_that_of_the_stacked_orbit(order):
    group = ti.get_group(ORDERS[order][0], **ORDERS[order][1])
    model = ti.MLP(in_shape=(1, 12, 12), hidden=32)
    x, y = _batch(16, 12), torch.randint(9, (16,))
    reg = ti.InvarianceLoss(model, group)

    def bound():
        orbit = group.orbit(x).reshape(order * 16, 1, 12, 12)
        return torch.nn.functional.cross_entropy(model(orbit), y.repeat(order))

    def ir():
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y) + 0.1 * reg(x, logits=logits)

    assert _saved(model, ir) <= 1.02 * _saved(model, bound)


def test_chunked_autograd_memory_is_flat_in_the_group_order():
    model = ti.MLP(in_shape=(1, 12, 12), hidden=32)
    x = _batch(16, 12)
    sizes, unchunked = [], []
    for name, params in ORDERS.values():
        group = ti.get_group(name, **params)
        chunked = ti.InvarianceLoss(model, group, chunk_size=1)
        full = ti.InvarianceLoss(model, group)
        sizes.append(_saved(model, lambda reg=chunked: reg(x, logits=model(x))))
        unchunked.append(_saved(model, lambda reg=full: reg(x, logits=model(x))))
    assert max(sizes) == min(sizes)  # checkpointing keeps only x and f(x), whatever the order
    assert unchunked[2] > 3 * unchunked[0] and unchunked[2] > 3 * sizes[2]  # and the tester can fail


@pytest.mark.parametrize("divergence", ["l2", "kl", "normalized_l2"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_broadcast_fast_path_equals_the_public_divergence(divergence, reduction):
    """The built-in divergences run on (n, B, ...) views; the public per-sample functions are the reference."""
    group = ti.get_group("dihedral")
    model = mlp(36, dtype=torch.float64)
    x = _batch(5, dtype=torch.float64)
    fast = ti.InvarianceLoss(model, group, divergence, reduction=reduction, elements=[0, 2, 5, 5])
    slow = ti.InvarianceLoss(
        model, group, ti.losses.DIVERGENCES[divergence], reduction=reduction, elements=[0, 2, 5, 5]
    )
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-12, atol=1e-14)
    gf = torch.autograd.grad(fast(x).sum(), list(model.parameters()))
    gs = torch.autograd.grad(slow(x).sum(), list(model.parameters()))
    for a, b in zip(gf, gs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_all_identity_draw_costs_no_forward_and_is_zero():
    group = ti.get_group("rotation", order=4)
    model = Rows(mlp(36))
    x = _batch()
    logits = model(x)
    model.calls.clear()
    out = ti.InvarianceLoss(model, group, elements=[0, 0])(x, logits=logits)
    assert model.calls == [] and out.item() == 0.0
    none = ti.InvarianceLoss(model, group, elements=[0, 0], reduction="none")(x, logits=logits)
    assert torch.equal(none, torch.zeros(2, 6))


@pytest.mark.slow
def test_speed_benchmark_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--quick", "--tiny", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert {"meta", "results", "targets", "notes"} <= set(report)
    assert report["meta"]["profile"] == "tiny" and report["meta"]["device"] == "cpu"
    training = report["results"]["training"]
    for key in ("ir/bound", "naive/ir", "ir_k1/floor_k1", "saved ir/bound"):
        assert math.isfinite(training["ratios"][key])
    cases = {r["case"] for r in training["rows"]}
    assert {"plain", "bound", "ir", "naive", "ir_k1", "floor_k1"} <= cases
    assert all(r["median_ms"] > 0 and r["saved_mb"] > 0 for r in training["rows"])
    scaling = report["results"]["scaling"]["rows"]
    assert {"ir order=2", "ir order=4", "ir order=8", "ir order=8 elements=4"} <= {r["case"] for r in scaling}
    assert {r["case"] for r in report["results"]["metrics"]["rows"]} >= {"LI", "DI", "SI", "SI floor"}
    assert {r["case"] for r in report["results"]["weight_tying"]["rows"]} >= {"MLP", "GroupInvariantMLP"}
    assert {t["status"] for t in report["targets"]} <= {"PASS", "FAIL"} and len(report["targets"]) >= 6
    assert (tmp_path / "speed.md").read_text().startswith("# torchinvariance speed benchmark")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
