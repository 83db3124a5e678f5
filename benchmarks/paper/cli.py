"""``python -m benchmarks.paper``: reproduce Table 1 and Figures 2-5 of the paper.

Sub-commands:

- ``run`` (default): train every (dataset, group, model, seed) run that is not finished yet, evaluate it,
  and write Table 1, the figures, ``results.json`` and the PASS/FAIL checks of the paper's claims;
- ``tune``: sweep the regularizer weight nu and write the smallest nu on the grid whose model reaches
  SI >= 0.95 on the validation split, with the evidence, to the nu config file that ``run`` reads.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import math
import platform
import sys
import time
from pathlib import Path

import torch

import torchinvariance as ti
from benchmarks.paper import data as D
from benchmarks.paper import figures, report
from benchmarks.paper.profiles import PROFILES, Profile, get_profile
from benchmarks.paper.store import check_writable, copy_file, load_state, read_json, save_state, write_json, write_text
from benchmarks.paper.train import (
    DIVERGENCES,
    GROUPS,
    RunSpec,
    accuracy,
    batches,
    evaluate,
    evaluate_drift,
    load_model,
    make_group,
    train,
)

NU_CONFIG = Path(__file__).with_name("nu.json")
NU_FORMAT = 1
SI_TARGET = 0.95
BETAS = tuple(round(0.1 * i, 1) for i in range(11))
DRIFT_MODELS = ("DA", "WT", "IR-l2")


def log(msg: str) -> None:
    """A timestamped log line on stderr (keeps stdout for the tables)."""
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but torch.cuda.is_available() is False")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


def have_escnn() -> bool:
    """Whether the optional escnn extra is importable."""
    return importlib.util.find_spec("escnn") is not None


# --------------------------------------------------------------------------- nu config
def load_nu(path: Path, profile: Profile) -> tuple[dict, str]:
    """The tuned nu values for ``profile`` (falls back to another tuned profile, and says so)."""
    if not path.exists():
        raise SystemExit(
            f"error: no nu config at {path}; run `python -m benchmarks.paper tune --profile {profile.name}` first"
        )
    cfg = read_json(path)
    if cfg.get("format_version") != NU_FORMAT:
        raise SystemExit(f"error: {path} has format_version {cfg.get('format_version')!r}, expected {NU_FORMAT}")
    tuned = cfg.get("profiles", {})
    for name in (profile.name, "full", "quick", "smoke"):
        if name in tuned:
            note = "" if name == profile.name else f" (no values tuned for {profile.name!r}; using {name!r}'s)"
            return tuned[name]["values"], f"{path} [{name}]{note}"
    raise SystemExit(f"error: {path} has no tuned values; run the tune sub-command")


def tune_point(args, profile: Profile, device: torch.device, data, val_si, spec: RunSpec) -> dict:
    """Train one IR model for the sweep and measure its validation SI and accuracy (cached on disk)."""
    epochs = profile.tune_epochs or profile.epochs
    cache = Path(args.results_dir) / "tune" / f"{spec.key}_nu{spec.nu:g}_e{epochs}.json"
    if cache.exists() and not args.force:
        return read_json(cache)
    state, hist = train(spec, data, profile, device, epochs=epochs, progress=args.progress)
    model = load_model(spec, data.group, state, device)
    rep = ti.evaluate_invariance(
        model, data.group, list(batches(val_si, 256, device)), metrics=("si",), device=device, progress=False
    ).to_dict()
    row = {
        "nu": spec.nu,
        "val_si": rep["si"]["mean"],
        "val_acc": accuracy(model, data.val, device),
        "best_epoch": hist["best_epoch"],
        "epochs": epochs,
        "n_val_si": len(val_si),
    }
    write_json(cache, row)
    return row


def tune(args: argparse.Namespace, profile: Profile, device: torch.device, datasets: dict) -> Path:
    """Per group and divergence, find the smallest nu on the grid whose model reaches val SI >= 0.95.

    The grid is scanned in ascending order and the scan stops at the first nu that reaches the target
    (SI need not grow with nu: a too-strong regularizer can collapse the model). If no grid value reaches
    the target, the nu with the best validation SI is used and ``criterion_met`` says so.
    """
    path = Path(args.nu_config) if args.nu_config else NU_CONFIG
    epochs = profile.tune_epochs or profile.epochs
    values: dict = {}
    evidence: dict = {}
    met: dict = {}
    for g in args.groups:
        data = datasets[("mnist", g)]
        val_si = data.val.subset(profile.tune_si)
        for div in DIVERGENCES:
            rows = []
            chosen = None
            for nu in sorted(profile.nu_grid):  # ascending: the first nu reaching the target is the smallest
                row = tune_point(args, profile, device, data, val_si, RunSpec("mnist", g, f"IR-{div}", args.seed, nu))
                rows.append(row)
                log(f"tune {g}/{div}: nu={nu:g} -> val SI={row['val_si']:.3f}, val acc={row['val_acc']:.1f}%")
                if row["val_si"] >= SI_TARGET:
                    chosen = nu
                    break
            met.setdefault(g, {})[div] = chosen is not None
            if chosen is None:  # fall back to the nu with the best validation SI, and say so
                chosen = max(rows, key=lambda r: r["val_si"])["nu"]
                log(f"tune {g}/{div}: no nu on the grid reached SI >= {SI_TARGET}; using the best, nu={chosen:g}")
            values.setdefault(g, {})[div] = chosen
            evidence.setdefault(g, {})[div] = rows
    cfg = read_json(path) if path.exists() else {"format_version": NU_FORMAT, "profiles": {}}
    cfg["format_version"] = NU_FORMAT
    cfg.setdefault("profiles", {})[profile.name] = {
        "tuned_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.paper", *sys.argv[1:]]),
        "criterion": f"smallest nu on the grid with SI >= {SI_TARGET} on the validation split "
        "(ascending scan); if none reaches it, the nu with the best validation SI",
        "seed": args.seed,
        "grid": list(profile.nu_grid),
        "epochs": epochs,
        "values": values,
        "criterion_met": met,
        "evidence": evidence,
    }
    write_json(path, cfg)
    log(f"wrote tuned nu values to {path}")
    return path


# --------------------------------------------------------------------------- main run
def plan(profile: Profile, groups: list[str], nu: dict, escnn: bool, base_seed: int = 0) -> list[RunSpec]:
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


def run_one(spec: RunSpec, data, args, profile: Profile, device: torch.device, drifted) -> dict:
    """Train + evaluate one run, or load it if it already finished."""
    run_dir = Path(args.results_dir) / "runs" / spec.key
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not args.force:
        metrics = read_json(metrics_path)
        if metrics.get("spec", {}).get("nu") == spec.nu:
            log(f"skip {spec.key} (finished: {metrics_path})")
            return metrics
        log(f"redo {spec.key}: its nu changed from {metrics['spec'].get('nu')} to {spec.nu}")
    state, hist = train(spec, data, profile, device, progress=args.progress)
    model = load_model(spec, data.group, state, device)
    ev = evaluate(model, data, profile, device, progress=args.progress)
    if spec.model in DRIFT_MODELS and drifted is not None:
        ev["drift"] = evaluate_drift(model, data, drifted, device, progress=args.progress)
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


def build_datasets(args, profile: Profile, groups: list[str]) -> dict:
    """Transforming-MNIST for each group (and the FMNIST test images for the drift)."""
    root = Path(args.data_root) if args.data_root else D.default_data_root()
    out = {}
    try:
        for g in groups:
            out[("mnist", g)] = D.build("mnist", make_group(g), root, profile.sizes)
        images, labels = D.load_raw("fmnist", root)
    except D.DataUnavailableError as exc:
        raise SystemExit(f"error: {exc}") from None
    keep = labels != D.NUM_CLASSES
    images, labels = images[keep], labels[keep]
    _, te, _ = D.split_indices(len(labels), profile.sizes)
    out["fmnist_test"] = (images[te], labels[te])
    return out


def main_run(args: argparse.Namespace) -> int:
    """The full pipeline of the ``run`` sub-command."""
    profile = get_profile(args.profile)
    device = resolve_device(args.device)
    check_writable(Path(args.results_dir))
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"profile {profile.name}: {profile.epochs} epochs x {len(profile.seeds)} seed(s), device {device}")
    if profile.name == "full" and device.type == "cpu":
        log("the full profile is the paper's protocol (300 epochs x 4 seeds) and is meant for a GPU")
    datasets = build_datasets(args, profile, args.groups)
    if args.command == "tune" or (profile.name == "smoke" and not args.nu_config):
        if profile.name == "smoke" and not args.nu_config:
            args.nu_config = str(Path(args.results_dir) / "nu.json")
        tune(args, profile, device, datasets)
        if args.command == "tune":
            return 0
    nu, nu_source = load_nu(Path(args.nu_config) if args.nu_config else NU_CONFIG, profile)
    log(f"nu values from {nu_source}: {nu}")
    escnn = have_escnn()
    if not escnn:
        log('escnn is not installed: the WT (escnn) row is skipped (pip install "torchinvariance[escnn]")')
    specs = plan(profile, args.groups, nu, escnn, args.seed)
    pending = [
        s for s in specs if args.force or not (Path(args.results_dir) / "runs" / s.key / "metrics.json").exists()
    ]
    est = estimate_minutes(profile, pending, device, datasets[("mnist", args.groups[0])])
    log(f"{len(specs)} runs, {len(pending)} to do; estimated {est:.1f} min on this machine ({device})")

    fm_images, fm_labels = datasets["fmnist_test"]
    drift_sets = {
        g: {b: D.drifted_test(datasets[("mnist", g)], fm_images, fm_labels, b, n=profile.drift_n) for b in BETAS}
        for g in args.groups
    }
    runs = {}
    started = time.perf_counter()
    from tqdm.auto import tqdm

    for spec in tqdm(specs, desc="runs", unit="run", disable=not args.progress):
        runs[spec.key] = run_one(
            spec, datasets[(spec.dataset, spec.group)], args, profile, device, drift_sets[spec.group]
        )
    log(f"all runs finished in {(time.perf_counter() - started) / 60:.1f} min")
    return summarize(args, profile, device, datasets, runs, nu, nu_source)


def summarize(
    args, profile: Profile, device: torch.device, datasets: dict, runs: dict, nu: dict, nu_source: str
) -> int:
    """Table 1, figures, claims and results.json from the finished runs."""
    out = Path(args.results_dir)
    agg = report.aggregate(runs)
    drift: dict = {}
    for m in runs.values():
        s = m["spec"]
        if "drift" in m["eval"] and s["seed"] == args.seed + profile.seeds[0]:
            drift.setdefault(s["group"], {})[s["model"]] = m["eval"]["drift"]["curve"]
    table = report.table1(agg)
    spectral = report.spectral_table(agg)
    claims = report.check_claims(agg, drift)
    write_text(out / "table1.md", table)
    write_text(out / "figure5_spectral.md", spectral)
    write_text(out / "claims.md", report.claims_markdown(claims))

    seed = args.seed + profile.seeds[0]
    for g in args.groups:
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
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join(["python -m benchmarks.paper", *sys.argv[1:]]),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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


PUBLISHED = ("table1.md", "claims.md", "figure5_spectral.md", "results.json")


def publish(args: argparse.Namespace) -> int:
    """Copy a finished run's tables, figures and results.json (no checkpoints) to ``--to`` for the docs."""
    src, dst = Path(args.results_dir), Path(args.to)
    if not (src / "results.json").exists():
        raise SystemExit(f"error: {src} has no results.json; run the benchmark first")
    files = [src / name for name in PUBLISHED] + sorted(src.glob("figure*.png"))
    for f in files:
        copy_file(f, dst / f.name)
    log(f"published {len(files)} files from {src} to {dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=("run", "tune", "publish"), help="default: run")
    p.add_argument("--profile", default="quick", help=f"one of {sorted(PROFILES)} (default: quick)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder with MNIST/raw and FashionMNIST/raw "
        "(default: $TORCHINVARIANCE_DATA, else ~/.cache/torchinvariance/data)",
    )
    p.add_argument("--results-dir", default=None, help="default: results/<profile>/")
    p.add_argument(
        "--nu-config",
        default=None,
        help="tuned nu values (default: benchmarks/paper/nu.json)",
    )
    p.add_argument("--groups", nargs="+", default=list(GROUPS), help="subset of: rotation translation")
    p.add_argument("--seed", type=int, default=0, help="global seed (runs use their own seeds from the profile)")
    p.add_argument("--force", action="store_true", help="recompute finished runs")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--to", default="docs/results/quick", help="publish: destination folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        get_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    bad = [g for g in args.groups if g not in GROUPS]
    if bad:
        raise SystemExit(f"error: unknown group(s) {bad}; expected some of {sorted(GROUPS)}")
    if args.results_dir is None:
        args.results_dir = str(Path("results") / args.profile)
    if args.command == "publish":
        return publish(args)
    return main_run(args)
