"""Independent runs on a pool of worker processes, one torch thread each: how the benchmark uses every CPU core.

On a CPU the runs of a command (the DA references and nu-grid points of ``tune``, the runs of Table 1 and their
evaluations) do not depend on one another, so ``--workers N`` trains and evaluates N of them at once, each in its
own process with ONE torch thread (:func:`benchmarks.paper.train.train`, resumable from its checkpoint). On the
team's 2-core machine one thread per process is the fast setting (two threads in one process lose to any other job
on the second core, issue 10), and two processes of one thread each scale: measured side by side, 2 workers did
the work of 1 in about half the time (``benchmarks/paper/nu.json``, ``workers_speedup``). On a GPU the vmapped
ensemble (:mod:`benchmarks.paper.ensemble`) is the fast path and ``--workers auto`` is 1.

Workers are started with the ``spawn`` method (no fork of a process that holds torch thread pools); each builds
the datasets once (:func:`benchmarks.paper.pipeline.build_datasets`) and writes what it trains or measures into
the run folders itself, atomically, exactly as the in-process path does. :class:`InProcess` is the same interface
without processes, for ``--workers 1`` and for tests.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.paper.config import RunConfig


@dataclass
class Context:
    """What a task runs with: the command's configuration, the datasets, a run store, the progress-bar line."""

    cfg: RunConfig
    datasets: dict
    store: Any  # benchmarks.paper.runs.RunStore
    position: int | None = None
    drift: dict = field(default_factory=dict)  # the drifted test sets of each group, built on first use


_CONTEXT: list[Context] = []  # the worker process's context, set by _init


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """``--workers auto``: the number of usable CPUs on a CPU, 1 on a GPU (the ensemble path)."""
    return 1 if device.type != "cpu" else max(1, usable_cpus())


def _init(cfg: RunConfig) -> None:
    """Worker start-up: one torch thread, the datasets built once, a run store of this worker's own."""
    from benchmarks.paper import pipeline

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    identity = multiprocessing.current_process()._identity
    position = identity[0] - 1 if identity else None
    _CONTEXT[:] = [Context(cfg, pipeline.build_datasets(cfg), pipeline.make_store(cfg, worker=True), position)]


def _call(name: str, *args: Any) -> Any:
    """Run task ``name`` in this worker process (see :data:`TASKS`)."""
    return TASKS[name](_CONTEXT[0], *args)


def _train(ctx: Context, spec, folder) -> dict:
    return ctx.store.train_one(spec, folder, ctx.datasets, ctx.cfg.profile, position=ctx.position)


def _measure(ctx: Context, spec) -> dict:
    from benchmarks.paper.tune import measure_point

    return measure_point(ctx.store, ctx.cfg, ctx.datasets[(spec.dataset, spec.group)], spec)


def _evaluate(ctx: Context, spec) -> dict:
    from benchmarks.paper.pipeline import drift_sets, evaluate_run

    if spec.group not in ctx.drift:
        ctx.drift[spec.group] = drift_sets(ctx.cfg, ctx.datasets, spec.group)
    return evaluate_run(spec, ctx.datasets[(spec.dataset, spec.group)], ctx.cfg, ctx.store, ctx.drift[spec.group])


def _train_and_measure(ctx: Context, spec, folder, train_first: bool) -> tuple[dict | None, dict]:
    history = _train(ctx, spec, folder) if train_first else None
    return history, _measure(ctx, spec)


TASKS: dict[str, Callable[..., Any]] = {
    "train": _train,
    "measure": _measure,
    "evaluate": _evaluate,
    "train_and_measure": _train_and_measure,
}


class InProcess:
    """The pool's interface, run at once in this process (``--workers 1``): the futures come back finished."""

    workers = 1

    def __init__(self, cfg: RunConfig, datasets: dict, store) -> None:
        self.ctx = Context(cfg, datasets, store)

    def submit(self, name: str, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(TASKS[name](self.ctx, *args))
        except Exception as exc:  # handed to the caller through the future, as a pool does (Ctrl-C is not)
            future.set_exception(exc)
        return future

    def close(self) -> None:
        pass


class Workers:
    """``n`` worker processes; :meth:`submit` queues a task (a name of :data:`TASKS` and its arguments)."""

    def __init__(self, cfg: RunConfig, n: int) -> None:
        if n < 2:
            raise ValueError(f"a worker pool needs at least 2 workers (use InProcess for 1), got {n}")
        self.workers = n
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(n, mp_context=context, initializer=_init, initargs=(cfg,))

    def submit(self, name: str, *args: Any) -> Future:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
        return self._pool.submit(_call, name, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_pool(cfg: RunConfig, datasets: dict, store) -> InProcess | Workers:
    """The pool of ``cfg.workers`` processes, or :class:`InProcess` for one."""
    return Workers(cfg, cfg.workers) if cfg.workers > 1 else InProcess(cfg, datasets, store)
