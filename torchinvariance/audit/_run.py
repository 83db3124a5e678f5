"""Run an audit: measure every group on the model and its two reference points, write JSON, Markdown and figures."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import inspect
import io
import json
import math
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from torchinvariance._io import atomic_write as _atomic_write
from torchinvariance.actions import OutputAction, resolve_output_action
from torchinvariance.audit._config import ROBUSTNESS_METRICS, ActionSpec, AuditConfig, AuditError, GroupSpec
from torchinvariance.audit._inputs import AuditData, build_model, describe_tensor, load_data, pick_device, random_like
from torchinvariance.audit._verdict import CLEAR, ONE_CLASS, TOLERANCE, equivariance_verdict, verdicts
from torchinvariance.groups import SO2, Group, Scale
from torchinvariance.metrics import InvarianceReport, SaliencyConfig, evaluate_invariance
from torchinvariance.metrics._reduction import measured_elements
from torchinvariance.models import GroupAveraged
from torchinvariance.orbit import model_output, resolve_elements
from torchinvariance.plot import saliency_orbit
from torchinvariance.registry import get_group, list_groups
from torchinvariance.robustness import check_flip_group
from torchinvariance.testing import equivariance_error
from torchinvariance.testing._checks import _measure

__all__ = ["run_audit"]

REFERENCES = {"group_averaged": "group-averaged", "random_inputs": "random inputs"}
# GroupAveraged(output_action=...) symmetrizes an equivariant model (issue 20 item 3); older versions cannot
_AVERAGES_OUTPUTS = "output_action" in inspect.signature(GroupAveraged).parameters
_ROWS = [  # (key in the report, label, the value of an invariant model)
    ("accuracy", "accuracy", None),
    ("consistency", "top-1 consistency", "1"),
    ("di", "DI", "0"),
    ("li", "LI", "0"),
    ("si", "SI", "1"),
]


REPORT_FILES = ("report.json", "report.md")


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise AuditError(f"--out {out} is not a writable folder ({exc}); choose a folder you can write to") from exc
    for name in REPORT_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            raise AuditError(f"--out {out}: {path} is a folder; the audit writes its report there, remove it")
    return out


def _remove_stale_reports(out: Path) -> None:
    """Delete a previous run's ``report.json``/``report.md`` before this run changes anything in ``out``.

    From here until this run's report is written, ``out`` has no report: an interrupted run (Ctrl-C) leaves none,
    never the old one beside figures it no longer describes. A symlink is removed itself, not what it points to.
    """
    for name in REPORT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / name)


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (kept in memory until the report is written)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _publish(out: Path, figures: dict[str, bytes], result: dict[str, Any]) -> None:
    """Write the figures, then ``report.md``, then ``report.json``, each atomically.

    A report names only files already in place: a report that exists is this run's, whole, with its figures.
    """
    for name, data in figures.items():
        _atomic_write(out / name, data)
    _atomic_write(out / "report.md", markdown(result).encode())
    _atomic_write(out / "report.json", (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())


def _build_group(spec: GroupSpec, cfg: AuditConfig) -> Group:
    try:
        group = get_group(spec.name, **spec.params)
    except KeyError as exc:
        raise AuditError(f"--group {spec.text!r}: unknown group {spec.name!r}; available: {list_groups()}") from exc
    except (TypeError, ValueError) as exc:
        hint = ""
        if spec.name == "rotation" and "so2" not in str(exc):
            hint = "; for rotations by other angles use so2 with the angles, e.g. so2:angles=0,45,90,135,180"
        raise AuditError(f"--group {spec.text!r}: {exc}{hint}") from exc
    _check_element_keys(spec, group)
    try:
        group.check_input(torch.zeros(1, *cfg.input_shape))
    except (ValueError, TypeError) as exc:
        c, h, w = cfg.input_shape
        raise AuditError(
            f"--group {spec.text!r} cannot act on inputs of shape {c},{h},{w}: {exc}. Choose an --input-shape it can "
            "act on (rotations need square images, H = W) or another group"
        ) from exc
    if "si" in cfg.metrics and group.event_ndim != 2:
        raise AuditError(f"--group {spec.text!r} does not act on images (event_ndim={group.event_ndim}): drop si")
    if "flip" in cfg.metrics and cfg.output_action.trivial:
        try:
            check_flip_group(group)
        except TypeError as exc:
            raise AuditError(
                f"--metrics flip searches a one-parameter path: so2, scale or a cyclic group (rotation, translation, "
                f"flip); --group {spec.text!r} is {group!r}: drop flip (worst covers its elements) or audit it alone"
            ) from exc
    return group


def _check_element_keys(spec: GroupSpec, group: Group) -> None:
    """``angles=`` for so2, ``factors=`` for scale, ``elements=``/``samples=`` for any continuous group."""
    key = spec.elements_key
    if group.is_finite:
        if key is not None:
            raise AuditError(
                f"--group {spec.text!r}: {group!r} is finite and the audit measures every one of its elements; "
                f"{key}= is for continuous groups (so2:angles=0,30,45,90, so2:samples=8, scale:factors=0.8,1.25)"
            )
        return
    wanted = "angles" if isinstance(group, SO2) else "factors" if isinstance(group, Scale) else "elements"
    if key is None:
        raise AuditError(
            f"--group {spec.text!r}: {group!r} is continuous, so name the elements to measure: "
            f"{spec.name}:{wanted}=... (e.g. so2:angles=0,30,45,90, scale:factors=0.8,1.25) or "
            f"{spec.name}:samples=8 (drawn with --seed)"
        )
    if key in ("angles", "factors") and key != wanted:
        raise AuditError(
            f"--group {spec.text!r}: {group!r} takes {wanted}=... (or samples=k), not {key}=; angles= is for "
            "so2, factors= for scale"
        )


def _measured(spec: GroupSpec, group: Group, seed: int, include_identity: bool) -> list | None:
    """The elements to measure: ``None`` (every element of a finite group), the listed ones, or ``k`` drawn once."""
    if spec.elements is None:
        return None
    try:
        wanted = list(spec.elements) if isinstance(spec.elements, tuple) else spec.elements
        chosen = measured_elements(group, wanted, seed)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"--group {spec.text!r}: {exc}") from exc
    assert chosen is not None
    if not include_identity and all(group.same_element(g, group.identity) for g in chosen):
        listed = ", ".join(f"{float(g):g}" for g in chosen)
        raise AuditError(
            f"--group {spec.text!r} lists only the identity of {group!r} ({listed}), "
            "and the means run over the other elements: list elements besides the identity (e.g. "
            "so2:angles=0,30,45,90) or pass --include-identity"
        )
    return chosen


def _averaging_set(group: Group, chosen: list | None) -> list | None:
    """What the group-averaged reference averages over: the whole finite group, or the identity and ``chosen``."""
    if chosen is None:
        return None
    rest = [g for g in chosen if not group.same_element(g, group.identity)]
    unique: list = []
    for g in rest:
        if not any(group.same_element(g, h) for h in unique):
            unique.append(g)
    return [group.identity, *unique]


def _import_action(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AuditError(
            f"--output-action {target!r}: cannot import module {module_name!r} ({exc}); install it or put the folder "
            "holding it on PYTHONPATH (or use trivial, same or perm:...)"
        ) from exc
    except Exception as exc:  # the module's own code failed while it was imported
        raise AuditError(
            f"--output-action {target!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AuditError(f"--output-action {target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AuditError(
            f"--output-action {target!r} is a {type(obj).__name__}, not a function (g, y) -> g·y or rho(g) -> matrix"
        )
    return obj


def _build_action(action: ActionSpec, spec: GroupSpec, group: Group) -> OutputAction | None:
    """The :class:`~torchinvariance.OutputAction` of ``--output-action`` for ``group``; ``None`` when trivial."""
    where = f"--output-action {action.text!r} on --group {spec.text!r}"
    if action.trivial:
        return None
    if action.kind == "same":
        return resolve_output_action("same", group)
    if action.kind == "callable":
        try:
            return resolve_output_action(_import_action(action.target or ""), group)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"{where}: {exc}") from exc
    if not group.is_finite:
        raise AuditError(
            f"{where}: perm: lists a permutation for every element, so it needs a finite group; {group!r} is "
            "continuous (use same or MODULE:CALLABLE)"
        )
    els = resolve_elements(group, None)
    by_key = {group.element_name(g): g for g in els} | {str(i): g for i, g in enumerate(els)}
    n = len(action.perms[0][1])
    table: dict[Any, list[int]] = {group.identity: list(range(n))}
    for key, perm in action.perms:
        if key not in by_key:
            raise AuditError(
                f"{where}: {key!r} is not an element of {group!r}; expected one of "
                f"{[group.element_name(g) for g in els]} (or its index 0..{len(els) - 1})"
            )
        table[by_key[key]] = list(perm)
    missing = [group.element_name(g) for g in els if g not in table]
    if missing:
        raise AuditError(
            f"{where}: no permutation for the elements {missing}; give one for every element but the identity"
        )
    return OutputAction.permutation(table, dim=action.dim)


def _probe(model: nn.Module, cfg: AuditConfig, device: torch.device) -> int | None:
    """Run one input through the model: logits ``(1, classes)``, whose number it returns; any output with an action."""
    c, h, w = cfg.input_shape
    try:
        with torch.no_grad():
            out = model_output(model(torch.zeros(1, c, h, w, device=device)), 1)
    except Exception as exc:
        raise AuditError(
            f"the model failed on one input of shape (1, {c}, {h}, {w}): {type(exc).__name__}: {exc}. Check "
            "--input-shape (and --model-kwargs)"
        ) from exc
    if not cfg.output_action.trivial:
        return None
    if out.dim() != 2:
        raise AuditError(
            f"the model returns {tuple(out.shape)} for one input; the audit of invariance needs logits (1, classes). "
            "For an equivariant model (e.g. a segmentation net) pass --output-action same (or perm:..., "
            "MODULE:CALLABLE)"
        )
    if not out.is_floating_point():
        raise AuditError(
            f"the model returns {out.dtype} outputs {tuple(out.shape)} for one input; the audit needs floating point "
            "logits (its group-averaged reference averages them over the orbit). Return the logits before any "
            "rounding or argmax, or cast them: .float()"
        )
    if out.shape[1] < 2:
        raise AuditError(
            f"the model returns {tuple(out.shape)} for one input: one logit, and the audit compares classes (top-1 "
            "consistency would be 1 and DI 0 whatever the model). It needs logits (1, classes) with at least 2 "
            "classes: for a one-logit binary classifier return torch.cat([-z, z], 1) / 2"
        )
    return int(out.shape[1])


def _probe_action(
    model: nn.Module,
    spec: GroupSpec,
    group: Group,
    action: OutputAction,
    chosen: list | None,
    cfg: AuditConfig,
    device: torch.device,
) -> None:
    """The output action must apply to the model's outputs: one equivariance error on a zero input."""
    elements = resolve_elements(group, None)[1:2] if chosen is None else chosen[:1]
    try:
        equivariance_error(model, group, torch.zeros(1, *cfg.input_shape, device=device), action, elements=elements)
    except Exception as exc:
        raise AuditError(
            f"--output-action {cfg.output_action.text!r} does not fit the outputs of the model under --group "
            f"{spec.text!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _mean(values: list[float], kept: list[bool]) -> float:
    chosen = [v for v, k in zip(values, kept) if k] or values
    return float(sum(chosen) / len(chosen))


def _equivariance(
    model: Any, group: Group, x: Tensor, action: OutputAction, elements: list | None, cfg: AuditConfig
) -> dict[str, Any]:
    r"""The equivariance error of ``model`` per element, in batches of ``cfg.batch_size``.

    The measurement of :func:`~torchinvariance.equivariance_error` and :func:`~torchinvariance.assert_equivariant`
    (the same function, with their default ``mask="auto"``): ``error`` per element is the maximum over samples of
    :math:`\max_c |g^{-1} \cdot f(g \cdot x_b) - f(x_b)|_c`, ``equivariance_error`` on all samples;
    ``error_mean_over_samples`` the mean over samples of the per-sample maximum. For a group that interpolates,
    ``floor`` is the maximum over samples of the floor that :func:`~torchinvariance.assert_equivariant` adds to its
    tolerance: the larger of the input's round trip :math:`f(g^{-1} (g x_b))` and the output's
    :math:`g^{-1} \cdot (g \cdot f(x_b))`, each against :math:`f(x_b)`.
    """
    els = resolve_elements(group, elements)
    rows, floors, scale = [], [], 0.0
    for xb in x.split(cfg.batch_size):
        deviation, batch_scale, _, _, floor = _measure(model, group, xb, els, None, True, action, "auto")
        rows.append(deviation.double())
        scale = max(scale, float(batch_scale))
        if floor is not None:
            floors.append(floor.double())
    kept = [cfg.include_identity or not group.same_element(g, group.identity) for g in els]

    def entry(per_sample: Tensor, reduce: str = "max") -> dict[str, Any]:
        per = (per_sample.amax(1) if reduce == "max" else per_sample.mean(1)).tolist()
        return {"mean": _mean(per, kept), "per_element": per}

    dev = torch.cat(rows, 1)
    result: dict[str, Any] = {
        "elements": [group.element_name(g) for g in els],
        "n_samples": int(x.shape[0]),
        "averaged": kept,
        "output_scale": scale,
        "error": entry(dev),
        "error_mean_over_samples": entry(dev, "mean"),
    }
    if not group.is_finite:
        result["element_values"] = [float(g) for g in els]
    if floors:
        result["floor"] = entry(torch.cat(floors, 1))
    return result


def _as_report(group: Group, eq: dict[str, Any]) -> InvarianceReport:
    """An equivariance result as an :class:`InvarianceReport` with one metric, ``equivariance``, for its plot."""
    res: dict[str, Any] = {"mean": eq["error"]["mean"], "per_element": eq["error"]["per_element"]}
    if "floor" in eq:
        res["floor"] = {"mean": eq["floor"]["mean"], "per_element": eq["floor"]["per_element"]}
    return InvarianceReport(
        group=repr(group),
        n_samples=eq["n_samples"],
        elements=eq["elements"],
        results={"equivariance": res},
        element_values=eq.get("element_values"),
        averaged=eq["averaged"],
    )


def _batches(x: Tensor, y: Tensor | None, size: int) -> list:
    if y is None:
        return list(x.split(size))
    return list(zip(x.split(size), y.split(size)))


# what evaluate_invariance and the metrics say when outputs or values are not finite (ValueError)
_NON_FINITE = re.compile(r"non-finite|NaN|\bInf\b|\binf\b")


def _evaluate(
    model: Any, group: Group, x: Tensor, y: Tensor | None, names: list[str], cfg: AuditConfig, elements: list | None
) -> tuple[InvarianceReport, dict[str, str]]:
    """The report of the metrics ``names``, and ``{metric: why}`` for those whose values are not finite.

    A metric whose value overflows (LI of logits near 1e200 in float64) or whose outputs are NaN/inf makes
    :func:`evaluate_invariance` raise for all of them; the audit then measures each metric alone, keeps those
    that are finite and reports the others as not finite with the message, instead of stopping without a report.
    """
    wanted = [m for m in names if m != "accuracy" or y is not None]

    def measure(metrics: list[str]) -> InvarianceReport:
        return evaluate_invariance(
            model,
            group,
            _batches(x, y, cfg.batch_size),
            metrics=metrics,
            device=x.device,
            progress=False,
            include_identity=cfg.include_identity,
            n_steps=cfg.si_steps,
            elements=elements,
        )

    try:
        return measure(wanted), {}
    except ValueError as exc:
        if not _NON_FINITE.search(str(exc)):
            raise
    report, failed = None, {}
    for name in wanted:
        try:
            one = measure([name])
        except ValueError as exc:
            if not _NON_FINITE.search(str(exc)):
                raise
            text = " ".join(str(exc).split())
            text = text if len(text) <= 400 else text[:400] + " ..."
            if name == "li" and "non-finite metric values" in text:  # finite logits, overflowing squares
                text = (
                    "LI squares differences of logits, which overflow float64 beyond about 1e154 (DI and top-1 "
                    f"consistency do not depend on the logits' scale); {text}"
                )
            failed[name] = text
            continue
        report = one if report is None else dataclasses.replace(report, results={**report.results, **one.results})
    if report is None:  # nothing finite: an empty report that still names the elements
        measured = resolve_elements(group, elements)
        report = InvarianceReport(
            group=repr(group),
            n_samples=int(x.shape[0]),
            elements=[group.element_name(g) for g in measured],
            include_identity=cfg.include_identity,
            element_values=None if group.is_finite else [float(g) for g in measured],
        )
    return report, failed


def _prediction_stats(model: Any, x: Tensor, batch_size: int) -> dict[str, Any]:
    r"""On the untransformed inputs: the majority top-1 class, its share, and the spread of the logits.

    The spread is the mean over pairs of different inputs of :math:`\tfrac12 \lVert f(x_b) - f(x_{b'}) \rVert^2`
    (LI's units), :math:`\sum_b \lVert f(x_b) - \bar f \rVert^2 / (N - 1)`; ``None`` for one input or
    non-finite logits. The verdict reads LI against it.
    """
    with torch.no_grad():
        f = torch.cat([model_output(model(xb), xb.shape[0]).double() for xb in x.split(batch_size)])
    if not bool(torch.isfinite(f).all()):
        return {"majority_class": None, "majority_share": None, "logit_spread": None}
    counts = torch.bincount(f.argmax(1), minlength=f.shape[1])
    n = f.shape[0]
    spread = float((f - f.mean(0)).pow(2).sum() / (n - 1)) if n > 1 else None
    return {
        "majority_class": int(counts.argmax()),
        "majority_share": float(counts.max()) / n,
        "logit_spread": spread if spread is not None and math.isfinite(spread) else None,
    }


def _legends_below(fig: Any) -> None:
    """Move each panel's legend below the panel, outside the data, so that it covers no bar."""
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        handles = getattr(legend, "legend_handles", None) or legend.legendHandles
        labels = [t.get_text() for t in legend.get_texts()]
        legend.remove()
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)


def _with_failures(report: InvarianceReport, failed: dict[str, str]) -> dict[str, Any]:
    """``report.to_dict()`` with ``{"mean": None, "per_element": [None, ...], "not_finite": why}`` per failed metric."""
    d = report.to_dict()
    for name, why in failed.items():
        d[name] = {"mean": None, "per_element": [None] * len(report.elements), "not_finite": why}
    return d


def _robustness(
    model: Any, group: Group, x: Tensor, y: Tensor | None, names: list[str], cfg: AuditConfig, elements: list | None
) -> tuple[InvarianceReport | None, str | None]:
    """The report of the robustness metrics ``names`` of the model on the data, or ``None`` and why not finite."""
    try:
        report = evaluate_invariance(
            model,
            group,
            _batches(x, y, cfg.batch_size),
            metrics=names,
            device=x.device,
            progress=False,
            include_identity=cfg.include_identity,
            elements=elements,
        )
    except (ValueError, torch.linalg.LinAlgError) as exc:
        if isinstance(exc, ValueError) and not _NON_FINITE.search(str(exc)):
            raise
        text = " ".join(str(exc).split())
        return None, text if len(text) <= 400 else text[:400] + " ..."
    spectrum = report.spectrum
    if spectrum is not None and not bool(torch.isfinite(spectrum.singular_values).all()):
        return None, "the Lie derivatives of the model's outputs are not finite (inf or NaN)"
    return report, None


def run_audit(cfg: AuditConfig, command: str | None = None) -> dict[str, Any]:
    """Measure every group of ``cfg`` and write ``report.json``, ``report.md`` and the figures to ``cfg.out``.

    Args:
        cfg: the configuration.
        command: the command line to record in the report.

    Returns:
        The content of ``report.json``.

    Raises:
        AuditError: bad inputs, with the fix in the message.
    """
    started = time.perf_counter()
    out = _prepare_out(Path(cfg.out))
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)  # a factory's random initialization (no checkpoint) is reproducible
    model = build_model(cfg).to(device)
    groups = []  # every group, its elements and its output action checked before measuring
    slugs: dict[str, str] = {}
    for spec in cfg.groups:
        if spec.slug in slugs:  # one figure file per group: the second would overwrite the first's
            same = spec.text == slugs[spec.slug]
            raise AuditError(
                f"--group {spec.text!r} is given twice"
                if same
                else f"--group {slugs[spec.slug]!r} and --group {spec.text!r} would write the same figures "
                f"({spec.slug}_elements.png); give each group once, its elements with fewer digits if they only "
                "differ beyond the 6th"
            )
        slugs[spec.slug] = spec.text
        group = _build_group(spec, cfg)
        chosen = _measured(spec, group, cfg.seed, cfg.include_identity)
        groups.append((spec, group, chosen, _build_action(cfg.output_action, spec, group)))
    n_classes = _probe(model, cfg, device)
    for spec, group, chosen, action in groups:
        if action is not None:
            _probe_action(model, spec, group, action, chosen, cfg, device)
    data: AuditData = load_data(cfg, n_classes)
    x = data.x.to(device)
    y = None if data.y is None else data.y.to(device)
    equivariant = not cfg.output_action.trivial
    robust = [] if equivariant else [m for m in cfg.metrics if m in ROBUSTNESS_METRICS]
    if "worst" in robust and y is None:
        raise AuditError(
            f"--metrics worst (worst-of-k accuracy) needs labelled data: mnist, fmnist or folder:PATH; {data.source} "
            "has no labels. Drop worst, or use flip (which compares the model's own predictions)"
        )
    noise = random_like(data.x, cfg.seed).to(device)
    _remove_stale_reports(out)  # every input is checked: from here on the folder holds no report until the new one
    figures: dict[str, bytes] = {}  # the PNGs, written with the report at the end
    names = [] if equivariant else ["accuracy", "consistency", *(m for m in cfg.metrics if m not in robust)]
    per_group = [m for m in robust if m != "discover"]  # the spectrum does not depend on the group: measured once
    si = "si" in names
    steps = len(groups) * (3 + int(si) + int(bool(per_group))) + int("discover" in robust)
    result: dict[str, Any] = {
        "torchinvariance_audit": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": cfg.to_dict(),
        "model": {
            "factory": cfg.model,
            "kwargs": cfg.model_kwargs,
            "checkpoint": None if cfg.checkpoint is None else str(cfg.checkpoint),
            "parameters": sum(p.numel() for p in model.parameters()),
            "classes": n_classes,
        },
        "data": {
            "source": data.source,
            "samples": int(x.shape[0]),
            "samples_requested": cfg.samples,
            "labels": y is not None,
            "skipped_labels_outside_the_model": data.skipped,
            "input_shape": list(cfg.input_shape),
            "normalize": data.normalized,  # what was applied: random inputs are drawn already in the model's space
            "normalize_requested": cfg.normalize,
            "statistics": describe_tensor(data.x),
        },
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "groups": [],
    }
    if equivariant:
        result["output_action"] = cfg.output_action.text
        result["group_averaged_reference"] = _AVERAGES_OUTPUTS
        result["skipped"] = {
            "metrics": ["accuracy", "consistency", *cfg.metrics],
            "why": "they need class logits (DI, SI, top-1 consistency, accuracy) or measure invariance f(g x) = f(x) "
            "(LI); with --output-action the audit measures the equivariance error instead",
        }
    with tqdm(total=steps, disable=not cfg.progress, desc="audit", unit="step") as bar:
        for spec, group, chosen, action in groups:
            over = _averaging_set(group, chosen)
            entry: dict[str, Any] = {"group": spec.text, "repr": repr(group), "figures": []}
            entry["elements"] = {
                "how": "every element" if chosen is None else "listed" if spec.elements_key != "samples" else "drawn",
                **({"seed": cfg.seed, "samples": spec.elements} if spec.elements_key == "samples" else {}),
                "exact": bool(group.exact),
                "group_averaged_over": "the whole group" if over is None else [group.element_name(g) for g in over],
            }
            title = _plural(x.shape[0], "sample")
            flip_fig = None
            if action is None:
                averaged = GroupAveraged(model, group, elements=over)
                bar.set_postfix_str(f"{spec.text}: model")
                reports, failed = {}, {}
                reports["model"], failed["model"] = _evaluate(model, group, x, y, names, cfg, chosen)
                bar.update()
                bar.set_postfix_str(f"{spec.text}: group-averaged model")
                reports["group_averaged"], failed["group_averaged"] = _evaluate(
                    averaged, group, x, y, names, cfg, chosen
                )
                bar.update()
                bar.set_postfix_str(f"{spec.text}: random inputs")
                reports["random_inputs"], failed["random_inputs"] = _evaluate(
                    model, group, noise, None, names, cfg, chosen
                )
                bar.update()
                entry.update({k: _with_failures(r, failed[k]) for k, r in reports.items()})
                entry["summary"] = _summary(reports, failed)
                if any(failed.values()):
                    entry["not_finite"] = {k: v for k, v in failed.items() if v}
                entry["predictions"] = {
                    "model": _prediction_stats(model, x, cfg.batch_size),
                    "group_averaged": _prediction_stats(averaged, x, cfg.batch_size),
                    "random_inputs": _prediction_stats(model, noise, cfg.batch_size),
                }
                entry["verdict"] = verdicts(entry)
                fig = None
                if reports["model"].results:  # nothing to draw when no metric of the model is finite
                    fig = reports["model"].plot(
                        references={REFERENCES[k]: reports[k] for k in REFERENCES},
                        title=f"{spec.text}: model vs group-averaged vs random inputs ({title})",
                    )
                if per_group:
                    bar.set_postfix_str(f"{spec.text}: {', '.join(per_group)}")
                    rob, why = _robustness(model, group, x, y, per_group, cfg, chosen)
                    bar.update()
                    if rob is None:
                        entry["robustness_not_finite"] = why
                    else:
                        d = rob.to_dict()
                        entry.update({k: d[k] for k in per_group})
                        if rob.flips is not None:  # listed after the per-element figure
                            flip_fig = rob.flips.plot(title=f"{spec.text}: smallest change of the prediction ({title})")
            else:
                bar.set_postfix_str(f"{spec.text}: model")
                eq = {"model": _equivariance(model, group, x, action, chosen, cfg)}
                bar.update()
                if _AVERAGES_OUTPUTS:
                    bar.set_postfix_str(f"{spec.text}: group-averaged model")
                    averaged = GroupAveraged(model, group, elements=over, output_action=action)  # type: ignore[call-arg]
                    eq["group_averaged"] = _equivariance(averaged, group, x, action, chosen, cfg)
                bar.update()
                bar.set_postfix_str(f"{spec.text}: random inputs")
                eq["random_inputs"] = _equivariance(model, group, noise, action, chosen, cfg)
                bar.update()
                entry["equivariance"] = eq
                entry["summary"] = {
                    key: {k: (eq[k][key]["mean"] if k in eq and key in eq[k] else None) for k in ("model", *REFERENCES)}
                    for key in ("error", "error_mean_over_samples", "floor")
                    if key in eq["model"]
                }
                entry["verdict"] = equivariance_verdict(entry)
                if not _AVERAGES_OUTPUTS:
                    entry["group_averaged_missing"] = (
                        "GroupAveraged has no output_action in this version of torchinvariance, and without it the "
                        "average would mix outputs that were never transformed back; only the random-input "
                        "reference is given"
                    )
                reports = {k: _as_report(group, v) for k, v in eq.items()}
                fig = reports["model"].plot(
                    metrics=["equivariance"],
                    references={REFERENCES[k]: reports[k] for k in REFERENCES if k in reports},
                    title=f"{spec.text}: equivariance error, model vs references ({title})",
                )
            name = f"{spec.slug}_elements.png"
            if fig is not None:
                _legends_below(fig)
                figures[name] = _png(fig)
                entry["figures"].append(name)
            if flip_fig is not None:
                figures[f"{spec.slug}_flips.png"] = _png(flip_fig)
                entry["figures"].append(f"{spec.slug}_flips.png")
            if si and "si" in failed["model"]:  # its integrated gradients are not finite either
                entry["figures_not_drawn"] = [f"{spec.slug}_saliency.png: SI of the model is not finite"]
                bar.update()
            elif si:
                bar.set_postfix_str(f"{spec.text}: saliency figure")
                k = min(4, x.shape[0])
                fig = saliency_orbit(
                    {"model": model, "group-averaged": averaged},
                    group,
                    x[:k],
                    elements=None if chosen is None else [group.identity, *chosen[:5]],
                    config=SaliencyConfig(n_steps=cfg.si_steps),
                    title=f"{spec.text}: realigned saliency maps over the orbit",
                )
                name = f"{spec.slug}_saliency.png"
                figures[name] = _png(fig)
                entry["figures"].append(name)
                bar.update()
            result["groups"].append(entry)
        if "discover" in robust:
            bar.set_postfix_str("symmetry spectrum")
            spec, group, chosen, _ = groups[0]  # the spectrum is the model's on the data, whatever the group
            rob, why = _robustness(model, group, x, y, ["discover"], cfg, chosen)
            bar.update()
            if rob is None or rob.spectrum is None:
                result["discover"] = {"not_finite": why}
            else:
                result["discover"] = rob.to_dict()["discover"]
                figures["symmetry_spectrum.png"] = _png(
                    rob.spectrum.plot(title=f"LieGG symmetry spectrum of the model ({_plural(x.shape[0], 'sample')})")
                )
                result["discover"]["figure"] = "symmetry_spectrum.png"
    result["seconds"] = round(time.perf_counter() - started, 3)
    _publish(out, figures, result)
    return result


def _summary(
    reports: dict[str, InvarianceReport], failed: dict[str, dict[str, str]]
) -> dict[str, dict[str, float | None]]:
    """``{metric: {"model", "group_averaged", "random_inputs"}}`` of the means (None where not measured or not
    finite: ``entry["not_finite"]`` says which).
    """
    out: dict[str, dict[str, float | None]] = {}
    for key, _, _ in _ROWS:
        if key not in reports["model"].results and key not in failed["model"]:
            continue
        out[key] = {k: (r.results[key]["mean"] if key in r.results else None) for k, r in reports.items()}
        if key not in reports["model"].results:
            continue
        if "floor" in reports["model"].results[key]:  # an interpolating group: the floor of each column
            out[f"{key}_floor"] = {
                k: (r.results[key]["floor"]["mean"] if "floor" in r.results.get(key, {}) else None)
                for k, r in reports.items()
            }
        if key == "consistency":
            out["consistency_orbit"] = {
                k: (r.results[key]["orbit"] if key in r.results else None) for k, r in reports.items()
            }
    return out


NOT_FINITE = "not finite"
_REF_NAMES = {"model": "model", "group_averaged": "group-averaged model", "random_inputs": "model on random inputs"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _every(n: int, word: str) -> str:
    """``the 1 measured element``, ``both measured elements``, ``all 3 measured elements``."""
    return f"the 1 {word}" if n == 1 else f"both {word}s" if n == 2 else f"all {n} {word}s"


def _unit(value: float, unit: str) -> str:
    """``unit`` after ``value``: "1 step", "2 steps", "1 degree" (a plural unit loses its s after exactly 1)."""
    return unit[:-1] if value == 1 and unit.endswith("s") else unit


def _share(stats: dict[str, Any]) -> str:
    """``0.97 (class 3)``: the share of the most frequent top-1 class on the untransformed inputs."""
    if stats.get("majority_share") is None:
        return NOT_FINITE
    return f"{stats['majority_share']:.2f} (class {stats['majority_class']})"


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def markdown(result: dict[str, Any]) -> str:
    """``report.md``: per group, the summary beside its two reference points, and the per-element values."""
    d, m = result["data"], result["model"]
    lines = [
        "# Invariance audit",
        "",
        f"- model: `{m['factory']}` with `{json.dumps(m['kwargs'])}`, checkpoint "
        f"{'`' + m['checkpoint'] + '`' if m['checkpoint'] else 'none (the factory weights)'}, "
        f"{m['parameters']:,} parameters, {m['classes']} classes",
        f"- data: {d['source']}, {_plural(d['samples'], 'sample')} of shape {tuple(d['input_shape'])}"
        + (
            f" (all there are: --samples asked for {d['samples_requested']:,})"
            if d.get("samples_requested", d["samples"]) > d["samples"]
            else ""
        )
        + f", {'with' if d['labels'] else 'without'} labels"
        + (
            f" ({_plural(d['skipped_labels_outside_the_model'], 'sample')} skipped: label not a class of the model)"
            if d["skipped_labels_outside_the_model"]
            else ""
        )
        + f", normalize {d['normalize']}"
        + (
            f" (--normalize {d['normalize_requested']} not applied: random inputs are drawn N(0, 1) directly)"
            if d.get("normalize_requested", d["normalize"]) != d["normalize"]
            else ""
        ),
        f"- device {result['environment']['device']}, torch {result['environment']['torch']}, "
        f"{result['seconds']:.1f} s, {result['created']}",
        "",
        _how_to_read(result),
    ]
    if "skipped" in result:
        lines += [
            "",
            f"Output action `{result['output_action']}`: the model is audited as an equivariant model. Not measured: "
            f"{', '.join(result['skipped']['metrics'])}; {result['skipped']['why']}."
            + (
                " The group-averaged reference is then `ti.GroupAveraged(model, group, output_action=...)`, each "
                "output brought back by g^-1 before the average (equivariant by construction for a finite group)."
                if result.get("group_averaged_reference")
                else ""
            ),
        ]
    for g in result["groups"]:
        lines += _equivariance_markdown(g) if "equivariance" in g else _invariance_markdown(g)
        lines += [f"![{name}]({name})" for name in g["figures"]]
    if "discover" in result:
        lines += _discover_markdown(result["discover"])
    return "\n".join(lines) + "\n"


_FLIP_UNITS = {"degrees": "degrees", "log-scale": "|ln factor|", "steps": "steps"}


def _robustness_markdown(g: dict[str, Any]) -> list[str]:
    """The worst-of-k accuracy and the smallest flips of the model on the data, for one group."""
    if "worst" not in g and "flip" not in g and "robustness_not_finite" not in g:
        return []
    lines = ["Worst case and smallest flip (the model on the data):", ""]
    if "robustness_not_finite" in g:
        return [*lines, f"- **not finite** (inf or NaN), so no value: {g['robustness_not_finite']}"]
    if "worst" in g:
        w = g["worst"]
        lines.append(
            f"- worst-of-k accuracy {_fmt(w['worst_case_accuracy'])} (clean {_fmt(w['accuracy'])}): the share of "
            f"samples classified correctly under {_every(len(w['per_element']), 'measured element')}"
        )
    if "flip" in g:
        f = g["flip"]
        unit = _FLIP_UNITS[f["unit"]]
        flipped = f["n_samples"] - f["never"]
        text = (
            f"- smallest flip, searched up to {f['max_magnitude']:g} {_unit(f['max_magnitude'], unit)} both ways: "
            f"{flipped} of "
            f"{_plural(f['n_samples'], 'sample')} change their prediction"
        )
        if f["median"] is not None:
            text += f", median {f['median']:.4g} {_unit(f['median'], unit)} (10%-90%: {f['q10']:.4g}-{f['q90']:.4g})"
        lines.append(text + f"; {f['never']} never")
    return lines


def _discover_markdown(d: dict[str, Any]) -> list[str]:
    lines = ["", "## Discovered symmetries (LieGG)", ""]
    if "not_finite" in d:
        return [*lines, f"**Not finite** (inf or NaN), so no spectrum: {d['not_finite']}", ""]
    lines += [
        "The model's rms Lie derivative along each of six affine generators (its symmetry variance; small: nearly "
        "invariant along it), most invariant first, with the nearest of rotation, scaling and translation and the "
        "distance to it (0: that generator exactly; at most 1.414). It does not depend on the groups above: it "
        "measures infinitesimal invariance, which a model invariant to a finite group need not have.",
        "",
        "| generator | symmetry variance | nearest | distance |",
        "|---|---:|---|---:|",
    ]
    for i, (value, (name, dist)) in enumerate(zip(d["singular_values"], d["nearest"])):
        lines.append(f"| s{i + 1} | {_fmt(value)} | {name} | {dist:.3f} |")
    return [*lines, "", f"![{d['figure']}]({d['figure']})", ""]


def _how_to_read(result: dict[str, Any]) -> str:
    """The paragraph that says how to read the tables and the verdicts, for the invariant or the equivariant case."""
    if "skipped" in result:  # an output action: the model is audited as an equivariant model
        return (
            "How to read it. **group-averaged**: `ti.GroupAveraged(model, group, output_action=...)`, each output "
            "brought back by g^-1 before the average, equivariant by construction for a finite group: its "
            "equivariance error is 0 up to rounding, the floor of the measurement. **random inputs**: the model on "
            "Gaussian noise with the data's per-channel mean and std, off the data distribution; an equivariant "
            "architecture is equivariant on both, a model that learned its equivariance from the data is not. The "
            "error is in the units of the outputs, which differ between data and noise: the verdict reads it "
            "relative to the largest output of the same inputs. "
            f"**Verdict**, with d = error / largest output: *as equivariant as the group-averaged model* when d is "
            f"within {TOLERANCE['di']:g} of its d (for a group that interpolates: *at the interpolation floor* when "
            f"the error is at most {CLEAR:g} times the floor); *more* / *less equivariant on data than on random "
            f"inputs* when one d is over {CLEAR:g} times the other, else *about as equivariant*. Means run over the "
            "non-identity group elements unless `--include-identity` was given."
        )
    return (
        "How to read it. **group-averaged**: the same model averaged over the orbit, "
        "`ti.GroupAveraged(model, group)`, invariant by construction: its DI and LI are 0 and its consistency and SI 1 "
        "up to rounding, the floor of the measurement; its accuracy is what exact invariance by averaging would give. "
        "**random inputs**: the model on Gaussian noise with the data's per-channel mean and std, off the data "
        "distribution. A model that is far more invariant on the data than on noise (DI, consistency, SI) learned its "
        "invariance from the data; an architecture that is invariant is invariant on both; one that is less "
        "invariant on the data than on noise changes its outputs most where the data are (it responds to the "
        "transformed structure of real images, which noise lacks), so its invariance on noise is no evidence. Top-1 "
        "consistency on noise says little when the model gives most noise one class: the table gives the share of "
        "the most frequent class. LI is in the squared units of the logits, which differ between data and noise: "
        "the verdict reads it relative to the spread of the logits between inputs. "
        f"**Verdict**, per metric, with d the distance from invariance (DI; 1 - consistency; 1 - SI; LI / spread): "
        f"*as invariant as the group-averaged model* when d is within {TOLERANCE['di']:g} (DI, LI), "
        f"{TOLERANCE['si']:g} (SI) or equal (consistency) of its d; *more* / *less invariant on data than on random "
        f"inputs* when one d is over {CLEAR:g} times the other, else *about as invariant*; consistency on noise is not "
        f"compared when {ONE_CLASS:.0%} or more of the noise gets one class. Means run over the non-identity group "
        "elements unless `--include-identity` was given; accuracy over all elements."
    )


def _elements_note(g: dict[str, Any], what: str) -> list[str]:
    """For a continuous group: which elements, and what the group-averaged reference averaged over."""
    e = g.get("elements", {})
    if e.get("how", "every element") == "every element":
        return []
    how = f"drawn with seed {e['seed']}" if e["how"] == "drawn" else "as listed"
    over = ", ".join(e["group_averaged_over"])
    return [
        f"Elements {how}. The group interpolates: the **floor** beside each value is the same {what} on the round "
        "trip g^-1 (g x), what resampling alone changes; read each value against its floor. The **group-averaged** "
        f"reference is averaged over the identity and the measured elements only ({over}): they do not form a "
        "group, so it is not "
        "exactly invariant, neither at these elements nor between them; it is a smoothed model, not the floor of "
        "the measurement.",
        "",
    ]


def _invariance_markdown(g: dict[str, Any]) -> list[str]:
    n_elements = len(g["model"]["elements"])
    lines = ["", f"## `{g['group']}`: {g['repr']}, {_plural(n_elements, 'element')}", ""]
    lines += _elements_note(g, "metric")
    lines += [f"<!-- summary {g['group']} -->", ""]
    bad = g.get("not_finite", {})

    def cell(key: str, ref: str) -> str:
        return NOT_FINITE if key in bad.get(ref, {}) else _fmt(g["summary"][key][ref])

    # the value of an invariant model is in the label: a column of it would be the same in every table
    lines += ["| metric | model | group-averaged | random inputs |", "|---|---:|---:|---:|"]
    for key, label, ideal in _ROWS:
        for k, lab in ((key, label + (f" (invariant: {ideal})" if ideal else "")), (f"{key}_floor", f"{label} floor")):
            if k in g["summary"]:
                lines.append(
                    f"| {lab} | {cell(k, 'model')} | {cell(k, 'group_averaged')} | {cell(k, 'random_inputs')} |"
                )
        if key == "consistency" and "consistency_orbit" in g["summary"]:
            s = g["summary"]["consistency_orbit"]
            lines.append(
                f"| same top-1 on the whole orbit (invariant: 1) | {_fmt(s['model'])} | {_fmt(s['group_averaged'])} | "
                f"{_fmt(s['random_inputs'])} |"
            )
        if key == "consistency" and "predictions" in g:
            p = g["predictions"]
            lines.append(
                "| share of the most frequent top-1 class | "
                + " | ".join(_share(p[ref]) for ref in ("model", "group_averaged", "random_inputs"))
                + " |"
            )
    if g.get("verdict"):
        lines += ["", "Verdict:", ""] + [f"- {line}" for line in g["verdict"].values()]
    for ref, metrics in bad.items():
        for key, why in metrics.items():
            label = dict((k, lab) for k, lab, _ in _ROWS)[key]
            lines += ["", f"**{label} of the {_REF_NAMES[ref]} is not finite** (inf or NaN), so it has no value: {why}"]
    lines += ["", f"<!-- end of summary {g['group']} -->"]
    robustness = _robustness_markdown(g)
    if robustness:
        lines += ["", *robustness]
    model = g["model"]
    columns = []  # (label, values)
    if "element_values" in model:
        columns.append(("angle" if g["repr"].startswith("SO2(") else "value", model["element_values"]))
    for k, label, _ in _ROWS:
        if k in model:
            values = model[k]["per_element"]
            columns.append((label, [NOT_FINITE] * len(values) if "not_finite" in model[k] else values))
            if "floor" in model[k]:
                columns.append((f"{label} floor", model[k]["floor"]["per_element"]))
    lines += ["", "Per group element (the model):", ""]
    lines += ["| element | " + " | ".join(label for label, _ in columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    lines += _element_rows(model["elements"], columns, "element_values" in model)
    lines += ["", f"<!-- end of per-element {g['group']} -->", ""]
    return lines


def _element_rows(elements: list[str], columns: list, with_value: bool) -> list[str]:
    """One table row per element; the first column holds the element's value (angle, factor) when given."""
    rows = []
    for i, element in enumerate(elements):
        cells = [
            f"{v[i]:g}" if with_value and j == 0 else v[i] if isinstance(v[i], str) else _fmt(v[i])
            for j, (_, v) in enumerate(columns)
        ]
        rows.append(f"| {element} | " + " | ".join(cells) + " |")
    return rows


_EQ_ROWS = [  # (key, label)
    ("error", "equivariance error, max over samples"),
    ("error_mean_over_samples", "equivariance error, mean over samples"),
    ("floor", "interpolation floor, max over samples"),
]


def _equivariance_markdown(g: dict[str, Any]) -> list[str]:
    eq = g["equivariance"]
    model = eq["model"]
    lines = ["", f"## `{g['group']}`: {g['repr']}, {_plural(len(model['elements']), 'element')}", ""]
    lines += _elements_note(g, "error")
    lines += [
        "The equivariance error of an element g is max |g^-1 · f(g x) - f(x)| over the outputs "
        "(`ti.equivariance_error`, with its default mask: for `same` on so2 the outputs are compared on the "
        "inscribed disk, whose outside g^-1 zeroes), 0 for an equivariant model; the largest output |f(x)| of the "
        f"model on the data is {_fmt(model['output_scale'])}. For a group that interpolates, the floor is that "
        "`ti.assert_equivariant` adds to its tolerance: the larger response to the round trip of the input, "
        "f(g^-1 (g x)), and of the output, g^-1 · (g · f(x)).",
        "",
    ]
    if "group_averaged_missing" in g:
        lines += [f"No group-averaged reference: {g['group_averaged_missing']}.", ""]
    lines += [f"<!-- summary {g['group']} -->", ""]
    # the value of an equivariant model is in the label: a column of it would be the same in every table
    lines += ["| measure | model | group-averaged | random inputs |", "|---|---:|---:|---:|"]
    for key, label in _EQ_ROWS:
        if key in g["summary"]:
            s = g["summary"][key]
            ideal = " (equivariant: 0)" if key.startswith("error") else ""
            lines.append(
                f"| {label}{ideal} | {_fmt(s['model'])} | {_fmt(s['group_averaged'])} | {_fmt(s['random_inputs'])} |"
            )
    if g.get("verdict"):
        lines += ["", "Verdict:", ""] + [f"- {line}" for line in g["verdict"].values()]
    lines += ["", f"<!-- end of summary {g['group']} -->"]
    columns = []
    if "element_values" in model:
        columns.append(("angle" if g["repr"].startswith("SO2(") else "value", model["element_values"]))
    for key, label in _EQ_ROWS:
        for ref, name in (("model", "model"), *REFERENCES.items()):
            if ref in eq and key in eq[ref] and (key.startswith("error") or ref == "model"):
                columns.append((f"{name}: {label}", eq[ref][key]["per_element"]))
    lines += ["", "Per group element:", ""]
    lines += ["| element | " + " | ".join(label for label, _ in columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    lines += _element_rows(model["elements"], columns, "element_values" in model)
    lines += ["", f"<!-- end of per-element {g['group']} -->", ""]
    return lines
