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

import torch

import torchinvariance as ti
from benchmarks._common import log, machine_info
from benchmarks.paper.config import RunConfig
from benchmarks.paper.estimate import Estimator, Work, describe
from benchmarks.paper.labels import DETACHED, DIVERGENCES
from benchmarks.paper.profiles import Profile
from benchmarks.paper.report import paper_mean
from benchmarks.paper.runs import POINT_FILE, Mismatch, RunStore, eval_settings, load_trained
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


# ---------------------------------------------------------------------------------------------- the search

SEARCH = {
    "name": "bisection",
    "assumption": (
        "validation SI does not fall and validation accuracy does not rise as nu grows along the grid, so the grid "
        "splits into a prefix of points that keep the guard without reaching the SI target and a suffix of points "
        "that reach the target or fall below the guard; the rule's choice is the first point of the suffix if it "
        "keeps the guard, else the last point of the prefix"
    ),
    "check": (
        "every trained point is compared with every other: a kept point with a lower SI than a kept point at a "
        "smaller nu, or a point above the guard at a larger nu than one below it, contradicts the assumption, and "
        "the search then trains the whole grid and applies the rule to all of it"
    ),
}


def _stops(row: dict, floor: float) -> bool:
    """The bisection's predicate: the point reaches the SI target or falls below the guard (or has no SI)."""
    return row["val_acc"] < floor or not math.isfinite(row["val_si"]) or row["val_si"] >= SI_TARGET


def violations(rows: Sequence[dict], floor: float) -> list[str]:
    """Where the trained points contradict :data:`SEARCH`'s assumption, in words (empty: consistent)."""
    rows = sorted(rows, key=lambda r: r["nu"])
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            kept_a, kept_b = a["val_acc"] >= floor, b["val_acc"] >= floor
            if kept_a and kept_b and math.isfinite(a["val_si"]) and b["val_si"] < a["val_si"]:
                out.append(f"SI falls from {a['val_si']:.3f} at nu={a['nu']:g} to {b['val_si']:.3f} at nu={b['nu']:g}")
            if not kept_a and kept_b:
                out.append(
                    f"accuracy is below the guard at nu={a['nu']:g} ({a['val_acc']:.2f}%) and above it at "
                    f"nu={b['nu']:g} ({b['val_acc']:.2f}%)"
                )
    return out


def search_next(grid: Sequence[float], rows: Sequence[dict], floor: float | None) -> tuple[list[float], dict]:
    """The grid values the guarded rule still needs, given the points trained so far.

    Bisection over the sorted grid on :func:`_stops` (about ``log2(len(grid) + 1)`` points); where the trained
    points contradict the monotonicity it relies on (:func:`violations`), every untrained grid value. Before the
    DA reference is known (``floor`` None) only the first midpoint can be named.

    Returns:
        ``(values to train next, status)``; the search is finished when the list is empty and ``status["done"]``.
    """
    grid = sorted(float(v) for v in grid)
    have = {float(r["nu"]): r for r in rows}
    untrained = [v for v in grid if v not in have]
    if floor is None:
        first = grid[(len(grid) - 1) // 2]
        return ([first] if not have else []), {"done": False, "widened": False, "violations": []}
    found = violations(list(have.values()), floor)
    if found:
        return untrained, {"done": not untrained, "widened": True, "violations": found}
    lo, hi = -1, len(grid)
    for i, v in enumerate(grid):
        if v in have:
            if _stops(have[v], floor):
                hi = min(hi, i)
            else:
                lo = max(lo, i)
    if hi - lo <= 1:
        return [], {"done": True, "widened": False, "violations": []}
    return [grid[(lo + hi) // 2]], {"done": False, "widened": False, "violations": []}


def simulate_search(points: Sequence[dict], da_val_acc: float) -> tuple[dict, list[float]]:
    """The adaptive search run against recorded full-grid evidence: its choice and the values it would train."""
    by_nu = {float(p["nu"]): p for p in points}
    trained: list[dict] = []
    floor = da_val_acc - GUARD_POINTS
    while True:
        nxt, _ = search_next(sorted(by_nu), trained, floor)
        if not nxt:
            break
        trained += [by_nu[v] for v in nxt]
    return choose_nu(trained, da_val_acc), [p["nu"] for p in trained]


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
        cfg = read_json(path)
        if not isinstance(cfg, dict):
            raise ValueError(f"expected a JSON object with format_version and profiles, got a {type(cfg).__name__}")
        cfg = migrate(cfg)
        if not isinstance(cfg.get("profiles"), dict):
            raise ValueError(f"expected a 'profiles' object of per-profile sections, got {cfg.get('profiles')!r:.60}")
        return cfg
    except ValueError as exc:  # json.JSONDecodeError is one
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


def bisection_points(n: int) -> int:
    """The most grid values the bisection trains on a grid of ``n`` when the evidence is monotone."""
    return min(n, math.ceil(math.log2(n + 1)))


def sweep_work(
    refs: Sequence[RunSpec], points: Sequence[RunSpec], todo: set[RunSpec], adaptive: bool = False
) -> list[Work]:
    """The sweep's work for the estimate: the references and grid points in ``todo`` to train, and the validation SI
    of every grid point (an upper bound when some measurements are cached). With ``adaptive``, each (group,
    regularizer) trains at most :func:`bisection_points` of its grid (the search without widening)."""
    work = [Work(s.group, s.model, members=1) for s in refs if s in todo]
    for g, kind in dict.fromkeys((p.group, p.model) for p in points):
        mine = [p for p in points if (p.group, p.model) == (g, kind)]
        n = bisection_points(len(mine)) if adaptive else len(mine)
        work.append(Work(g, kind, members=min(n, sum(p in todo for p in mine)), points_to_measure=n))
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


def section_settings(cfg: RunConfig) -> dict:
    """The settings a ``nu.json`` section was tuned under; its evidence is reused only when they all match."""
    profile = cfg.profile
    return {
        "seed": tune_seed(cfg),
        "epochs": profile.epochs,
        "sizes": list(profile.sizes),
        "batch_size": profile.batch_size,
        "lr": profile.lr,
        "grid": sorted(profile.nu_grid),
        "tune_si": profile.tune_si,
        "rule": RULE,
        "torch": torch.__version__,
    }


def _provenance(store: RunStore, folder: Path) -> dict:
    rec = store.record(folder) or {}
    recorded = rec.get("recorded", {})
    return {
        "seconds": rec.get("history", {}).get("seconds"),
        "code": recorded.get("hash"),
        "git_commit": recorded.get("git_commit"),
        "device": recorded.get("device"),
    }


class Section:
    """The profile's section of ``nu.json`` while a tune fills it: every finished point is written at once."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.path = cfg, cfg.nu_config
        self.settings = section_settings(cfg)
        old = read_nu_config(self.path)["profiles"].get(cfg.profile.name)
        same = old is not None and all(old.get(k) == _jsonable(v) for k, v in self.settings.items())
        self.entry: dict = dict(old) if same else {}
        if old is not None and not same:
            log(f"tune: the [{cfg.profile.name}] section of {self.path} was tuned under other settings; re-tuned")
        for key in ("da_reference", "values", "criterion_met", "reasons", "evidence", "search_status"):
            self.entry.setdefault(key, {})
        self.entry.setdefault("commands", [])

    def da(self, group: str) -> dict | None:
        return self.entry["da_reference"].get(group)

    def rows(self, group: str, reg: str) -> list[dict]:
        return self.entry["evidence"].get(group, {}).get(reg, [])

    def add_row(self, group: str, reg: str, row: dict) -> None:
        rows = [r for r in self.rows(group, reg) if r["nu"] != row["nu"]] + [row]
        self.entry["evidence"].setdefault(group, {})[reg] = sorted(rows, key=lambda r: r["nu"])

    def write(self, **extra) -> None:
        cfg = read_nu_config(self.path)
        self.entry.update(
            tuned_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=self.cfg.command_line,
            **self.settings,
            search=SEARCH,
            machine=machine_info(self.cfg.device),
            **extra,
        )
        cfg["profiles"][self.cfg.profile.name] = self.entry
        write_json(self.path, cfg)


def _jsonable(value):
    import json

    return json.loads(json.dumps(value))


def tune(cfg: RunConfig, datasets: dict, store: RunStore, pool=None) -> Path:
    """Run the nu search and write the profile's section of ``cfg.nu_config`` point by point (others are kept).

    Each (group, regularizer) searches the grid by bisection (:func:`search_next`); ``--search grid`` trains the
    whole grid. Every finished DA reference and grid point is written to the section at once, atomically, with
    its settings, and a later tune under the same settings (:func:`section_settings`) skips it: the search
    carries on across interruptions and sessions from what is committed. The runs go to ``pool``
    (:mod:`benchmarks.paper.workers`), or train in this process.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from benchmarks.paper.workers import make_pool

    profile = cfg.profile
    started = time.perf_counter()
    refs, points = sweep_specs(cfg)
    grid = sorted(float(v) for v in profile.nu_grid)
    sec = Section(cfg)
    own_pool = pool is None
    pool = pool or make_pool(cfg, datasets, store)
    searches = [(g, r) for g in cfg.groups for r in regularizers(cfg.detached)]
    by_key = {(p.group, p.regularizer, p.nu): p for p in points}
    trained_now: list[str] = []
    inflight: dict = {}  # future -> ("ref", spec) | ("point", spec)

    secs = Estimator(datasets, profile, cfg.device, store.max_members, workers=pool.workers).seconds(
        sweep_work(refs, points, set(refs + points), adaptive=cfg.search == "adaptive")
    )
    log(describe(f"tune --profile {profile.name} (upper bound: no point reused)", secs, cfg.device, pool.workers))

    def folder_state(spec: RunSpec, folder: Path) -> bool:
        """Whether ``folder`` must be trained (False: it holds this run already); refuses other settings."""
        st = store.status(folder, spec, profile)
        if isinstance(st, Mismatch):
            store.refuse([st], "tune")
        return st != "ok"

    def floor(g: str) -> float | None:
        da = sec.da(g)
        return None if da is None else da["val_acc"] - GUARD_POINTS

    def wanted(g: str, r: str) -> list[float]:
        if cfg.search == "grid":
            have = {row["nu"] for row in sec.rows(g, r)}
            return [v for v in grid if v not in have]
        nxt, status = search_next(grid, sec.rows(g, r), floor(g))
        if floor(g) is not None:
            sec.entry["search_status"].setdefault(g, {})[r] = {
                **status,
                "trained": len(sec.rows(g, r)),
                "of": len(grid),
            }
        return nxt

    def submit_ready() -> None:
        busy = {(k, s) for k, s in inflight.values()}
        for ref in refs:
            if sec.da(ref.group) is None and ("ref", ref) not in busy:
                folder = store.run_dir(ref)
                if folder_state(ref, folder):
                    inflight[pool.submit("train", ref, store.prepare(folder))] = ("ref", ref)
                else:
                    record_ref(ref)
        for g, r in searches:
            if any(k == "point" and (s.group, s.regularizer) == (g, r) for k, s in busy):
                continue
            for nu in wanted(g, r):
                spec = by_key[(g, r, nu)]
                folder = store.point_dir(spec)
                need = folder_state(spec, folder)
                inflight[pool.submit("train_and_measure", spec, store.prepare(folder) if need else folder, need)] = (
                    "point",
                    spec,
                )
                busy.add(("point", spec))

    def record_ref(ref: RunSpec) -> None:
        hist = store.record(store.run_dir(ref))["history"]
        sec.entry["da_reference"][ref.group] = {
            "val_acc": hist["best_val_acc"],
            "best_epoch": hist["best_epoch"],
            "epochs": hist["epochs"],
            **_provenance(store, store.run_dir(ref)),
        }
        log(f"tune {ref.group}: DA reference val acc {hist['best_val_acc']:.2f}% (guard {floor(ref.group):.2f}%)")
        sec.write()

    def record_point(spec: RunSpec, row: dict) -> None:
        g, r = spec.group, spec.regularizer
        row = {**row, **_provenance(store, store.point_dir(spec))}
        sec.add_row(g, r, row)
        log(
            f"tune {g}/{r}: nu={spec.nu:g} -> val SI={row['val_si']:.3f} (paper convention), val acc="
            f"{row['val_acc']:.2f}%, best epoch {row['best_epoch']}/{row['epochs']}"
        )
        sec.write()

    try:
        submit_ready()
        while inflight:
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in done:
                kind, spec = inflight.pop(future)
                result = future.result()
                store.fresh.add(store.run_dir(spec) if kind == "ref" else store.point_dir(spec))
                if kind == "ref":
                    record_ref(spec)
                    trained_now.append(spec.key)
                else:
                    history, row = result
                    if history is not None:
                        trained_now.append(f"{spec.key}_nu{spec.nu:g}")
                    record_point(spec, row)
            submit_ready()
    finally:
        if own_pool:
            pool.close()

    for g, r in searches:
        rows = sec.rows(g, r)
        da = sec.da(g)
        for row in rows:
            row["passes_guard"] = row["val_acc"] >= da["val_acc"] - GUARD_POINTS
        choice = choose_nu(rows, da["val_acc"])
        sec.entry["values"].setdefault(g, {})[r] = choice["nu"]
        sec.entry["criterion_met"].setdefault(g, {})[r] = choice["criterion_met"]
        sec.entry["reasons"].setdefault(g, {})[r] = choice["reason"]
        log(f"tune {g}/{r}: nu={choice['nu']} ({choice['reason']}; {len(rows)} of {len(grid)} grid values trained)")
    seconds = time.perf_counter() - started
    sec.entry["commands"] = [
        *sec.entry["commands"],
        {
            "command": cfg.command_line,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds,
            "workers": pool.workers,
            "search": cfg.search,
            "trained": trained_now,
        },
    ]
    sec.write()
    log(f"wrote the tuned nu values of [{profile.name}] to {cfg.nu_config} ({seconds:.0f}s)")
    return cfg.nu_config
