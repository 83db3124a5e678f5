"""Accumulating metric classes: equal to the functional form on concatenated data; DDP reduction."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp

import torchinvariance as ti

F64 = torch.float64
SI_OPTIONS = {"n_steps": 4}


def _data(sizes=(3, 5, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 6, 6, generator=g, dtype=F64) for b in sizes]


def _metrics(model, group):
    return [
        (ti.DistributionInvariance(model, group), ti.distribution_invariance, {}),
        (ti.LogitInvariance(model, group), ti.logit_invariance, {}),
        (ti.SaliencyInvariance(model, group, **SI_OPTIONS), ti.saliency_invariance, SI_OPTIONS),
    ]


def test_accumulated_equals_functional_on_concatenated_data():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, classes=4, dtype=F64, seed=1)
    batches = _data()
    full = torch.cat(batches)
    for metric, fn, options in _metrics(model, group):
        for i, x in enumerate(batches):
            metric.update(x, y=torch.zeros(len(x), dtype=torch.long) if i else None)  # y is ignored
        with torch.no_grad():
            terms = fn(model, group, full, reduction="none", **options).numpy()
        assert metric.n_samples == 10
        assert metric.compute().dtype == F64
        np.testing.assert_allclose(metric.compute().item(), terms.mean(), rtol=1e-12)
        np.testing.assert_allclose(metric.compute_per_element().numpy(), terms.mean(1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(metric.compute_std().item(), terms.mean(0).std(), rtol=1e-9)
        # compute() does not change the states
        np.testing.assert_allclose(metric.compute().item(), terms.mean(), rtol=1e-12)


def test_float32_inputs_accumulate_in_float64():
    group = ti.get_group("flip")
    model = mlp(36, classes=4, seed=2)
    batches = [x.float() for x in _data(sizes=(4, 4, 4, 4))]
    metric = ti.LogitInvariance(model, group)
    for x in batches:
        metric.update(x)
    with torch.no_grad():
        ref = np.concatenate(
            [ti.logit_invariance(model, group, x, reduction="none").double().numpy() for x in batches], 1
        )
    assert metric.compute().dtype == F64
    np.testing.assert_allclose(metric.compute().item(), ref.mean(), rtol=1e-12)


def test_reset():
    group = ti.get_group("translation", order=3)
    model = mlp(36, dtype=F64)
    a, b = _data(sizes=(4, 3))
    for metric, fn, options in _metrics(model, group):
        metric.update(a)
        metric.reset()
        assert metric.n_samples == 0
        with pytest.raises(RuntimeError, match="before any update"):
            metric.compute()
        metric.update(b)
        with torch.no_grad():
            ref = fn(model, group, b, **options)
        np.testing.assert_allclose(metric.compute().item(), ref.item(), rtol=1e-12)


def test_update_validates_like_the_functional_form():
    metric = ti.LogitInvariance(mlp(36, dtype=F64), ti.get_group("rotation", order=4))
    with pytest.raises(ValueError, match="square"):
        metric.update(torch.randn(2, 1, 6, 4, dtype=F64))
    with pytest.raises(TypeError, match="Group"):
        ti.DistributionInvariance(mlp(36), "rotation")
    with pytest.raises(ValueError, match="threshold"):
        ti.SaliencyInvariance(mlp(36), ti.get_group("flip"), threshold=2.0)
    assert "n_samples=0" in repr(metric)


# ----------------------------------------------------------------------------- DDP
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, batches, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = mlp(36, classes=4, dtype=F64, seed=1)
        group = ti.get_group("rotation", order=4)
        res = {}
        for metric, _, _ in _metrics(model, group):
            for x in batches[rank::world]:
                metric.update(x)
            res[type(metric).__name__] = (
                metric.n_samples,
                metric.compute().item(),
                metric.compute_per_element().tolist(),
                metric.compute_std().item(),
                metric.compute().item(),  # twice: no double counting
            )
            local = type(metric)(
                model, group, sync_dist=False, **({} if "Saliency" not in type(metric).__name__ else SI_OPTIONS)
            )
            for x in batches[rank::world]:
                local.update(x)
            res[type(metric).__name__ + "-local"] = local.compute().item()
        out[rank] = res
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo_reduce_states():
    batches = _data(sizes=(3, 5, 2, 4), seed=3)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), batches, out), nprocs=2, join=True)
    model = mlp(36, classes=4, dtype=F64, seed=1)
    group = ti.get_group("rotation", order=4)
    full = torch.cat(batches)
    rank0 = torch.cat(batches[0::2])
    for metric, fn, options in _metrics(model, group):
        name = type(metric).__name__
        with torch.no_grad():
            terms = fn(model, group, full, reduction="none", **options).numpy()
            local = fn(model, group, rank0, **options).item()
        for rank in (0, 1):
            n, mean, per_element, std, mean_again = out[rank][name]
            assert n == (5 if rank == 0 else 9)  # n_samples is this process's count
            np.testing.assert_allclose(mean, terms.mean(), rtol=1e-12)
            np.testing.assert_allclose(mean_again, mean, rtol=0)
            np.testing.assert_allclose(per_element, terms.mean(1), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(std, terms.mean(0).std(), rtol=1e-9)
        np.testing.assert_allclose(out[0][name + "-local"], local, rtol=1e-12)
