r"""Beyond the named group (``python -m benchmarks.paper robustness``): the worst element, the smallest flip and
the discovered symmetry of the trained DA, IR and WT models.

Table 1 asks "how invariant is the model to the group it was trained for?". This sub-command asks three more
questions of the first seed's trained models of every group, on the test split the pipeline evaluates (the first
``--samples`` test samples, each carrying its fixed group element):

- **worst case** (:func:`torchinvariance.worst_case`): the clean accuracy and the worst-of-k accuracy over every
  element of the group (a sample counts only if every transformed copy of it is classified correctly);
- **smallest flip** (:func:`torchinvariance.smallest_flip`): for these cyclic groups, the smallest number of steps,
  either way round, that changes the top-1 prediction, as the share of samples flipping at each step and never;
- **discovered symmetry** (:func:`torchinvariance.discover_symmetries`, LieGG, on the first ``--discover-samples``
  test images): the six singular values of the Lie derivatives along the 2-D affine generators (the symmetry
  variance, smallest first), the distance of the most invariant generator to the rotation and translation
  generators, and the root mean square of the Lie derivative along the rotation and the x-translation generators
  themselves. LieGG is infinitesimal: a model can be exactly invariant to the quarter turns of
  :math:`\mathbb{R}^2_4` or the 12-pixel cyclic shifts of :math:`\mathbb{T}^2_3` and still change under a small
  rotation or a one-pixel shift.

An untrained MLP (the DA/IR architecture, initialized with the first seed) is measured beside them as the
reference of what the data and the architecture give before training.

A run folder is used when its recorded training settings equal those of the profile; the code and torch versions
it was trained with may differ from today's (the measurement reads a fixed checkpoint) and are recorded beside its
numbers. Missing DA, IR (L2) or WT folders stop the command, naming them; the other IR models and WT (escnn) are
measured when their folders are there. The outputs: ``robustness.json``, ``robustness.md`` (DA, IR and WT side by
side per group, with Table 1's DI, LI and SI of the same runs when their ``metrics.json`` is there),
``robustness_spectrum.png`` and ``robustness_flips.png``, each written atomically.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import torchinvariance as ti
from benchmarks._common import log, machine_info
from benchmarks.paper import report
from benchmarks.paper.config import RunConfig
from benchmarks.paper.figures import MODEL_COLORS, _figure, _save
from benchmarks.paper.labels import DETACHED, GROUP_LABELS, MODEL_LABELS
from benchmarks.paper.runs import METRICS_FILE, RunStore, load_trained, train_settings
from benchmarks.paper.store import read_json, write_json, write_text
from benchmarks.paper.train import RunSpec, make_model

MODELS = ("DA", "IR-l2", "IR-kl", "IR-normalized_l2", DETACHED, "WT", "WT-escnn")  # the columns, in order
REQUIRED = ("DA", "IR-l2", "WT")
UNTRAINED = "untrained"  # the reference column: the DA/IR network at its initialization
SHORT_LABELS = {**MODEL_LABELS, DETACHED: "IR (norm. L2, det.)", UNTRAINED: "MLP (untrained)"}
COLORS = {**MODEL_COLORS, "WT-escnn": "tab:cyan", UNTRAINED: "tab:gray"}
UNCHECKED = ("code", "torch")  # training settings recorded, not required to equal today's
BATCH = 500
FILES = ("robustness.json", "robustness.md", "robustness_spectrum.png", "robustness_flips.png")


def trained_runs(store: RunStore, cfg: RunConfig, group: str) -> dict[str, RunSpec]:
    """The first seed's trained runs of ``group``, by model kind, checked against the profile's settings.

    Stops naming the folders when a required run is missing or was trained under other settings.
    """
    seed = cfg.seed + cfg.profile.seeds[0]
    hint = f"run the benchmark first: python -m benchmarks.paper run --profile {cfg.profile.name}"
    found, missing, bad = {}, [], []
    for kind in MODELS:
        folder = store.run_dir(RunSpec("mnist", group, kind, seed))
        rec = store.record(folder)
        if rec is None:
            if kind in REQUIRED:
                missing.append(str(folder))
            continue
        settings = rec.get("settings") or {}
        spec = RunSpec("mnist", group, kind, seed, settings.get("nu"))
        wanted = {k: v for k, v in train_settings(spec, cfg.profile).items() if k not in UNCHECKED}
        diffs = {k: (settings.get(k), v) for k, v in report_settings(wanted).items() if settings.get(k) != v}
        if diffs:
            bad.append(f"{folder}: " + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items()))
            continue
        found[kind] = spec
    if missing:
        raise SystemExit(
            f"error: no trained model in {', '.join(missing)}; {hint} (or pass the --results-dir it was trained in)"
        )
    if bad:
        lines = "\n  ".join(bad)
        raise SystemExit(
            f"error: run folder(s) trained under other settings than the {cfg.profile.name} profile's:\n  {lines}\n"
            f"{hint}, or pass the --profile they were trained with"
        )
    return found


def report_settings(settings: dict) -> dict:
    """``settings`` as ``train.json`` stores them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def flip_shares(magnitude: Tensor, max_steps: int) -> dict[str, float]:
    """The share of samples whose smallest flip is ``k`` steps (``"1"``, ``"2"``, ...) and ``"never"``."""
    n = magnitude.numel()
    shares = {str(k): (magnitude == k).double().sum().item() / n for k in range(1, max_steps + 1)}
    shares["never"] = torch.isinf(magnitude).double().sum().item() / n
    return shares


def step_labels(group: ti.Group, max_steps: int) -> dict[str, str]:
    """What ``k`` steps either way round are, in the group's element names (``"rot90/rot270"``)."""
    out = {}
    for k in range(1, max_steps + 1):
        names = dict.fromkeys(group.element_name(e % group.order) for e in (k, -k))
        out[str(k)] = " or ".join(names)
    out["never"] = "never"
    return out


def lie_rms(lie: Tensor, generator: Tensor) -> float:
    """The root mean square over samples and outputs of the Lie derivative along one unit-norm generator."""
    rows = lie.reshape(-1, 6)
    return (rows @ generator.to(rows).reshape(6)).square().mean().sqrt().item()


def measure(model: nn.Module, group: ti.Group, x: Tensor, y: Tensor, x_discover: Tensor) -> dict:
    """Worst case, smallest flips and the symmetry spectrum of one model (see the module docstring)."""
    clean, robust, per_element, flips = [], [], [], []
    for i in range(0, len(x), BATCH):
        xb, yb = x[i : i + BATCH], y[i : i + BATCH]
        wc = ti.worst_case(model, group, xb, yb)
        clean.append(wc.clean_correct.cpu())
        robust.append(wc.robust.cpu())
        per_element.append(wc.correct.cpu())
        flips.append(ti.smallest_flip(model, group, xb).magnitude)
    elements = list(wc.elements)
    correct = torch.cat(per_element, dim=1)
    magnitude = torch.cat(flips)
    max_steps = group.order // 2
    spectrum = ti.discover_symmetries(model, x_discover)
    refs = ti.symmetry.REFERENCE_GENERATORS
    s = spectrum.singular_values
    nearest, _ = spectrum.nearest()[0]
    return {
        "accuracy": torch.cat(clean).double().mean().item(),
        "worst_case_accuracy": torch.cat(robust).double().mean().item(),
        "element_accuracy": {
            group.element_name(e): a for e, a in zip(elements, correct.double().mean(1).tolist(), strict=True)
        },
        "smallest_flip": {
            "unit": "steps",
            "max_steps": max_steps,
            "share": flip_shares(magnitude, max_steps),
            "labels": step_labels(group, max_steps),
        },
        "symmetry": {
            "samples": len(x_discover),
            "singular_values": s.tolist(),
            "relative": (s / s[-1]).tolist(),
            "generators": spectrum.generators.tolist(),
            "distances": {k: v.tolist() for k, v in spectrum.distances.items()},
            "most_invariant": {
                "nearest": nearest,
                **{k: spectrum.distances[k][0].item() for k in ("rotation", "translation", "translation_u", "scaling")},
            },
            "lie_rms": {k: lie_rms(spectrum.lie_derivatives, refs[k]) for k in ("rotation", "translation_u")},
        },
    }


def table1_numbers(folder: Path) -> dict | None:
    """DI, LI, SI and the accuracy of the run's own evaluation (``metrics.json``, the whole test split), if any."""
    path = folder / METRICS_FILE
    return report.run_numbers(read_json(path)) if path.exists() else None


def robustness(cfg: RunConfig, datasets: dict, store: RunStore) -> int:
    """Measure every group's first-seed models and write the outputs listed in the module docstring."""
    started = time.perf_counter()
    sizes = [len(datasets[("mnist", g)].test) for g in cfg.groups]
    n, n_discover = min(cfg.robustness_samples, *sizes), min(cfg.discover_samples, *sizes)
    specs = {g: trained_runs(store, cfg, g) for g in cfg.groups}  # every folder is checked before anything runs
    seed = cfg.seed + cfg.profile.seeds[0]
    results: dict = {}
    for g in cfg.groups:
        data = datasets[("mnist", g)]
        group = data.group
        test = data.test.subset(n)
        x, y = test.x.to(cfg.device), test.y.to(cfg.device)
        x_discover = data.test.x[:n_discover].to(cfg.device)
        torch.manual_seed(seed)
        models = {UNTRAINED: make_model("DA", group).to(cfg.device).eval()}
        for kind, spec in specs[g].items():
            models[kind] = load_trained(store.run_dir(spec), spec, group, cfg.device)
        for kind, model in models.items():
            t0 = time.perf_counter()
            entry = measure(model, group, x, y, x_discover)
            if kind != UNTRAINED:
                spec = specs[g][kind]
                folder = store.run_dir(spec)
                rec = store.record(folder) or {}
                entry = {
                    "run": spec.key,
                    "nu": spec.nu,
                    "trained_with": {
                        **{k: (rec.get("settings") or {}).get(k) for k in UNCHECKED},
                        "git_commit": (rec.get("recorded") or {}).get("git_commit"),
                    },
                    "table1": table1_numbers(folder),
                    **entry,
                }
            entry["seconds"] = time.perf_counter() - t0
            results.setdefault(g, {})[kind] = entry
            sym = entry["symmetry"]["most_invariant"]
            log(
                f"robustness {g}/{kind}: acc={100 * entry['accuracy']:.2f}% "
                f"worst-of-{group.order}={100 * entry['worst_case_accuracy']:.2f}% "
                f"never flips={100 * entry['smallest_flip']['share']['never']:.1f}% most invariant generator: "
                f"{sym['nearest']} (rotation {sym['rotation']:.3f}, translation {sym['translation']:.3f}) "
                f"in {entry['seconds']:.1f}s"
            )
    stale = sorted(
        {e["trained_with"]["code"] for r in results.values() for e in r.values() if "trained_with" in e}
        - {None, train_settings(RunSpec("mnist", "rotation", "DA", seed), cfg.profile)["code"]}
    )
    label = f"**{cfg.profile.name} profile: {cfg.profile.demo}**\n\n" if cfg.profile.demo else ""
    table = label + markdown(results, cfg.groups, n, n_discover, stale, cfg.profile.eval_si)
    out = cfg.results_dir
    write_text(out / "robustness.md", table)
    figure_spectrum(results, out / "robustness_spectrum.png")
    figure_flips(results, out / "robustness_flips.png")
    seconds = time.perf_counter() - started
    write_json(
        out / "robustness.json",
        {
            "profile": cfg.profile.to_dict(),
            "machine": machine_info(cfg.device),
            "command": cfg.command_line,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds,
            "seed": seed,
            "samples": {"worst_case_and_flip": n, "discover": n_discover},
            "results": results,
        },
    )
    print("\n## Beyond the named group: worst case, smallest flip, discovered symmetry\n")
    print(table)
    log(f"robustness of {sum(map(len, results.values()))} models in {seconds:.0f}s: {', '.join(FILES)} in {out}/")
    return 0


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def markdown(results: dict, groups: tuple[str, ...], n: int, n_discover: int, stale: list[str], si_samples: int) -> str:
    """One table per group: a row per question, a column per model (DA, the IR models, WT, the untrained MLP)."""
    lines = [
        f"Seed 0's models on the first {n} test samples (each with its fixed group element; LieGG on the first "
        f"{n_discover}). Worst-of-k: correct under every element of the group. Smallest flip: the fewest steps, "
        "either way round, that change the top-1 prediction. LieGG: singular values of the Lie derivatives along the "
        "six 2-D affine generators, smallest first, relative to the largest; d(rot), d(trans): distance of the most "
        "invariant generator to the rotation generator and to the plane of the translations (0: equal, "
        "sqrt 2 = 1.41: orthogonal); L_rot / s_6, L_shift-x / s_6: the rms Lie derivative along the rotation "
        "generator itself and along the shift in x, relative to the largest singular value. DI, LI and SI: Table 1's "
        f"(DI and LI on the whole test split, SI on its first {si_samples}; {report.CONVENTION}).",
        "",
    ]
    if stale:
        lines += [f"The checkpoints were trained with another code version than this one's ({', '.join(stale)}).", ""]
    for g in groups:
        lines += [f"**{GROUP_LABELS[g]}**", "", *group_table(results[g]), ""]
    return "\n".join(lines)


def group_table(res: dict) -> list[str]:
    """The markdown rows of one group's table: a row per question, a column per model of ``res``."""
    cols = [m for m in (*MODELS, UNTRAINED) if m in res]
    first = res[cols[0]]
    lines = ["| | " + " | ".join(SHORT_LABELS[m] for m in cols) + " |", "|---|" + "---:|" * len(cols)]

    def row(name: str, cell) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(res[m]) for m in cols) + " |")

    def t1(key: str):
        return lambda e: format(e["table1"][key], ".3g") if e.get("table1") else "–"

    def sym(e: dict) -> dict:
        return e["symmetry"]

    row("DI (named group)", t1("di"))
    row("LI (named group)", t1("li"))
    row("SI (named group)", t1("si"))
    row("accuracy (%)", lambda e: _pct(e["accuracy"]))
    row(f"worst-of-{len(first['element_accuracy'])} accuracy (%)", lambda e: _pct(e["worst_case_accuracy"]))
    row("lost to the worst element (points)", lambda e: f"{100 * (e['accuracy'] - e['worst_case_accuracy']):.2f}")
    for step, text in first["smallest_flip"]["labels"].items():
        steps = "step" if step == "1" else "steps"
        name = "never flips (%)" if step == "never" else f"flips at {step} {steps} ({text}) (%)"
        row(name, lambda e, step=step: _pct(e["smallest_flip"]["share"][step]))
    row("LieGG s_1..s_6 / s_6", lambda e: " ".join(f"{v:.2f}" for v in sym(e)["relative"][:-1]) + " 1")
    row("most invariant generator: nearest", lambda e: sym(e)["most_invariant"]["nearest"])
    row("d(rot)", lambda e: f"{sym(e)['most_invariant']['rotation']:.3f}")
    row("d(trans)", lambda e: f"{sym(e)['most_invariant']['translation']:.3f}")
    row("L_rot / s_6", lambda e: f"{sym(e)['lie_rms']['rotation'] / sym(e)['singular_values'][-1]:.3f}")
    row("L_shift-x / s_6", lambda e: f"{sym(e)['lie_rms']['translation_u'] / sym(e)['singular_values'][-1]:.3f}")
    return lines


def _columns(results: dict, g: str) -> list[str]:
    return [m for m in (*MODELS, UNTRAINED) if m in results[g]]


def figure_spectrum(results: dict, path: Path) -> None:
    """The LieGG symmetry spectrum of each model, relative to its largest singular value, one panel per group."""
    groups = list(results)
    fig, axes = _figure(1, len(groups), (6.0 * len(groups), 3.8))
    for ax, g in zip(axes[0], groups):
        cols = _columns(results, g)
        width = 0.8 / len(cols)
        for j, m in enumerate(cols):
            sym = results[g][m]["symmetry"]
            best = sym["most_invariant"]
            ax.bar(
                [i + (j - (len(cols) - 1) / 2) * width for i in range(6)],
                sym["relative"],
                width,
                color=COLORS[m],
                label=f"{SHORT_LABELS[m]}: s_1 ~ {best['nearest']} (d={best[best['nearest']]:.2f})",
            )
        ax.set_yscale("log")
        ax.set_xticks(range(6), [f"s_{i + 1}" for i in range(6)])
        ax.set_ylabel("singular value / largest")
        ax.set_title(f"{GROUP_LABELS[g]}: LieGG spectrum (small = invariant)")
        ax.legend(fontsize=6, loc="upper left", frameon=False)
    fig.suptitle("Discovered symmetries: the six affine generators, most invariant first")
    _save(fig, path)


def figure_flips(results: dict, path: Path) -> None:
    """The share of test samples whose smallest flip is 1, 2, ... steps or never, per model and group."""
    groups = list(results)
    fig, axes = _figure(1, len(groups), (5.5 * len(groups), 3.6))
    for ax, g in zip(axes[0], groups):
        cols = _columns(results, g)
        labels = next(iter(results[g].values()))["smallest_flip"]["labels"]
        width = 0.8 / len(cols)
        for j, m in enumerate(cols):
            share = results[g][m]["smallest_flip"]["share"]
            ax.bar(
                [i + (j - (len(cols) - 1) / 2) * width for i in range(len(labels))],
                [100 * share[k] for k in labels],
                width,
                color=COLORS[m],
                label=SHORT_LABELS[m],
            )
        ticks = [v if k == "never" else f"{k} step{'' if k == '1' else 's'}\n{v}" for k, v in labels.items()]
        ax.set_xticks(range(len(labels)), ticks)
        ax.set_ylabel("test samples (%)")
        ax.set_ylim(0, 100 * (1 + 0.05))
        ax.set_title(f"{GROUP_LABELS[g]}: smallest flip")
        ax.legend(fontsize=6, frameon=False)
    fig.suptitle("Smallest transformation that changes the prediction")
    _save(fig, path)
