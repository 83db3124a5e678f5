"""The nu sweep (``python -m benchmarks.paper tune``), the guarded rule that picks nu, and the ``nu.json`` file.

The sweep trains, per group, the DA reference and, per regularizer, every value of the profile's nu grid as ONE
ensemble (nu is a per-member vector), all at the profile's own length, on the seed ``--seed + profile.seeds[0]``.
Each grid point's best-validation-accuracy checkpoint is measured on the validation split: accuracy, and SI in the
paper's convention (the mean over the non-identity group elements). :func:`choose_nu` then applies the rule.

``nu.json`` (format 2) has one section per profile; ``run --profile P`` reads only section ``P`` unless
``--nu-from`` names another one. A section records the rule, the DA reference accuracy, every trained point (nu,
validation SI and accuracy, best epoch, epochs) and the chosen values.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torchinvariance as ti
from benchmarks._common import log, machine_info
from benchmarks.paper.config import RunConfig
from benchmarks.paper.estimate import Estimator, Work, describe
from benchmarks.paper.labels import DETACHED, DIVERGENCES
from benchmarks.paper.profiles import Profile
from benchmarks.paper.report import paper_mean
from benchmarks.paper.runs import POINT_FILE, RunStore, eval_settings, load_trained
from benchmarks.paper.store import read_json, write_json
from benchmarks.paper.train import RunSpec, batches

NU_CONFIG = Path(__file__).with_name("nu.json")
NU_FORMAT = 2
SI_TARGET = 0.95
GUARD_POINTS = 10.0
RULE = {
    "name": "guarded",
    "si_target": SI_TARGET,
    "guard_points": GUARD_POINTS,
    "si_convention": "mean over the non-identity group elements (the paper's)",
    "text": (
        f"among the grid values whose model keeps validation accuracy >= DA's validation accuracy - "
        f"{GUARD_POINTS:g} points, the smallest nu with validation SI >= {SI_TARGET}; if none reaches it, the one with "
        "the highest validation SI among them (criterion_met: false); a model below the guard (collapsed) is never "
        "chosen, and without any model above it the value is null and run skips that IR model"
    ),
}


def regularizers(detached: bool) -> tuple[str, ...]:
    """The ``nu.json`` keys of the IR models a command trains: the library's divergences (and the variant)."""
    return (*DIVERGENCES, *([DETACHED.removeprefix("IR-")] if detached else []))


def _check_rule_inputs(points: Sequence[dict], da_val_acc: float) -> None:
    if not math.isfinite(da_val_acc):
        raise ValueError(f"the DA reference accuracy must be a finite number, got {da_val_acc!r}")
    for p in points:
        if not {"nu", "val_si", "val_acc"} <= set(p):
            raise ValueError(f"a sweep point needs nu, val_si and val_acc; got {sorted(p)}")


def choose_nu(
    points: Sequence[dict], da_val_acc: float, si_target: float = SI_TARGET, guard_points: float = GUARD_POINTS
) -> dict:
    """The guarded rule on a sweep: a pure function of the points (see :data:`RULE`).

    Args:
        points: one dict per trained grid value with ``nu``, ``val_si`` (paper convention) and ``val_acc`` (%).
        da_val_acc: the DA reference model's validation accuracy (%) at the same length.
        si_target: the SI a model must reach.
        guard_points: how many accuracy points below DA's a model may fall before it counts as collapsed.

    Returns:
        ``{"nu": float | None, "criterion_met": bool, "guard": the accuracy floor, "reason": str}``; ``nu`` is None
        when no point passes the guard.
    """
    _check_rule_inputs(points, da_val_acc)
    floor = da_val_acc - guard_points
    kept = [p for p in points if p["val_acc"] >= floor and math.isfinite(p["val_si"])]
    if not kept:
        return {
            "nu": None,
            "criterion_met": False,
            "guard": floor,
            "reason": f"every grid value fell below the accuracy guard {floor:.2f}% (collapsed); none is chosen",
        }
    hits = sorted((p for p in kept if p["val_si"] >= si_target), key=lambda p: p["nu"])
    if hits:
        p = hits[0]
        return {
            "nu": p["nu"],
            "criterion_met": True,
            "guard": floor,
            "reason": f"smallest nu with val SI {p['val_si']:.3f} >= {si_target} and val acc {p['val_acc']:.2f}% "
            f">= {floor:.2f}%",
        }
    p = max(kept, key=lambda p: (p["val_si"], -p["nu"]))
    return {
        "nu": p["nu"],
        "criterion_met": False,
        "guard": floor,
        "reason": f"no value above the guard {floor:.2f}% reached SI {si_target}; the highest val SI among them is "
        f"{p['val_si']:.3f}",
    }


# ---------------------------------------------------------------------------------------------- nu.json


def migrate(cfg: dict) -> dict:
    """A format-1 ``nu.json`` in format 2: each section keeps its values and evidence as they are, marked with the
    rule that chose them then (no accuracy guard, SI averaged with the identity element) and no DA reference."""
    if cfg.get("format_version") == NU_FORMAT:
        return cfg
    if cfg.get("format_version") != 1:
        raise ValueError(f"unknown nu config format_version {cfg.get('format_version')!r}; expected 1 or {NU_FORMAT}")
    out = {"format_version": NU_FORMAT, "profiles": {}}
    for name, entry in cfg.get("profiles", {}).items():
        entry = dict(entry)
        entry["rule"] = {
            "name": "ascending-v1",
            "si_target": SI_TARGET,
            "guard_points": None,
            "si_convention": "mean over all group elements, identity included",
            "text": entry.pop("criterion", ""),
        }
        entry["da_reference"] = None
        entry["migrated_from_format"] = 1
        out["profiles"][name] = entry
    return out


def read_nu_config(path: Path) -> dict:
    """``nu.json`` in format 2 (a format-1 file is migrated in memory); a clear error if it is unreadable."""
    if not path.exists():
        return {"format_version": NU_FORMAT, "profiles": {}}
    try:
        return migrate(read_json(path))
    except ValueError as exc:
        raise SystemExit(f"error: {path}: {exc}") from None


def load_nu(
    path: Path, profile: Profile, nu_from: str | None = None, needed: Sequence[str] = DIVERGENCES
) -> tuple[dict, str]:
    """The tuned nu values ``run --profile profile`` uses, and where they come from.

    Only the profile's own section is read, or, explicitly, the section ``nu_from``: a profile never silently
    uses another profile's nu. Stops with the ``tune`` command to run when the values are missing.
    """
    section = nu_from or profile.name
    tune_cmd = f"python -m benchmarks.paper tune --profile {profile.name}"
    cfg = read_nu_config(path)
    tuned = cfg.get("profiles", {})
    if section not in tuned:
        have = ", ".join(sorted(tuned)) or "none"
        hint = f" or pass --nu-from PROFILE to use another profile's values explicitly (tuned: {have})"
        raise SystemExit(
            f"error: {path} has no nu values tuned for the {section!r} profile. Run `{tune_cmd}` first "
            f"(it trains the nu grid for {profile.epochs} epochs, this profile's own length){hint}."
        )
    entry = tuned[section]
    values = entry["values"]
    missing = [f"{g}/{r}" for g in values for r in needed if r not in values[g]]
    if missing:
        raise SystemExit(
            f"error: {path} [{section}] has no nu for {', '.join(missing)}. Run `{tune_cmd}` "
            "(add --detached for the detached normalized-L2 variant)."
        )
    note = ""
    if section != profile.name:
        note = f" (explicit --nu-from {section}: tuned at {entry.get('epochs')} epochs, {profile.name} trains "
        note += f"{profile.epochs})"
        log(f"warning: using nu tuned for the {section!r} profile{note}")
    if entry.get("rule", {}).get("name") != RULE["name"]:
        log(
            f"note: the nu values of [{section}] were chosen by the rule {entry.get('rule', {}).get('name')!r} "
            f"(no accuracy guard); `{tune_cmd}` re-tunes them with the guarded rule"
        )
    return values, f"{path} [{section}]{note}"


# ---------------------------------------------------------------------------------------------- the sweep


def tune_seed(cfg: RunConfig) -> int:
    """The seed of the sweep: the first run seed of the profile, so the DA reference and the chosen point ARE the
    first seed's runs of ``run`` (reused by it when every setting matches)."""
    return cfg.seed + cfg.profile.seeds[0]


def sweep_specs(cfg: RunConfig) -> tuple[list[RunSpec], list[RunSpec]]:
    """The DA references and the grid points of the sweep."""
    seed = tune_seed(cfg)
    refs = [RunSpec("mnist", g, "DA", seed) for g in cfg.groups]
    points = [
        RunSpec("mnist", g, f"IR-{r}", seed, float(nu))
        for g in cfg.groups
        for r in regularizers(cfg.detached)
        for nu in sorted(cfg.profile.nu_grid)
    ]
    return refs, points


def sweep_work(refs: Sequence[RunSpec], points: Sequence[RunSpec], todo: set[RunSpec]) -> list[Work]:
    """The sweep's work for the estimate: the references and grid points in ``todo`` to train, and the validation SI
    of every grid point (an upper bound when some measurements are cached)."""
    work = [Work(s.group, s.model, members=1) for s in refs if s in todo]
    for g, kind in dict.fromkeys((p.group, p.model) for p in points):
        mine = [p for p in points if (p.group, p.model) == (g, kind)]
        work.append(Work(g, kind, members=sum(p in todo for p in mine), points_to_measure=len(mine)))
    return work


def measure_point(store: RunStore, cfg: RunConfig, data, spec: RunSpec) -> dict:
    """Validation SI (paper convention) and accuracy of one trained grid point (cached in ``point.json``)."""
    folder = store.point_dir(spec)
    wanted = {**eval_settings(cfg.profile, "tune_si"), "si": RULE["si_convention"]}
    stored = store.evaluation(folder, POINT_FILE, wanted)
    if stored is not None:
        return stored["point"]
    rec = store.record(folder)
    assert rec is not None
    model = load_trained(folder, spec, data.group, cfg.device)
    val = data.val.subset(cfg.profile.tune_si)
    report = ti.evaluate_invariance(
        model, data.group, list(batches(val, 256, cfg.device)), metrics=("si",), device=cfg.device, progress=False
    ).to_dict()
    identity = list(data.group.elements()).index(data.group.identity)
    hist = rec["history"]
    point = {
        "nu": spec.nu,
        "val_si": paper_mean(report["si"]["per_element"], identity),
        "val_si_with_identity": statistics.fmean(report["si"]["per_element"]),
        "val_acc": hist["best_val_acc"],
        "best_epoch": hist["best_epoch"],
        "epochs": hist["epochs"],
        "n_val_si": len(val),
    }
    write_json(folder / POINT_FILE, {"settings": rec["settings"], "eval_settings": wanted, "point": point})
    return point


def tune(cfg: RunConfig, datasets: dict, store: RunStore) -> Path:
    """Run the sweep and write the profile's section of ``cfg.nu_config`` (other sections are kept)."""
    profile = cfg.profile
    started = time.perf_counter()
    refs, points = sweep_specs(cfg)
    ref_todo, bad = store.plan([(s, store.run_dir(s)) for s in refs], profile)
    point_todo, bad2 = store.plan([(s, store.point_dir(s)) for s in points], profile)
    store.refuse(bad + bad2, "tune")
    todo = {s for s, _ in ref_todo + point_todo}
    secs = Estimator(datasets, profile, cfg.device, store.max_members).seconds(sweep_work(refs, points, todo))
    log(f"tune: {len(todo)} of {len(refs) + len(points)} models to train")
    log(describe(f"tune --profile {profile.name}", secs, cfg.device))
    store.train(ref_todo, datasets, profile, what="DA reference")
    store.train(point_todo, datasets, profile, what="nu grid")

    values: dict = {}
    met: dict = {}
    reasons: dict = {}
    evidence: dict = {}
    da_ref: dict = {}
    for ref in refs:
        g = ref.group
        hist = store.record(store.run_dir(ref))["history"]
        da_ref[g] = {"val_acc": hist["best_val_acc"], "best_epoch": hist["best_epoch"], "epochs": hist["epochs"]}
        for r in regularizers(cfg.detached):
            rows = []
            for spec in (p for p in points if p.group == g and p.model == f"IR-{r}"):
                row = measure_point(store, cfg, datasets[("mnist", g)], spec)
                row["passes_guard"] = row["val_acc"] >= da_ref[g]["val_acc"] - GUARD_POINTS
                rows.append(row)
                log(
                    f"tune {g}/{r}: nu={spec.nu:g} -> val SI={row['val_si']:.3f} (paper convention), "
                    f"val acc={row['val_acc']:.2f}% (DA {da_ref[g]['val_acc']:.2f}%), best epoch "
                    f"{row['best_epoch']}/{row['epochs']}"
                )
            choice = choose_nu(rows, da_ref[g]["val_acc"])
            values.setdefault(g, {})[r] = choice["nu"]
            met.setdefault(g, {})[r] = choice["criterion_met"]
            reasons.setdefault(g, {})[r] = choice["reason"]
            evidence.setdefault(g, {})[r] = rows
            log(f"tune {g}/{r}: nu={choice['nu']} ({choice['reason']})")

    path = cfg.nu_config
    nu_cfg = read_nu_config(path)
    old = nu_cfg["profiles"].get(profile.name)
    settings = {
        "seed": tune_seed(cfg),
        "epochs": profile.epochs,
        "sizes": list(profile.sizes),
        "batch_size": profile.batch_size,
        "lr": profile.lr,
        "grid": sorted(profile.nu_grid),
        "tune_si": profile.tune_si,
        "rule": RULE,
    }
    if old is not None and all(old.get(k) == v for k, v in settings.items()):
        # the same sweep on other groups or regularizers: keep what this command did not re-tune
        for key, new in (("values", values), ("criterion_met", met), ("reasons", reasons), ("evidence", evidence)):
            merged = {g: dict(v) for g, v in old.get(key, {}).items()}
            for g, per in new.items():
                merged.setdefault(g, {}).update(per)
            new.clear()
            new.update(merged)
        da_ref = {**(old.get("da_reference") or {}), **da_ref}
    nu_cfg["profiles"][profile.name] = {
        "tuned_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command_line,
        **settings,
        "da_reference": da_ref,
        "values": values,
        "criterion_met": met,
        "reasons": reasons,
        "evidence": evidence,
        "seconds": time.perf_counter() - started,  # wall time of this tune command (cached points cost nothing)
        "machine": machine_info(cfg.device),
    }
    write_json(path, nu_cfg)
    log(f"wrote the tuned nu values of [{profile.name}] to {path} ({time.perf_counter() - started:.0f}s)")
    return path
