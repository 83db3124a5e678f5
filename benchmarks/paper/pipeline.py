"""The ``run`` sub-command: plan the runs, estimate their time, train and evaluate each, summarize, publish.

Every step takes the frozen :class:`~benchmarks.paper.config.RunConfig`; nothing here reads the command line.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import time

import torch

import torchinvariance as ti
from benchmarks._common import log, machine_info
from benchmarks.paper import data as D
from benchmarks.paper import figures, report
from benchmarks.paper.config import PublishConfig, RunConfig
from benchmarks.paper.labels import DIVERGENCES
from benchmarks.paper.profiles import Profile
from benchmarks.paper.store import (
    check_writable,
    copy_file,
    load_state,
    read_json,
    save_state,
    write_json,
    write_text,
)
from benchmarks.paper.train import RunSpec, evaluate, evaluate_drift, load_model, make_group, train
from benchmarks.paper.tune import load_nu, tune

BETAS = tuple(round(0.1 * i, 1) for i in range(11))
DRIFT_MODELS = ("DA", "WT", "IR-l2")
PUBLISHED = ("table1.md", "claims.md", "figure5_spectral.md", "results.json")


def have_escnn() -> bool:
    """Whether the optional escnn extra is importable."""
    return importlib.util.find_spec("escnn") is not None


def plan(profile: Profile, groups: tuple[str, ...], nu: dict, escnn: bool, base_seed: int = 0) -> list[RunSpec]:
    """All runs of a profile; run seeds are ``base_seed + profile.seeds``."""
    specs = []
    for seed in (base_seed + s for s in profile.seeds):
        for g in groups:
            models = ["WT"] + (["WT-escnn"] if escnn and g == "rotation" else []) + ["DA"]
            specs += [RunSpec("mnist", g, m, seed) for m in models]
            specs += [RunSpec("mnist", g, f"IR-{d}", seed, nu=float(nu[g][d])) for d in DIVERGENCES]
    return specs


def estimate_minutes(profile: Profile, specs: list[RunSpec], device: torch.device, data) -> float:
    """Measure a few training steps and extrapolate (printed up front)."""
    group = data.group
    model = ti.MLP(in_shape=(1, 36, 36), num_classes=D.NUM_CLASSES).to(device)
    reg = ti.InvarianceLoss(model, group)
    opt = torch.optim.Adam(model.parameters())
    x = data.train.x[: profile.batch_size].to(device)
    y = data.train.y[: profile.batch_size].to(device)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + reg(x, logits=logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = sorted(times)[1]
    steps = math.ceil(len(data.train) / profile.batch_size) * profile.epochs
    # SI (50-step integrated gradients over the orbit) dominates the evaluation at large eval_si: time it too
    model.eval()
    xs = data.test.x[:32].to(device)
    t = time.perf_counter()
    ti.saliency_invariance(model, group, xs)
    si_per_sample = (time.perf_counter() - t) / len(xs)
    # IR/WT steps cost about an orbit's worth, DA about a quarter of that; +20% for the rest of the evaluation
    per_run = step * steps * 1.2 + si_per_sample * profile.eval_si
    return per_run * len(specs) / 60.0


def run_one(spec: RunSpec, data, cfg: RunConfig, drifted) -> dict:
    """Train + evaluate one run, or load it if it already finished."""
    profile, device = cfg.profile, cfg.device
    run_dir = cfg.results_dir / "runs" / spec.key
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not cfg.force:
        metrics = read_json(metrics_path)
        if metrics.get("spec", {}).get("nu") == spec.nu:
            log(f"skip {spec.key} (finished: {metrics_path})")
            return metrics
        log(f"redo {spec.key}: its nu changed from {metrics['spec'].get('nu')} to {spec.nu}")
    state, hist = train(spec, data, profile, device, progress=cfg.progress)
    model = load_model(spec, data.group, state, device)
    ev = evaluate(model, data, profile, device, progress=cfg.progress)
    if spec.model in DRIFT_MODELS and drifted is not None:
        ev["drift"] = evaluate_drift(model, data, drifted, device, progress=cfg.progress)
    metrics = {
        "spec": {
            "dataset": spec.dataset,
            "group": spec.group,
            "model": spec.model,
            "seed": spec.seed,
            "nu": spec.nu,
        },
        "profile": profile.name,
        "history": hist,
        "eval": ev,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_state(run_dir / "model.pt", state)
    write_json(metrics_path, metrics)  # written last: its presence marks the run finished
    inv = ev["invariance"]
    log(
        f"done {spec.key}: acc={ev['test_acc']:.2f}% LI={inv['li']['mean']:.3g} DI={inv['di']['mean']:.3g} "
        f"SI={ev['saliency']['si']['mean']:.3f} sigma_max={ev['sigma_max']['mean']:.3g} "
        f"({hist['seconds']:.0f}s training, best epoch {hist['best_epoch']}/{hist['epochs']})"
    )
    return metrics


def build_datasets(cfg: RunConfig) -> dict:
    """Transforming-MNIST for each group (and the FMNIST test images for the drift)."""
    out = {}
    try:
        for g in cfg.groups:
            out[("mnist", g)] = D.build("mnist", make_group(g), cfg.data_root, cfg.profile.sizes)
        images, labels = D.load_raw("fmnist", cfg.data_root)
    except D.DataUnavailableError as exc:
        raise SystemExit(f"error: {exc}") from None
    keep = labels != D.NUM_CLASSES
    images, labels = images[keep], labels[keep]
    _, te, _ = D.split_indices(len(labels), cfg.profile.sizes)
    out["fmnist_test"] = (images[te], labels[te])
    return out


def prepare(cfg: RunConfig) -> dict:
    """What ``run`` and ``tune`` do first: check the results folder, seed, set threads, load the data."""
    # every folder a run writes into, before anything trains: a read-only runs/ fails now, not after the first run
    for folder in (cfg.results_dir, cfg.results_dir / "runs", cfg.results_dir / "tune"):
        check_writable(folder)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    profile = cfg.profile
    log(f"profile {profile.name}: {profile.epochs} epochs x {len(profile.seeds)} seed(s), device {cfg.device}")
    if profile.name == "full" and cfg.device.type == "cpu":
        log("the full profile is the paper's protocol (300 epochs x 4 seeds) and is meant for a GPU")
    return build_datasets(cfg)


def run(cfg: RunConfig, datasets: dict) -> int:
    """The ``run`` sub-command on prepared datasets: (tune first if asked), every run, then the summary."""
    profile = cfg.profile
    if cfg.tune_first:
        tune(cfg, datasets)
    nu, nu_source = load_nu(cfg.nu_config, profile)
    log(f"nu values from {nu_source}: {nu}")
    escnn = have_escnn()
    if not escnn:
        log('escnn is not installed: the WT (escnn) row is skipped (pip install "torchinvariance[escnn]")')
    specs = plan(profile, cfg.groups, nu, escnn, cfg.seed)
    pending = [s for s in specs if cfg.force or not (cfg.results_dir / "runs" / s.key / "metrics.json").exists()]
    est = estimate_minutes(profile, pending, cfg.device, datasets[("mnist", cfg.groups[0])])
    log(f"{len(specs)} runs, {len(pending)} to do; estimated {est:.1f} min on this machine ({cfg.device})")

    fm_images, fm_labels = datasets["fmnist_test"]
    drift_sets = {
        g: {b: D.drifted_test(datasets[("mnist", g)], fm_images, fm_labels, b, n=profile.drift_n) for b in BETAS}
        for g in cfg.groups
    }
    runs = {}
    started = time.perf_counter()
    from tqdm.auto import tqdm

    for spec in tqdm(specs, desc="runs", unit="run", disable=not cfg.progress):
        runs[spec.key] = run_one(spec, datasets[(spec.dataset, spec.group)], cfg, drift_sets[spec.group])
    log(f"all runs finished in {(time.perf_counter() - started) / 60:.1f} min")
    return summarize(cfg, datasets, runs, nu, nu_source)


def summarize(cfg: RunConfig, datasets: dict, runs: dict, nu: dict, nu_source: str) -> int:
    """Table 1, figures, claims and results.json from the finished runs."""
    out, profile, device = cfg.results_dir, cfg.profile, cfg.device
    seed = cfg.seed + profile.seeds[0]
    agg = report.aggregate(runs)
    drift: dict = {}
    for m in runs.values():
        s = m["spec"]
        if "drift" in m["eval"] and s["seed"] == seed:
            drift.setdefault(s["group"], {})[s["model"]] = m["eval"]["drift"]["curve"]
    table = report.table1(agg)
    spectral = report.spectral_table(agg)
    claims = report.check_claims(agg, drift)
    write_text(out / "table1.md", table)
    write_text(out / "figure5_spectral.md", spectral)
    write_text(out / "claims.md", report.claims_markdown(claims))

    for g in cfg.groups:
        data = datasets[("mnist", g)]
        models = {}
        for m in ("DA", "IR-l2"):
            spec = RunSpec("mnist", g, m, seed)
            models[m] = load_model(spec, data.group, load_state(out / "runs" / spec.key / "model.pt"), device)
        x = data.test.x[: profile.saliency_samples].to(device)
        figures.figure3(models, data.group, x, out / f"figure3_saliency_{g}.png")
        n = profile.tsne_samples
        figures.figure2(
            models,
            data.group,
            data.test.x[:n].to(device),
            data.test.y[:n],
            out / f"figure2_tsne_{g}.png",
            seed,
        )
    figures.figure4(drift, out / "figure4_drift.png")
    figures.figure5(agg, out / "figure5_spectral.png")

    results = {
        "profile": profile.to_dict(),
        "machine": machine_info(device),
        "command": cfg.command_line,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nu": nu,
        "nu_source": nu_source,
        "table1": agg,
        "paper_table1": report.PAPER_TABLE1,
        "drift": drift,
        "claims": claims,
        "runs": runs,
    }
    write_json(out / "results.json", results)
    print("\n## Table 1 (Transforming-MNIST; measured | paper)\n")
    print(table)
    print("## Figure 5 numbers: sigma_max of the input Jacobian\n")
    print(spectral)
    print("## The paper's claims, checked\n")
    print(report.claims_markdown(claims))
    log(f"results in {out}/ (results.json, table1.md, claims.md, figure*.png)")
    return 0


def publish(cfg: PublishConfig) -> int:
    """Copy a finished run's tables, figures and results.json (no checkpoints) to ``cfg.to`` for the docs."""
    results_dir, to = cfg.results_dir, cfg.to
    if not (results_dir / "results.json").exists():
        raise SystemExit(f"error: {results_dir} has no results.json; run the benchmark first")
    files = [results_dir / name for name in PUBLISHED] + sorted(results_dir.glob("figure*.png"))
    for f in files:
        copy_file(f, to / f.name)
    log(f"published {len(files)} files from {results_dir} to {to}")
    return 0
