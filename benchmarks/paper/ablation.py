"""The SI-recipe ablation (``python -m benchmarks.paper ablate-si``): how much each choice of the recipe moves SI.

The paper's SI (§4.1) is a recipe: absolute integrated gradients towards "the target class prediction", values
below 0.9 of each map's maximum zeroed, a 3x3 Gaussian blur (sigma 1), the map of ``g x`` realigned by ``g^-1``,
cosine similarity. DA's measured SI stays away from the paper's (issue 10, item 8), so this sub-command changes
ONE choice at a time on the trained DA and IR (L2) models of the first seed, on the same test samples as Table 1:

- ``threshold``: keep the top 10 % of each map (its 0.9 quantile) instead of the values >= 0.9 x its maximum;
- ``smoothing``: no Gaussian blur;
- ``baseline``: integrated gradients from the normalized black image (every pixel ``-mean/std``, the value a black
  pixel has after normalization) instead of zeros;
- ``target``: attribute the label instead of the prediction on ``x``.

SI is reported in the paper's convention (mean over the non-identity elements). The table goes to
``si_ablation.md`` and the numbers, with the per-element values, to ``si_ablation.json``.
"""

from __future__ import annotations

import datetime
import statistics

import torch

import torchinvariance as ti
from benchmarks._common import log, machine_info
from benchmarks.paper.config import RunConfig
from benchmarks.paper.labels import GROUP_LABELS
from benchmarks.paper.report import CONVENTION, PAPER_TABLE1, paper_mean
from benchmarks.paper.runs import RunStore, load_trained
from benchmarks.paper.store import write_json, write_text
from benchmarks.paper.train import RunSpec

MODELS = ("DA", "IR-l2")
BATCH = 128


def recipes(black: float) -> list[tuple[str, str, dict, bool]]:
    """``(name, description, SaliencyConfig options, attribute the label)``; the first row is the paper's recipe."""
    return [
        ("paper", "the paper's recipe: 0.9 x max threshold, blur, zero baseline, predicted class", {}, False),
        ("threshold: top 10%", "values below each map's 0.9 quantile zeroed", {"threshold_mode": "quantile"}, False),
        ("smoothing: off", "no Gaussian blur (kernel size 1)", {"kernel_size": 1}, False),
        ("baseline: black image", f"IG baseline {black:.4f} (a black pixel, normalized)", {"baseline": black}, False),
        ("target: label", "attribute the label instead of the prediction", {}, True),
    ]


def trained_run(store: RunStore, cfg: RunConfig, group: str, model: str) -> RunSpec:
    """The first seed's trained run of ``model``, checked against the current settings like any reuse."""
    seed = cfg.seed + cfg.profile.seeds[0]
    folder = store.run_dir(RunSpec("mnist", group, model, seed))
    rec = store.record(folder)
    hint = f"train it first: python -m benchmarks.paper run --profile {cfg.profile.name}"
    if rec is None:
        raise SystemExit(f"error: {folder} holds no trained model; {hint}")
    spec = RunSpec("mnist", group, model, seed, rec["settings"].get("nu"))
    status = store.status(folder, spec, cfg.profile)
    if status != "ok":
        raise SystemExit(f"error: {status}\n{hint} (or pass the --results-dir it was trained in)")
    return spec


def si_values(model: torch.nn.Module, group: ti.Group, x: torch.Tensor, y: torch.Tensor | None, config) -> torch.Tensor:
    """``(order, N)`` saliency similarities of the samples ``x`` (targets ``y``, or the predictions if None)."""
    parts = []
    for i in range(0, len(x), BATCH):
        target = None if y is None else y[i : i + BATCH]
        parts.append(
            ti.saliency_invariance(model, group, x[i : i + BATCH], target=target, config=config, reduction="none")
        )
    return torch.cat(parts, dim=1).double().cpu()


def ablate(cfg: RunConfig, datasets: dict, store: RunStore) -> int:
    """Run the ablation for every group of ``cfg`` and write ``si_ablation.md`` and ``si_ablation.json``."""
    n = cfg.ablation_samples or cfg.profile.eval_si
    results: dict = {}
    rows: dict = {}
    for g in cfg.groups:
        data = datasets[("mnist", g)]
        group = data.group
        identity = list(group.elements()).index(group.identity)
        test = data.test.subset(n)
        x, y = test.x.to(cfg.device), test.y.to(cfg.device)
        black = (0.0 - data.mean) / data.std
        for model_kind in MODELS:
            spec = trained_run(store, cfg, g, model_kind)
            model = load_trained(store.run_dir(spec), spec, group, cfg.device)
            for name, text, options, use_label in recipes(black):
                values = si_values(model, group, x, y if use_label else None, ti.SaliencyConfig(**options))
                per_sample = torch.cat([values[:identity], values[identity + 1 :]]).mean(0)
                per_element = values.mean(1).tolist()
                entry = {
                    "si": paper_mean(per_element, identity),
                    "std_over_samples": statistics.pstdev(per_sample.tolist()) if len(per_sample) > 1 else 0.0,
                    "si_with_identity": statistics.fmean(per_element),
                    "per_element": per_element,
                    "description": text,
                    "options": options,
                    "target": "label" if use_label else "prediction",
                }
                results.setdefault(g, {}).setdefault(model_kind, {})[name] = entry
                rows.setdefault(name, {})[(g, model_kind)] = entry["si"]
                log(f"SI ablation {g}/{model_kind}/{name}: SI={entry['si']:.3f} ({len(x)} samples)")
    label = f"**{cfg.profile.name} profile: {cfg.profile.demo}**\n\n" if cfg.profile.demo else ""
    table = label + markdown(rows, cfg.groups, n)
    write_text(cfg.results_dir / "si_ablation.md", table)
    write_json(
        cfg.results_dir / "si_ablation.json",
        {
            "profile": cfg.profile.to_dict(),
            "machine": machine_info(cfg.device),
            "command": cfg.command_line,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "convention": CONVENTION,
            "samples": n,
            "results": results,
        },
    )
    print("\n## SI-recipe ablation\n")
    print(table)
    return 0


def markdown(rows: dict, groups: tuple[str, ...], n: int) -> str:
    """The ablation table: one row per recipe, one column per (group, model), the paper's numbers last."""
    cols = [(g, m) for g in groups for m in MODELS]
    head = " | ".join(f"{GROUP_LABELS[g]} {'IR' if m == 'IR-l2' else m}" for g, m in cols)
    lines = [
        f"SI on the first {n} test samples, {CONVENTION}; one choice changed at a time from the paper's recipe.",
        "",
        f"| SI recipe | {head} |",
        "|---|" + "---|" * len(cols),
    ]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{cells[c]:.3f}" if c in cells else "–" for c in cols) + " |")
    paper = [PAPER_TABLE1[g]["IR" if m == "IR-l2" else m]["si"] for g, m in cols]
    lines.append("| paper (Table 1) | " + " | ".join(f"{mean:.2f} ± {std:.2f}" for mean, std in paper) + " |")
    return "\n".join(lines) + "\n"
