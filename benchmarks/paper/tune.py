"""The nu sweep (``python -m benchmarks.paper tune``) and the nu config file that ``run`` reads."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import torchinvariance as ti
from benchmarks._common import log
from benchmarks.paper.config import RunConfig
from benchmarks.paper.data import TransformingDataset
from benchmarks.paper.labels import DIVERGENCES
from benchmarks.paper.profiles import Profile
from benchmarks.paper.store import read_json, write_json
from benchmarks.paper.train import RunSpec, accuracy, batches, load_model, train

NU_CONFIG = Path(__file__).with_name("nu.json")
NU_FORMAT = 1
SI_TARGET = 0.95


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


def tune_point(cfg: RunConfig, data: TransformingDataset, val_si, spec: RunSpec) -> dict:
    """Train one IR model for the sweep and measure its validation SI and accuracy (cached on disk)."""
    profile, device = cfg.profile, cfg.device
    epochs = profile.tune_epochs or profile.epochs
    cache = cfg.results_dir / "tune" / f"{spec.key}_nu{spec.nu:g}_e{epochs}.json"
    if cache.exists() and not cfg.force:
        return read_json(cache)
    state, hist = train(spec, data, profile, device, epochs=epochs, progress=cfg.progress)
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


def sweep(cfg: RunConfig, data: TransformingDataset, group: str, divergence: str) -> tuple[float, bool, list[dict]]:
    """Scan the grid upwards for one group and divergence; return ``(nu, criterion_met, rows)``.

    The scan stops at the first nu whose model reaches val SI >= 0.95 (SI need not grow with nu: a
    too-strong regularizer can collapse the model). If no grid value reaches the target, the nu with the
    best validation SI is returned with ``criterion_met`` False.
    """
    val_si = data.val.subset(cfg.profile.tune_si)
    rows = []
    for nu in sorted(cfg.profile.nu_grid):  # ascending: the first nu reaching the target is the smallest
        row = tune_point(cfg, data, val_si, RunSpec("mnist", group, f"IR-{divergence}", cfg.seed, nu))
        rows.append(row)
        log(f"tune {group}/{divergence}: nu={nu:g} -> val SI={row['val_si']:.3f}, val acc={row['val_acc']:.1f}%")
        if row["val_si"] >= SI_TARGET:
            return nu, True, rows
    best = max(rows, key=lambda r: r["val_si"])["nu"]
    log(f"tune {group}/{divergence}: no nu on the grid reached SI >= {SI_TARGET}; using the best, nu={best:g}")
    return best, False, rows


def tune(cfg: RunConfig, datasets: dict) -> Path:
    """Per group and divergence, find the smallest nu on the grid whose model reaches val SI >= 0.95.

    The values, whether each met the criterion, and the evidence go into ``cfg.nu_config`` under the
    profile's name (other profiles' entries are kept).
    """
    profile = cfg.profile
    values: dict = {}
    evidence: dict = {}
    met: dict = {}
    for g in cfg.groups:
        for div in DIVERGENCES:
            nu, ok, rows = sweep(cfg, datasets[("mnist", g)], g, div)
            values.setdefault(g, {})[div] = nu
            met.setdefault(g, {})[div] = ok
            evidence.setdefault(g, {})[div] = rows
    path = cfg.nu_config
    nu_cfg = read_json(path) if path.exists() else {"format_version": NU_FORMAT, "profiles": {}}
    nu_cfg["format_version"] = NU_FORMAT
    nu_cfg.setdefault("profiles", {})[profile.name] = {
        "tuned_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command_line,
        "criterion": f"smallest nu on the grid with SI >= {SI_TARGET} on the validation split "
        "(ascending scan); if none reaches it, the nu with the best validation SI",
        "seed": cfg.seed,
        "grid": list(profile.nu_grid),
        "epochs": profile.tune_epochs or profile.epochs,
        "values": values,
        "criterion_met": met,
        "evidence": evidence,
    }
    write_json(path, nu_cfg)
    log(f"wrote tuned nu values to {path}")
    return path
