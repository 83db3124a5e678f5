"""evaluate_invariance under torch.distributed (issue 11 item 4): syncs by default; sync_dist=False needs no peer."""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp

import torchinvariance as ti

GROUP = ti.get_group("rotation", order=4)
METRICS = ("accuracy", "consistency", "di", "li")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(5, (3,), generator=g))]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a short timeout: a collective that waits for a peer that never comes fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    try:
        model = mlp(36, dtype=torch.float64)
        if rank == 0:  # one rank alone, no collective: must neither hang nor fail
            out["alone"] = ti.evaluate_invariance(model, GROUP, _data(rank), sync_dist=False, progress=False).to_dict()
        dist.barrier()
        out[f"synced{rank}"] = ti.evaluate_invariance(
            model, GROUP, _data(rank), metrics=METRICS, progress=False
        ).to_dict()
    finally:
        dist.destroy_process_group()


def test_sync_by_default_and_sync_dist_false_on_one_rank():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    model = mlp(36, dtype=torch.float64)
    alone = ti.evaluate_invariance(model, GROUP, _data(0), progress=False).to_dict()
    both = ti.evaluate_invariance(model, GROUP, _data(0) + _data(1), metrics=METRICS, progress=False).to_dict()
    assert out["alone"] == alone
    assert out["synced0"] == out["synced1"]
    assert out["synced0"]["n_samples"] == 6
    for name in METRICS:
        torch.testing.assert_close(
            torch.tensor(out["synced0"][name]["per_element"]), torch.tensor(both[name]["per_element"])
        )
        assert out["synced0"][name]["mean"] == pytest.approx(both[name]["mean"], rel=1e-12)
    assert out["synced0"]["consistency"]["orbit"] == pytest.approx(both["consistency"]["orbit"], rel=1e-12)
