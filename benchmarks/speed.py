"""Speed benchmark of the invariance regularizer, the metrics and the weight-tying baselines (issue 7).

Run ``python -m benchmarks.speed [--device auto|cpu|cuda] [--quick] [--out DIR] [--threads N]``. Every
comparison is measured side by side in the same run: after a warm-up, interleaved rounds of
``torch.utils.benchmark.Timer.blocked_autorange`` on every case of a section; a time is the median over all
blocks, a ratio is the median over the rounds of the ratio of the two cases' medians in that round (so a load
change on the shared machine hits both sides of a ratio alike). Absolute times are not comparable between runs.

Sections:

1. Training step of the paper MLP (batch 512, 36x36 images, rotations of order 4): ``plain`` (augmented step,
   batch B), ``bound`` (stacked orbit, one forward/backward over order x B rows: the floor of the full-orbit
   regularizer), ``ir`` (``InvarianceLoss`` with ``logits=`` reuse), ``naive`` (a Python loop with one
   forward per group element and f(x) recomputed); ``elements=1`` against its floor (one forward/backward
   over 2 x B rows); the same under ``torch.compile``.
2. Scaling: ``ir`` step time and memory for group orders 2, 4, 8, for ``elements=k`` (k = 1, 2, 4) and with
   ``chunk_size=1`` (activation checkpointing per chunk).
3. Metrics throughput (samples/s): LI, DI, and SI (50-step Integrated Gradients, the default plain-torch
   backend) against its floor (50 plain forward+backward passes over the orbit) and against one captum call per
   group element; also SI with ``backend="captum"`` (one captum call for the whole orbit), for information.
4. Weight-tying cost: forward+backward time and parameter count of ``GroupInvariantMLP`` and
   ``EscnnInvariantMLP`` against ``MLP``.

Memory: on CPU there is no allocator peak counter, so the benchmark reports the bytes autograd holds for the
backward pass (the activations), measured with ``torch.autograd.graph.saved_tensors_hooks``: every tensor
saved during the forward is counted once per storage, parameters excluded. With ``chunk_size`` the checkpointed
chunks save nothing but their inputs; their activations are recomputed one chunk at a time during backward
(a transient of one chunk, not counted, and independent of the group order). On CUDA the report adds the
allocator's peak (``torch.cuda.max_memory_allocated`` above the memory in use before the step).

Only the public API is used (``import torchinvariance as ti``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.benchmark import Timer

import torchinvariance as ti

NU = 0.1  # regularization weight; it does not change the cost


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


# --------------------------------------------------------------------------- measurement
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


# --------------------------------------------------------------------------- workloads
class Bench:
    """Shared state of one run: device, config, data, models, results."""

    def __init__(self, cfg: Config, device: torch.device, threads: int) -> None:
        self.cfg, self.device, self.threads = cfg, device, threads
        gen = torch.Generator().manual_seed(0)
        shape = (1, cfg.size, cfg.size)
        self.in_shape = shape
        self.x = torch.randn(cfg.batch, *shape, generator=gen).to(device)
        self.y = torch.randint(cfg.classes, (cfg.batch,), generator=gen).to(device)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    def mlp(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        c = self.cfg
        return ti.MLP(in_shape=self.in_shape, num_classes=c.classes, hidden=c.hidden, depth=c.depth).to(self.device)

    def note(self, text: str) -> None:
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)


def _train_step(model: nn.Module, loss_fn: Callable[[], Tensor]) -> Callable[[], None]:
    """A training step: zero grads, loss, backward, SGD update (the same for every variant)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def _losses(b: Bench, model: nn.Module, group: ti.Group, x: Tensor, y: Tensor) -> dict[str, Callable[[], Tensor]]:
    """The section-1 losses for one model/group/batch (each returns the scalar to backpropagate)."""
    n = group.order
    gen = torch.Generator().manual_seed(1)
    reg = ti.InvarianceLoss(model, group)
    y_orbit = y.repeat(n)
    nonid = [g for g in group.elements() if g != group.identity]

    def plain() -> Tensor:
        xa = group.act_per_sample(group.sample(x.shape[0], generator=gen), x)
        return F.cross_entropy(model(xa), y)

    def bound() -> Tensor:
        orbit = group.orbit(x).reshape(n * x.shape[0], *x.shape[1:])
        return F.cross_entropy(model(orbit), y_orbit)

    def ir() -> Tensor:
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * reg(x, logits=logits)

    def naive() -> Tensor:
        logits = model(x)
        fx = model(x)  # the regularizer recomputes f(x)
        inv = 0.0
        for g in group.elements():
            inv = inv + 0.5 * (fx - model(group.act(g, x))).pow(2).sum(1).mean()
        return F.cross_entropy(logits, y) + NU * inv / n

    one = ti.InvarianceLoss(model, group, elements=[nonid[0]])
    sampled = ti.InvarianceLoss(model, group, elements=1, generator=torch.Generator().manual_seed(2))
    y2 = y.repeat(2)

    def ir_k1() -> Tensor:  # one fixed non-identity element: exactly 2B rows through the model
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * one(x, logits=logits)

    def ir_k1_sampled() -> Tensor:  # elements=1 as users call it (a drawn identity costs nothing)
        logits = model(x)
        return F.cross_entropy(logits, y) + NU * sampled(x, logits=logits)

    def floor_k1() -> Tensor:  # "bound at 2B": x and one transformed copy, one forward/backward
        rows = group.orbit(x, [group.identity, nonid[0]]).reshape(2 * x.shape[0], *x.shape[1:])
        return F.cross_entropy(model(rows), y2)

    return {
        "plain": plain,
        "bound": bound,
        "ir": ir,
        "naive": naive,
        "ir_k1": ir_k1,
        "ir_k1_sampled": ir_k1_sampled,
        "floor_k1": floor_k1,
    }


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 3)


def _ratio(a: Stats, b: Stats) -> float:
    """Median over the rounds of the ratio of the two cases' medians in that round (paired by round)."""
    return statistics.median(x / y for x, y in zip(a.round_medians, b.round_medians))


def _step_rows(b: Bench, stats: dict, losses: dict, steps: dict, params: list) -> list[dict]:
    """One table row per training-step case: time, noise, saved-tensor memory and the CUDA peak."""
    return [
        {
            "case": name,
            "median_ms": st.median * 1e3,
            "iqr_rel": st.spread,
            "blocks": st.blocks,
            "saved_mb": _mb(saved_bytes(losses[name], params)),
            "cuda_peak_mb": _mb(cuda_peak_bytes(steps[name], b.device)),
        }
        for name, st in stats.items()
    ]


def section_training(b: Bench) -> None:
    print("\n== 1. training step", flush=True)
    group = ti.get_group("rotation", order=4)
    model = b.mlp()
    losses = _losses(b, model, group, b.x, b.y)
    steps = {name: _train_step(model, fn) for name, fn in losses.items()}
    stats = measure(steps, b.cfg, b.threads)
    params = list(model.parameters())
    rows = _step_rows(b, stats, losses, steps, params)
    ratios = {
        "ir/bound": _ratio(stats["ir"], stats["bound"]),
        "naive/ir": _ratio(stats["naive"], stats["ir"]),
        "ir/plain": _ratio(stats["ir"], stats["plain"]),
        "ir_k1/floor_k1": _ratio(stats["ir_k1"], stats["floor_k1"]),
        "ir_k1_sampled/floor_k1": _ratio(stats["ir_k1_sampled"], stats["floor_k1"]),
        "saved ir/bound": rows[2]["saved_mb"] / rows[1]["saved_mb"],
    }
    out: dict[str, Any] = {"group": "rotation(order=4)", "batch": b.cfg.batch, "rows": rows, "ratios": ratios}
    if b.cfg.compile:
        out["compiled"] = _compiled(b, group)
        if out["compiled"]:
            ratios["compiled ir/bound"] = out["compiled"]["ir/bound"]
    b.results["training"] = out
    _print_rows(rows, ratios)


def _compiled(b: Bench, group: ti.Group) -> dict[str, Any]:
    """``bound`` and ``ir`` with the loss computation under ``torch.compile`` (backward via AOTAutograd)."""
    model = b.mlp()
    base = _losses(b, model, group, b.x, b.y)
    try:
        compiled = {name: torch.compile(base[name]) for name in ("bound", "ir")}
        steps = {name: _train_step(model, fn) for name, fn in compiled.items()}
        for step in steps.values():  # compile outside the timed region
            step()
    except Exception as exc:  # a missing compiler toolchain must not hide the other sections
        b.note(f"torch.compile unavailable, compiled variants skipped ({type(exc).__name__}: {exc})")
        return {}
    stats = measure(steps, b.cfg, b.threads)
    return {
        "bound_ms": stats["bound"].median * 1e3,
        "ir_ms": stats["ir"].median * 1e3,
        "iqr_rel": {k: v.spread for k, v in stats.items()},
        "ir/bound": _ratio(stats["ir"], stats["bound"]),
    }


def section_scaling(b: Bench) -> None:
    print("\n== 2. scaling with the group order, elements=k and chunk_size", flush=True)
    groups = {
        2: ti.get_group("rotation", order=2),
        4: ti.get_group("rotation", order=4),
        8: ti.get_group("dihedral"),
    }
    model = b.mlp()
    params = list(model.parameters())
    x, y = b.x, b.y

    def ir_loss(reg: nn.Module) -> Callable[[], Tensor]:
        def loss() -> Tensor:
            logits = model(x)
            return F.cross_entropy(logits, y) + NU * reg(x, logits=logits)

        return loss

    def bound_loss(group: ti.Group) -> Callable[[], Tensor]:
        n = group.order
        yo = y.repeat(n)

        def loss() -> Tensor:
            return F.cross_entropy(model(group.orbit(x).reshape(n * x.shape[0], *x.shape[1:])), yo)

        return loss

    losses: dict[str, Callable[[], Tensor]] = {}
    for n, group in groups.items():
        losses[f"bound order={n}"] = bound_loss(group)
        losses[f"ir order={n}"] = ir_loss(ti.InvarianceLoss(model, group))
        losses[f"ir order={n} chunk_size=1"] = ir_loss(ti.InvarianceLoss(model, group, chunk_size=1))
    d4 = groups[8]
    for k in (1, 2, 4):
        reg = ti.InvarianceLoss(model, d4, elements=k, generator=torch.Generator().manual_seed(k))
        losses[f"ir order=8 elements={k}"] = ir_loss(reg)
    steps = {name: _train_step(model, fn) for name, fn in losses.items()}
    stats = measure(steps, b.cfg, b.threads)
    rows = _step_rows(b, stats, losses, steps, params)
    by = {r["case"]: r for r in rows}
    ratios: dict[str, float] = {}
    for n in groups:
        ratios[f"order={n} ir/bound"] = _ratio(stats[f"ir order={n}"], stats[f"bound order={n}"])
        ratios[f"order={n} saved ir/bound"] = by[f"ir order={n}"]["saved_mb"] / by[f"bound order={n}"]["saved_mb"]
    # rows through the model per step: B (logits) + B per element used; expected time ratios follow them
    ratios["time order=8 / order=2 (rows ratio 8/2=4.0)"] = _ratio(stats["ir order=8"], stats["ir order=2"])
    e1 = stats["ir order=8 elements=1"]
    ratios["time elements=2 / elements=1 (rows ratio 3/2=1.5)"] = _ratio(stats["ir order=8 elements=2"], e1)
    ratios["time elements=4 / elements=1 (rows ratio 5/2=2.5)"] = _ratio(stats["ir order=8 elements=4"], e1)
    chunked = [by[f"ir order={n} chunk_size=1"]["saved_mb"] for n in groups]
    ratios["chunk_size=1 saved memory max/min over orders 2, 4, 8"] = max(chunked) / min(chunked)
    b.results["scaling"] = {"batch": b.cfg.batch, "rows": rows, "ratios": ratios}
    _print_rows(rows, ratios)


def section_metrics(b: Bench) -> None:
    print("\n== 3. metrics throughput", flush=True)
    group = ti.get_group("rotation", order=4)
    model = b.mlp().eval()
    x = b.x
    xs = b.x[: b.cfg.si_batch]
    n, steps = group.order, b.cfg.n_steps
    cases: dict[str, Callable[[], object]] = {
        "LI": lambda: ti.logit_invariance(model, group, x),
        "DI": lambda: ti.distribution_invariance(model, group, x),
    }
    try:
        import captum  # noqa: F401  (SI needs the optional captum extra)
    except ImportError:
        b.note("captum is not installed (pip install torchinvariance[saliency]): SI rows skipped")
    else:
        with torch.no_grad():
            target = model(xs).argmax(1)
        alphas = [(i + 0.5) / steps for i in range(steps)]
        t_orbit = target.repeat(n)

        def si_floor() -> None:  # 50 plain forward+backward passes over the batch's whole orbit
            orbit = group.orbit(xs).reshape(n * xs.shape[0], *xs.shape[1:])
            for a in alphas:
                inp = (a * orbit).requires_grad_()
                out = model(inp).gather(1, t_orbit[:, None]).sum()
                torch.autograd.grad(out, inp)

        def si_per_element() -> Tensor:  # the straightforward path: one captum call per group element
            ref = None
            sims = []
            for g in group.elements():
                m = ti.saliency_map(model, group.act(g, xs), target=target, n_steps=steps, backend="captum")
                m = group.act(group.inverse(g), m).flatten(1)
                ref = m if ref is None else ref
                sims.append(F.cosine_similarity(ref, m, dim=1))
            return torch.stack(sims).mean()

        cases["SI"] = lambda: ti.saliency_invariance(model, group, xs, target=target, n_steps=steps)
        cases["SI floor"] = si_floor
        cases["SI captum per element"] = si_per_element
        cases["SI backend=captum"] = lambda: ti.saliency_invariance(
            model, group, xs, target=target, n_steps=steps, backend="captum"
        )
    stats = measure(cases, b.cfg, b.threads)
    rows = []
    for name, st in stats.items():
        batch = x.shape[0] if name in ("LI", "DI") else xs.shape[0]
        rows.append(
            {
                "case": name,
                "batch": batch,
                "median_ms": st.median * 1e3,
                "iqr_rel": st.spread,
                "blocks": st.blocks,
                "samples_per_s": batch / st.median,
            }
        )
    ratios = {}
    if "SI" in stats:
        ratios["SI/floor"] = _ratio(stats["SI"], stats["SI floor"])
        ratios["SI captum per element/SI"] = _ratio(stats["SI captum per element"], stats["SI"])
        ratios["SI backend=captum/floor"] = _ratio(stats["SI backend=captum"], stats["SI floor"])
    b.results["metrics"] = {"group": "rotation(order=4)", "n_steps": steps, "rows": rows, "ratios": ratios}
    _print_rows(rows, ratios)


def section_weight_tying(b: Bench) -> None:
    print("\n== 4. weight-tying cost", flush=True)
    group = ti.get_group("rotation", order=4)
    c = b.cfg
    kw = {"in_shape": b.in_shape, "num_classes": c.classes, "hidden": c.hidden, "depth": c.depth}
    models: dict[str, nn.Module] = {"MLP": b.mlp()}
    torch.manual_seed(0)
    models["GroupInvariantMLP"] = ti.GroupInvariantMLP(group, **kw).to(b.device)
    try:
        torch.manual_seed(0)
        models["EscnnInvariantMLP"] = ti.EscnnInvariantMLP(4, **kw).to(b.device)
    except ImportError as exc:
        b.note(f"EscnnInvariantMLP skipped: {exc}")
    x, y = b.x, b.y

    def fwd_bwd(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        return step

    stats = measure({name: fwd_bwd(m) for name, m in models.items()}, c, b.threads)
    rows = [
        {
            "case": name,
            "params": sum(p.numel() for p in models[name].parameters()),
            "median_ms": st.median * 1e3,
            "iqr_rel": st.spread,
            "blocks": st.blocks,
        }
        for name, st in stats.items()
    ]
    ratios = {f"{name}/MLP": _ratio(stats[name], stats["MLP"]) for name in stats if name != "MLP"}
    b.results["weight_tying"] = {"group": "rotation(order=4)", "batch": c.batch, "rows": rows, "ratios": ratios}
    _print_rows(rows, ratios)


SECTIONS = {
    "training": section_training,
    "scaling": section_scaling,
    "metrics": section_metrics,
    "weight_tying": section_weight_tying,
}


# --------------------------------------------------------------------------- targets and report
def targets(results: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets, checked from the measured ratios (PASS/FAIL, never adjusted)."""
    out = []

    def add(name: str, value: float | None, op: str, limit: float, note: str = "") -> None:
        if value is None:
            return
        ok = {"<=": value <= limit, ">=": value >= limit, ">": value > limit}[op]
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "status": "PASS" if ok else "FAIL", "note": note}
        )

    tr = results.get("training", {}).get("ratios", {})
    cpu_note = "" if device.type == "cpu" else "target is stated for CPU"
    add("ir / bound", tr.get("ir/bound"), "<=", 1.03, cpu_note)
    add("naive / ir", tr.get("naive/ir"), ">=", 1.2, cpu_note)
    add("ir(elements=[g]) / floor at 2B", tr.get("ir_k1/floor_k1"), "<=", 1.05)
    add("saved memory ir / bound", tr.get("saved ir/bound"), "<=", 1.15)
    sc = results.get("scaling", {}).get("ratios", {})
    add(
        "chunk_size=1 saved memory, max/min over orders 2, 4, 8",
        sc.get("chunk_size=1 saved memory max/min over orders 2, 4, 8"),
        "<=",
        1.15,
    )
    me = results.get("metrics", {}).get("ratios", {})
    add("SI / SI floor", me.get("SI/floor"), "<=", 1.25)
    add("SI captum per element / SI", me.get("SI captum per element/SI"), ">", 1.0)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return lines


def _ratio_table(ratios: dict[str, float]) -> list[str]:
    return _table([{"ratio": k, "value": v} for k, v in ratios.items()], ["ratio", "value"])


def _print_rows(rows: list[dict[str, Any]], ratios: dict[str, float]) -> None:
    cols = [c for c in rows[0] if c != "blocks"]
    print("\n".join(_table(rows, cols)))
    if ratios:
        print("\n".join(_ratio_table(ratios)))


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, command, one table per section, the targets."""
    meta = report["meta"]
    lines = [
        "# torchinvariance speed benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['cpu']} ({meta['cpu_count']} logical CPUs visible, {meta['threads']} torch threads), "
        f"device `{meta['device']}`" + (f" ({meta['gpu']})" if meta.get("gpu") else ""),
        f"- torch {meta['torch']}, python {meta['python']}, torchinvariance {meta['torchinvariance']}"
        + (f", commit {meta['git_commit'][:10]}" if meta.get("git_commit") else ""),
        f"- date (UTC): {meta['date']}; profile `{meta['profile']}`: {meta['config']['rounds']} interleaved "
        f"rounds of `Timer.blocked_autorange`, {meta['config']['min_run_time']} s of timed blocks per case; "
        "a time is the median over all blocks, a ratio the median over the rounds of the per-round ratio",
        "- `iqr_rel` is the interquartile range of the blocks relative to the median: the noise of each time; "
        "ratios are not more precise than that.",
        "",
    ]
    titles = {
        "training": "1. Training step (paper MLP, batch {batch}, rotations of order 4)",
        "scaling": "2. Scaling (batch {batch})",
        "metrics": "3. Metrics throughput (rotations of order 4, SI with {n_steps}-step Integrated Gradients)",
        "weight_tying": "4. Weight-tying cost (forward + backward, batch {batch})",
    }
    for key, title in titles.items():
        sec = report["results"].get(key)
        if not sec:
            continue
        lines += [f"## {title.format(**sec)}", ""]
        cols = [c for c in sec["rows"][0] if c != "blocks" and any(r.get(c) is not None for r in sec["rows"])]
        lines += _table(sec["rows"], cols)
        if sec.get("compiled"):
            comp = sec["compiled"]
            lines += [
                "",
                f"Under `torch.compile`: bound {_fmt(comp['bound_ms'])} ms, ir {_fmt(comp['ir_ms'])} ms.",
            ]
        if sec.get("ratios"):
            lines += ["", *_ratio_table(sec["ratios"])]
        lines.append("")
    lines += ["## Targets", ""]
    lines += _table(report["targets"], ["target", "value", "op", "limit", "status", "note"])
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    return None


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available on this machine")
    return torch.device(name)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the sections, write ``speed.md`` and ``speed.json``; return the report."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="short timings for CI (about 2 minutes in total)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test: tiny sizes
    p.add_argument("--out", default="results/speed", help="directory for speed.md and speed.json")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, as torch.utils.benchmark.Timer: on a machine shared with other "
        "jobs, a thread pool wider than the idle cores times the scheduler, not the code)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = p.parse_args(argv)
    profile = "tiny" if args.tiny else "quick" if args.quick else "default"
    cfg = PROFILES[profile]
    if args.no_compile:
        cfg = dataclasses.replace(cfg, compile=False)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; expected a subset of {list(SECTIONS)}")
    device = pick_device(args.device)
    bench = Bench(cfg, device, args.threads)
    print(f"device {device}, {args.threads} threads, profile {profile}", flush=True)
    with _threads(args.threads):
        for name in sections:
            SECTIONS[name](bench)
    meta = {
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torchinvariance": ti.__version__,
        "git_commit": _git_commit(),
        "profile": profile,
        "config": dataclasses.asdict(cfg),
    }
    report = {
        "meta": meta,
        "results": bench.results,
        "targets": targets(bench.results, device),
        "notes": bench.notes,
    }
    out = Path(args.out)
    text = markdown(report)
    _atomic_write(out / "speed.json", json.dumps(report, indent=2) + "\n")
    _atomic_write(out / "speed.md", text)
    print("\n" + "\n".join(_table(report["targets"], ["target", "value", "op", "limit", "status"])))
    print(f"\nwrote {out / 'speed.md'} and {out / 'speed.json'}")
    return report


def main() -> None:
    """Entry point of ``python -m benchmarks.speed``."""
    run()


if __name__ == "__main__":
    main()
