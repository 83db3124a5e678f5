"""The four sections of the speed benchmark; each times its cases and stores its rows in ``Bench.results``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchinvariance as ti
from benchmarks.speed.report import print_rows
from benchmarks.speed.timing import FaultCount, Ratios, measure
from benchmarks.speed.workloads import NU, Bench, step_rows, train_step, training_losses


def have_captum() -> bool:
    """Whether the optional captum extra is importable (only the captum comparison rows need it)."""
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


def section_training(b: Bench) -> None:
    print("\n== 1. training step", flush=True)
    group = ti.get_group("rotation", order=4)
    model = b.mlp()
    losses = training_losses(model, group, b.x, b.y)
    steps = {name: train_step(model, fn) for name, fn in losses.items()}
    stats = measure(steps, b.cfg, b.threads)
    params = list(model.parameters())
    rows = step_rows(b, stats, losses, steps, params)
    r = Ratios()
    r.paired("ir/bound", stats["ir"], stats["bound"])
    r.paired("naive/ir", stats["naive"], stats["ir"])
    r.paired("ir/plain", stats["ir"], stats["plain"])
    r.paired("ir_k1/floor_k1", stats["ir_k1"], stats["floor_k1"])
    r.paired("ir_k1_sampled/floor_k1", stats["ir_k1_sampled"], stats["floor_k1"])
    r.exact("saved ir/bound", rows[2]["saved_mb"] / rows[1]["saved_mb"])
    out: dict[str, Any] = {"group": "rotation(order=4)", "batch": b.cfg.batch, "rows": rows}
    if b.cfg.compile:
        out["compiled"] = _compiled(b, group)
        if out["compiled"]:
            r.values["compiled ir/bound"] = out["compiled"]["ir/bound"]
            r.ranges["compiled ir/bound"] = out["compiled"]["ir/bound range"]
    out.update(ratios=r.values, ratio_ranges=r.ranges)
    b.results["training"] = out
    print_rows(rows, r)


def _compiled(b: Bench, group: ti.Group) -> dict[str, Any]:
    """``bound`` and ``ir`` with the loss computation under ``torch.compile`` (backward via AOTAutograd)."""
    model = b.mlp()
    base = training_losses(model, group, b.x, b.y)
    try:
        compiled = {name: torch.compile(base[name]) for name in ("bound", "ir")}
        steps = {name: train_step(model, fn) for name, fn in compiled.items()}
        for step in steps.values():  # compile outside the timed region
            step()
    except Exception as exc:  # a missing compiler toolchain must not hide the other sections
        b.note(f"torch.compile unavailable, compiled variants skipped ({type(exc).__name__}: {exc})")
        return {}
    stats = measure(steps, b.cfg, b.threads)
    r = Ratios()
    r.paired("ir/bound", stats["ir"], stats["bound"])
    return {
        "bound_ms": stats["bound"].median * 1e3,
        "ir_ms": stats["ir"].median * 1e3,
        "iqr_rel": {k: v.spread for k, v in stats.items()},
        "ir/bound": r.values["ir/bound"],
        "ir/bound range": r.ranges["ir/bound"],
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
    steps = {name: train_step(model, fn) for name, fn in losses.items()}
    stats = measure(steps, b.cfg, b.threads)
    rows = step_rows(b, stats, losses, steps, params)
    by = {r["case"]: r for r in rows}
    r = Ratios()
    for n in groups:
        r.paired(f"order={n} ir/bound", stats[f"ir order={n}"], stats[f"bound order={n}"])
        r.exact(f"order={n} saved ir/bound", by[f"ir order={n}"]["saved_mb"] / by[f"bound order={n}"]["saved_mb"])
    # rows through the model per step: B (logits) + B per element used; expected time ratios follow them
    r.paired("time order=8 / order=2 (rows ratio 8/2=4.0)", stats["ir order=8"], stats["ir order=2"])
    e1 = stats["ir order=8 elements=1"]
    r.paired("time elements=2 / elements=1 (rows ratio 3/2=1.5)", stats["ir order=8 elements=2"], e1)
    r.paired("time elements=4 / elements=1 (rows ratio 5/2=2.5)", stats["ir order=8 elements=4"], e1)
    chunked = [by[f"ir order={n} chunk_size=1"]["saved_mb"] for n in groups]
    r.exact("chunk_size=1 saved memory max/min over orders 2, 4, 8", max(chunked) / min(chunked))
    b.results["scaling"] = {"batch": b.cfg.batch, "rows": rows, "ratios": r.values, "ratio_ranges": r.ranges}
    print_rows(rows, r)


# saliency_map's documented default chunking: all integration steps in one pass, up to about 2**23 input values
IG_VALUES_PER_PASS = 2**23


def section_metrics(b: Bench) -> None:
    """LI and DI throughput; SI against its floor; the floor's batch shapes; SI against captum.

    Each group of cases has its own interleaved rounds. SI shares its rounds with its floor only: its one
    integrated-gradients pass allocates buffers of about 33 MB (the scaled inputs and their gradients), and
    whether the allocator reuses them or returns them to the kernel between calls, so that the next call
    pays for some 16k-20k minor page faults (tens of ms on a 2-core VM, where SI takes 60-90 ms), depends
    on what ran in between. Next to the captum cases, or next to a floor of one pass per step, SI took
    those faults on most calls; next to a floor with SI's own batch shapes, both mostly reuse their
    buffers. The ``faults_per_call`` column shows it for every case.
    """
    print("\n== 3. metrics throughput", flush=True)
    group = ti.get_group("rotation", order=4)
    model = b.mlp().eval()
    x = b.x
    xs = b.x[: b.cfg.si_batch]
    n, steps = group.order, b.cfg.n_steps
    with torch.no_grad():
        target = model(xs).argmax(1)
    t_orbit = target.repeat(n)
    orbit_rows = n * xs.shape[0]
    # SI's integration steps per pass, as saliency_map documents its default (internal_batch_size=None)
    per_pass = max(1, min(steps, IG_VALUES_PER_PASS // (orbit_rows * xs[0].numel())))
    alphas = torch.tensor([(i + 0.5) / steps for i in range(steps)], device=b.device)
    bcast = (1,) * xs.dim()

    def si() -> Tensor:
        return ti.saliency_invariance(model, group, xs, target=target, n_steps=steps)

    def si_floor() -> None:  # SI's forward/backward rows in SI's batch shapes: all steps of the orbit per pass
        orbit = group.orbit(xs).reshape(orbit_rows, *xs.shape[1:])
        for start in range(0, steps, per_pass):
            k = min(per_pass, steps - start)
            inp = (alphas[start : start + k].view(k, *bcast) * orbit).reshape(k * orbit_rows, *xs.shape[1:])
            inp.requires_grad_()
            out = model(inp).gather(1, t_orbit.repeat(k)[:, None]).sum()
            torch.autograd.grad(out, inp)

    def si_floor_per_step() -> None:  # the same rows, one pass per step (the floor of earlier runs)
        orbit = group.orbit(xs).reshape(orbit_rows, *xs.shape[1:])
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

    # SI's default backend is plain torch: it needs no optional extra
    groups: dict[str, dict[str, Callable[[], object]]] = {
        "LI, DI": {
            "LI": lambda: ti.logit_invariance(model, group, x),
            "DI": lambda: ti.distribution_invariance(model, group, x),
        },
        "SI vs floor": {"SI": si, "SI floor": si_floor},
        # the floor of earlier runs against this one, without SI: next to the per-step passes SI's large
        # buffers were returned to the kernel and faulted in again on most calls
        "floor shapes": {"floor, one pass": si_floor, "floor, 1 pass per step": si_floor_per_step},
    }
    if have_captum():
        groups["SI vs captum"] = {
            "SI, captum rounds": si,
            "SI captum per element": si_per_element,
            "SI backend=captum": lambda: ti.saliency_invariance(
                model, group, xs, target=target, n_steps=steps, backend="captum"
            ),
        }
    else:
        b.note(
            "captum is not installed (pip install torchinvariance[saliency]): the captum comparison rows "
            "(SI captum per element, SI backend=captum) are skipped"
        )
    stats = {}
    rows = []
    for rounds, cases in groups.items():
        counted = {name: FaultCount(fn) for name, fn in cases.items()}
        timed = measure(counted, b.cfg, b.threads)
        stats.update(timed)
        for name, st in timed.items():
            batch = x.shape[0] if name in ("LI", "DI") else xs.shape[0]  # SI and the floors: xs
            rows.append(
                {
                    "case": name,
                    "rounds": rounds,
                    "batch": batch,
                    "median_ms": st.median * 1e3,
                    "iqr_rel": st.spread,
                    "blocks": st.blocks,
                    "samples_per_s": batch / st.median,
                    "faults_per_call": None if counted[name].per_call is None else round(counted[name].per_call),
                }
            )
    r = Ratios()
    r.paired("SI/floor", stats["SI"], stats["SI floor"])
    r.paired("floor one pass/1 pass per step", stats["floor, one pass"], stats["floor, 1 pass per step"])
    if "SI captum per element" in stats:
        r.paired("SI captum per element/SI", stats["SI captum per element"], stats["SI, captum rounds"])
        r.paired("SI backend=captum/SI", stats["SI backend=captum"], stats["SI, captum rounds"])
    b.results["metrics"] = {
        "group": "rotation(order=4)",
        "n_steps": steps,
        "si_steps_per_pass": per_pass,
        "rows": rows,
        "ratios": r.values,
        "ratio_ranges": r.ranges,
    }
    print_rows(rows, r)


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
    r = Ratios()
    for name in stats:
        if name != "MLP":
            r.paired(f"{name}/MLP", stats[name], stats["MLP"])
    b.results["weight_tying"] = {
        "group": "rotation(order=4)",
        "batch": c.batch,
        "rows": rows,
        "ratios": r.values,
        "ratio_ranges": r.ranges,
    }
    print_rows(rows, r)


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "training": section_training,
    "scaling": section_scaling,
    "metrics": section_metrics,
    "weight_tying": section_weight_tying,
}
