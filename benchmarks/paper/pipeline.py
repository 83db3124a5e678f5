"""The ``run`` sub-command: plan the runs, estimate their time, train them as ensembles, evaluate, summarize, publish.

Every step takes the frozen :class:`~benchmarks.paper.config.RunConfig`; nothing here reads the command line. The
runs that share a (group, model kind) train together as one vmapped ensemble
(:func:`~benchmarks.paper.ensemble.train_ensemble`); the run folders and their reuse rules are
:mod:`benchmarks.paper.runs`.
"""

from __future__ import annotations

import datetime
import importlib.util
import time

import torch

from benchmarks._common import log, machine_info
from benchmarks.paper import data as D
from benchmarks.paper import figures, report
from benchmarks.paper.config import PublishConfig, RunConfig
from benchmarks.paper.estimate import Estimator, Work, describe
from benchmarks.paper.labels import is_ir
from benchmarks.paper.profiles import Profile
from benchmarks.paper.runs import METRICS_FILE, RunStore, eval_settings, load_trained
from benchmarks.paper.store import check_writable, copy_file, write_json, write_text
from benchmarks.paper.train import RunSpec, evaluate, evaluate_drift, make_group
from benchmarks.paper.tune import load_nu, regularizers, sweep_specs, sweep_work, tune, tune_seed

BETAS = tuple(round(0.1 * i, 1) for i in range(11))
DRIFT_MODELS = ("DA", "WT", "IR-l2")
PUBLISHED = (
    "table1.md",
    "claims.md",
    "figure5_spectral.md",
    "results.json",
    "si_ablation.md",
    "robustness.md",
    "robustness.json",
    "robustness_spectrum.png",
    "robustness_flips.png",
)
EVAL_FIELDS = ("eval_test", "eval_si", "eval_jacobian", "drift_n")


def have_escnn() -> bool:
    """Whether the optional escnn extra is importable."""
    return importlib.util.find_spec("escnn") is not None


def plan(
    profile: Profile, groups: tuple[str, ...], nu: dict, escnn: bool, base_seed: int = 0, detached: bool = False
) -> list[RunSpec]:
    """All runs of a profile; run seeds are ``base_seed + profile.seeds``.

    An IR model whose nu is ``None`` (no grid value passed the tune's accuracy guard) is left out; see
    :func:`unusable_nu`.
    """
    specs = []
    for seed in (base_seed + s for s in profile.seeds):
        for g in groups:
            models = ["WT"] + (["WT-escnn"] if escnn and g == "rotation" else []) + ["DA"]
            specs += [RunSpec("mnist", g, m, seed) for m in models]
            for r in regularizers(detached):
                if nu[g][r] is not None:
                    specs.append(RunSpec("mnist", g, f"IR-{r}", seed, nu=float(nu[g][r])))
    return specs


def unusable_nu(nu: dict, groups: tuple[str, ...], detached: bool) -> list[str]:
    """``group/regularizer`` of the IR models without a usable nu."""
    return [f"{g}/{r}" for g in groups for r in regularizers(detached) if nu[g][r] is None]


def _work(specs: list[RunSpec], train: set[RunSpec], evaluate: set[RunSpec]) -> list[Work]:
    """The run's work for the estimate: per (group, model kind), the runs to train and to evaluate."""
    out = []
    for g, kind in dict.fromkeys((s.group, s.model) for s in specs):
        mine = [s for s in specs if (s.group, s.model) == (g, kind)]
        out.append(
            Work(
                g,
                kind,
                members=sum(s in train for s in mine),
                runs_to_evaluate=sum(s in evaluate for s in mine),
                drift=kind in DRIFT_MODELS,
            )
        )
    return out


def dry_run(cfg: RunConfig, datasets: dict) -> int:
    """Print the plan and the measured estimate of ``tune`` and then ``run`` into a fresh results folder, with the
    command's workers and, for comparison, with one."""
    placeholder = {g: dict.fromkeys(regularizers(cfg.detached), 1.0) for g in cfg.groups}
    specs = plan(cfg.profile, cfg.groups, placeholder, have_escnn(), cfg.seed, cfg.detached)
    refs, points = sweep_specs(cfg)
    adaptive = cfg.search == "adaptive"
    tune_work = sweep_work(refs, points, set(refs + points), adaptive=adaptive)
    # run after tune: the DA reference and one grid point per IR model are the first seed's runs, reused
    first = tune_seed(cfg)
    reused = {s for s in specs if s.seed == first and (s.model == "DA" or is_ir(s.model))}
    n_points = sum(w.points_to_measure for w in tune_work)
    search = "bisection, at most" if adaptive else "the whole grid:"
    log(
        f"plan: tune trains {len(refs)} DA reference(s) and ({search}) {n_points} of {len(points)} grid points "
        f"({cfg.profile.epochs} epochs each)"
    )
    log(f"plan: run trains {len(specs) - len(reused)} runs after that tune, evaluates {len(specs)}")
    est = Estimator(datasets, cfg.profile, cfg.device, cfg.max_members, workers=cfg.workers)
    for workers in dict.fromkeys((cfg.workers, 1)):  # the same measured steps, shared by 1 or by N workers
        tune_secs = est.seconds(tune_work, workers)
        run_secs = est.seconds(_work(specs, set(specs) - reused, set(specs)), workers)
        alone = est.seconds(_work(specs, set(specs), set(specs)), workers)
        log(describe(f"tune --profile {cfg.profile.name}", tune_secs, cfg.device, workers))
        log(describe(f"run --profile {cfg.profile.name} after that tune", run_secs, cfg.device, workers))
        total = {k: tune_secs[k] + run_secs[k] for k in tune_secs}
        log(describe("tune + run", total, cfg.device, workers))
        label = f"run --profile {cfg.profile.name} alone (committed nu, no tune points to reuse)"
        log(describe(label, alone, cfg.device, workers))
    if cfg.device.type == "cpu":
        log("no GPU on this machine: the estimate for one is measured by `--dry-run --device cuda` where there is one")
    return 0


def evaluate_run(spec: RunSpec, data, cfg: RunConfig, store: RunStore, drifted) -> dict:
    """The evaluation of one trained run (``metrics.json``), computed unless stored with the same settings."""
    folder = store.run_dir(spec)
    wanted = eval_settings(cfg.profile, *EVAL_FIELDS)
    stored = store.evaluation(folder, METRICS_FILE, wanted)
    if stored is not None:
        log(f"skip {spec.key} (finished: {folder / METRICS_FILE})")
        return stored
    rec = store.record(folder)
    assert rec is not None, folder
    model = load_trained(folder, spec, data.group, cfg.device)
    ev = evaluate(model, data, cfg.profile, cfg.device, progress=cfg.progress)
    if spec.model in DRIFT_MODELS and drifted is not None:
        ev["drift"] = evaluate_drift(model, data, drifted, cfg.device, progress=cfg.progress)
    hist = rec["history"]
    metrics = {
        "spec": {"dataset": spec.dataset, "group": spec.group, "model": spec.model, "seed": spec.seed, "nu": spec.nu},
        "profile": cfg.profile.name,
        "settings": rec["settings"],
        "eval_settings": wanted,
        "history": hist,
        "eval": ev,
        "parameters": rec["parameters"],
    }
    write_json(folder / METRICS_FILE, metrics)  # written last: its presence marks the run evaluated
    n = report.run_numbers(metrics)
    log(
        f"done {spec.key}: acc={n['acc']:.2f}% LI={n['li']:.3g} DI={n['di']:.3g} SI={n['si']:.3f} "
        f"(non-identity means) sigma_max={n['sigma_max']:.3g} (best epoch {hist['best_epoch']}/{hist['epochs']})"
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
    """What every sub-command but ``publish`` does first: check the results folder, seed, set threads, load data."""
    # every folder a run writes into, before anything trains: a read-only runs/ fails now, not after the first run
    for folder in (cfg.results_dir, cfg.results_dir / "runs", cfg.results_dir / "tune"):
        check_writable(folder)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    profile = cfg.profile
    log(
        f"profile {profile.name}: {profile.epochs} epochs x {len(profile.seeds)} seed(s), device {cfg.device}, "
        f"{torch.get_num_threads()} CPU thread(s)" + (f"; {profile.demo}" if profile.demo else "")
    )
    if profile.name == "full" and cfg.device.type == "cpu":
        log("the full profile is the paper's protocol with 4 seeds and is meant for a GPU")
    return build_datasets(cfg)


def make_store(cfg: RunConfig, worker: bool = False) -> RunStore:
    """The run folders of ``cfg.results_dir`` under the command's ``--force`` and ``--compile``.

    A worker process's store never applies ``--force`` itself: the command decides what to retrain, and the
    worker trains and measures what it is sent.
    """
    return RunStore(
        cfg.results_dir,
        cfg.device,
        force=cfg.force and not worker,
        compile=cfg.compile,
        max_members=cfg.max_members,
        progress=cfg.progress,
    )


def drift_sets(cfg: RunConfig, datasets: dict, group: str) -> dict:
    """The drifted test sets ``D(beta)`` of ``group`` (Figure 4), one per level of :data:`BETAS`."""
    fm_images, fm_labels = datasets["fmnist_test"]
    data = datasets[("mnist", group)]
    return {b: D.drifted_test(data, fm_images, fm_labels, b, n=cfg.profile.drift_n) for b in BETAS}


def run(cfg: RunConfig, datasets: dict, store: RunStore | None = None) -> int:
    """The ``run`` sub-command on prepared datasets: (tune first if asked), every run, then the summary."""
    from benchmarks.paper.workers import make_pool

    store = store or make_store(cfg)
    pool = make_pool(cfg, datasets, store)
    try:
        return _run(cfg, datasets, store, pool)
    finally:
        pool.close()


def _run(cfg: RunConfig, datasets: dict, store: RunStore, pool) -> int:
    profile = cfg.profile
    if cfg.tune_first:
        tune(cfg, datasets, store, pool=pool)
    nu, nu_source = load_nu(cfg.nu_config, profile, cfg.nu_from, needed=regularizers(cfg.detached))
    log(f"nu values from {nu_source}: {nu}")
    escnn = have_escnn()
    if not escnn:
        log('escnn is not installed: the WT (escnn) row is skipped (pip install "torchinvariance[escnn]")')
    skipped = unusable_nu(nu, cfg.groups, cfg.detached)
    for name in skipped:
        log(f"skip IR {name}: no nu on the grid kept the accuracy guard in the tune (see {cfg.nu_config})")
    specs = plan(profile, cfg.groups, nu, escnn, cfg.seed, cfg.detached)
    todo, bad = store.plan([(s, store.run_dir(s)) for s in specs], profile, reuse=store.point_dir)
    store.refuse(bad, "run")
    to_eval = {
        s
        for s in specs
        if store.evaluation(store.run_dir(s), METRICS_FILE, eval_settings(profile, *EVAL_FIELDS), quiet=True) is None
    }
    secs = Estimator(datasets, profile, cfg.device, cfg.max_members, workers=pool.workers).seconds(
        _work(specs, {s for s, _ in todo}, to_eval)
    )
    log(f"{len(specs)} runs: {len(todo)} to train, {len(to_eval)} to evaluate")
    log(describe(f"run --profile {profile.name}", secs, cfg.device, pool.workers))

    started = time.perf_counter()
    store.train(todo, datasets, profile, pool=pool)
    futures = {spec.key: pool.submit("evaluate", spec) for spec in specs}
    runs = {key: future.result() for key, future in futures.items()}
    log(f"all runs finished in {(time.perf_counter() - started) / 60:.1f} min")
    return summarize(cfg, datasets, runs, nu, nu_source, store, skipped)


def summarize(
    cfg: RunConfig, datasets: dict, runs: dict, nu: dict, nu_source: str, store: RunStore, skipped: list[str]
) -> int:
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
    label = f"**{profile.name} profile: {profile.demo}**\n\n" if profile.demo else ""
    write_text(out / "table1.md", label + table)
    write_text(out / "figure5_spectral.md", label + spectral)
    write_text(out / "claims.md", label + report.claims_markdown(claims))

    for g in cfg.groups:
        data = datasets[("mnist", g)]
        first = {s.model: s for s in (RunSpec(**r["spec"]) for r in runs.values()) if (s.group, s.seed) == (g, seed)}
        models = {
            m: load_trained(store.run_dir(first[m]), first[m], data.group, device)
            for m in ("DA", "IR-l2")
            if m in first
        }
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
        "convention": report.CONVENTION,
        "nu": nu,
        "nu_source": nu_source,
        "skipped": skipped,
        "table1": agg,
        "paper_table1": report.PAPER_TABLE1,
        "drift": drift,
        "claims": claims,
        "runs": runs,
    }
    write_json(out / "results.json", results)
    print(f"\n## Table 1 (Transforming-MNIST; measured | paper){' — ' + profile.demo if profile.demo else ''}\n")
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
    files = [results_dir / name for name in PUBLISHED if (results_dir / name).exists()]
    files += sorted(results_dir.glob("figure*.png"))
    for f in files:
        copy_file(f, to / f.name)
    log(f"published {len(files)} files from {results_dir} to {to}")
    return 0
