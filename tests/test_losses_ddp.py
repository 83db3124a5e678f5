"""DistributedDataParallel with 2 CPU processes on gloo: gradients equal the single-process ones."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp

import torchinvariance as ti


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x, y, out, pattern):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(mlp(36, dtype=torch.float64))
        reg = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
        shard = slice(rank * 4, (rank + 1) * 4)
        if pattern == "forward_with_logits":  # one forward of the DDP model per step
            inv, logits = reg.forward_with_logits(x[shard])
        else:  # the README pattern: the task forward, then the regularizer reuses its logits
            logits = model(x[shard])
            inv = reg(x[shard], logits=logits)
        loss = torch.nn.functional.cross_entropy(logits, y[shard]) + 0.3 * inv
        loss.backward()
        out[rank] = [p.grad.clone() for p in model.module.parameters()]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("pattern", ["forward_with_logits", "logits_reuse"])
def test_ddp_two_processes_gloo(pattern):
    torch.manual_seed(0)
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(5, (8,))
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), x, y, out, pattern), nprocs=2, join=True)
    model = mlp(36, dtype=torch.float64)
    reg = ti.InvarianceLoss(model, ti.get_group("rotation", order=4))
    # the DDP gradient is the mean of the per-shard gradients
    model.zero_grad()
    for shard in (slice(0, 4), slice(4, 8)):
        inv, logits = reg.forward_with_logits(x[shard])
        (0.5 * (torch.nn.functional.cross_entropy(logits, y[shard]) + 0.3 * inv)).backward()
    for g0, g1, ref in zip(out[0], out[1], [p.grad for p in model.parameters()]):
        torch.testing.assert_close(g0, g1)
        torch.testing.assert_close(g0, ref)
