"""How the speed benchmark measures: run profiles, interleaved timing, paired ratios and autograd memory."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and timing budget of one run."""

    batch: int = 512
    size: int = 36
    hidden: int = 128
    depth: int = 5
    classes: int = 9
    si_batch: int = 32
    n_steps: int = 50
    min_run_time: float = 8.0  # seconds of timed blocks per case, split over the rounds
    rounds: int = 8
    warmup: int = 3
    compile: bool = True
    autorange: bool = True  # False: one timed run per round (smoke test only)


PROFILES = {
    "default": Config(),
    "quick": Config(min_run_time=2.0, rounds=4, warmup=2),
    # hidden profile for the smoke test: every code path, tiny sizes, no compilation
    "tiny": Config(
        batch=16,
        size=8,
        hidden=16,
        si_batch=4,
        n_steps=4,
        min_run_time=0.02,
        rounds=2,
        warmup=1,
        compile=False,
        autorange=False,
    ),
}


@dataclasses.dataclass
class Stats:
    """Median and quartiles of the per-run times (seconds) of one case, and the median of each round."""

    median: float
    q1: float
    q3: float
    blocks: int
    round_medians: list[float]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")


def _stats(rounds: list[list[float]]) -> Stats:
    times = [t for r in rounds for t in r]
    if len(times) == 1:
        q1 = med = q3 = times[0]
    else:
        q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Stats(med, q1, q3, len(times), [statistics.median(r) for r in rounds])


def measure(cases: dict[str, Callable[[], object]], cfg: Config, threads: int) -> dict[str, Stats]:
    """Time ``cases`` side by side: warm up all of them, then interleave ``cfg.rounds`` rounds.

    Each round runs ``Timer.blocked_autorange`` on every case in turn, so drifts of the machine's load hit
    all cases alike; the reported time is the median over the blocks of all rounds.
    """
    for fn in cases.values():
        for _ in range(cfg.warmup):
            fn()
    times: dict[str, list[list[float]]] = {name: [] for name in cases}
    for _ in range(cfg.rounds):
        for name, fn in cases.items():
            timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
            if cfg.autorange:
                m = timer.blocked_autorange(min_run_time=cfg.min_run_time / cfg.rounds)
            else:
                m = timer.timeit(number=1)
            times[name].append(list(m.times))
    return {name: _stats(t) for name, t in times.items()}


def ratio_range(a: Stats, b: Stats) -> tuple[float, float, float]:
    """Min, median and max over the rounds of the ratio of the two cases' medians in that round.

    The spread of the per-round ratios is what a reader needs to judge a ratio against its limit: the median
    alone hides a case whose time jumps between rounds.
    """
    per_round = [x / y for x, y in zip(a.round_medians, b.round_medians, strict=True)]
    return min(per_round), statistics.median(per_round), max(per_round)


def ratio(a: Stats, b: Stats) -> float:
    """Median over the rounds of the ratio of the two cases' medians in that round (paired by round)."""
    return ratio_range(a, b)[1]


class Ratios:
    """The named ratios of one section: the medians (``values``) and the per-round min and max (``ranges``).

    Timed ratios come from :func:`ratio_range`; exact ones (memory counts) have no range.
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.ranges: dict[str, list[float]] = {}

    def paired(self, name: str, a: Stats, b: Stats) -> None:
        """Store the ratio of the times of ``a`` and ``b``, paired by round, with its range."""
        lo, med, hi = ratio_range(a, b)
        self.values[name] = med
        self.ranges[name] = [lo, hi]

    def exact(self, name: str, value: float) -> None:
        """Store a ratio that is not timed (no spread)."""
        self.values[name] = value


def saved_bytes(step_loss: Callable[[], Tensor], params: list[nn.Parameter]) -> int:
    """Bytes autograd keeps for the backward pass of ``step_loss()`` (one count per storage, no parameters)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_loss()
    loss.backward()
    return sum(seen.values())


def cuda_peak_bytes(step: Callable[[], object], device: torch.device) -> int | None:
    """Allocator peak of one ``step()`` above the memory in use before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Unix: no count
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class FaultCount:
    """A case wrapped to count the minor page faults of the process during its calls (``None`` off Unix).

    A minor fault is the kernel mapping a page the process touches for the first time, e.g. every 4 KiB of a
    large buffer that the allocator obtained fresh from the kernel (``mmap``) instead of reusing freed memory.
    """

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn, self.faults, self.calls = fn, 0, 0

    def __call__(self) -> object:
        before = _minor_faults()
        out = self.fn()
        if before is not None:
            self.faults += _minor_faults() - before
        self.calls += 1
        return out

    @property
    def per_call(self) -> float | None:
        """Mean minor faults per call so far (warm-up and calibration calls included)."""
        return self.faults / self.calls if self.calls and _minor_faults() is not None else None


def mb(n: int | None) -> float | None:
    """Bytes as MiB (rounded to 3 decimals); ``None`` stays ``None``."""
    return None if n is None else round(n / 2**20, 3)
