"""Run an audit: measure every group on the model and its two reference points, write JSON, Markdown and figures."""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from torchinvariance.audit._config import AuditConfig, AuditError, GroupSpec
from torchinvariance.audit._inputs import AuditData, build_model, describe_tensor, load_data, pick_device, random_like
from torchinvariance.groups import Group
from torchinvariance.metrics import InvarianceReport, SaliencyConfig, evaluate_invariance
from torchinvariance.models import GroupAveraged
from torchinvariance.orbit import model_output
from torchinvariance.plot import saliency_orbit
from torchinvariance.registry import get_group, list_groups

__all__ = ["run_audit"]

REFERENCES = {"group_averaged": "group-averaged", "random_inputs": "random inputs"}
_ROWS = [  # (key in the report, label, the value of an invariant model)
    ("accuracy", "accuracy", None),
    ("consistency", "top-1 consistency", "1"),
    ("di", "DI", "0"),
    ("li", "LI", "0"),
    ("si", "SI", "1"),
]


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise AuditError(f"--out {out} is not a writable folder ({exc}); choose a folder you can write to") from exc
    return out


def _build_group(spec: GroupSpec, cfg: AuditConfig) -> Group:
    try:
        group = get_group(spec.name, **spec.params)
    except KeyError as exc:
        raise AuditError(f"--group {spec.text!r}: unknown group {spec.name!r}; available: {list_groups()}") from exc
    except (TypeError, ValueError) as exc:
        raise AuditError(f"--group {spec.text!r}: {exc}") from exc
    if not group.is_finite:
        raise AuditError(
            f"--group {spec.text!r}: {group!r} is continuous; the audit measures every element of a finite group "
            "(e.g. rotation:order=4)"
        )
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
    return group


def _probe(model: nn.Module, cfg: AuditConfig, device: torch.device) -> int:
    """Run one input through the model: it must return logits ``(1, classes)``; returns the number of classes."""
    c, h, w = cfg.input_shape
    try:
        with torch.no_grad():
            out = model_output(model(torch.zeros(1, c, h, w, device=device)), 1)
    except Exception as exc:
        raise AuditError(
            f"the model failed on one input of shape (1, {c}, {h}, {w}): {type(exc).__name__}: {exc}. Check "
            "--input-shape (and --model-kwargs)"
        ) from exc
    if out.dim() != 2:
        raise AuditError(f"the model returns {tuple(out.shape)} for one input; the audit needs logits (1, classes)")
    return int(out.shape[1])


def _batches(x: Tensor, y: Tensor | None, size: int) -> list:
    if y is None:
        return list(x.split(size))
    return list(zip(x.split(size), y.split(size)))


def _evaluate(
    model: Any, group: Group, x: Tensor, y: Tensor | None, names: list[str], cfg: AuditConfig
) -> InvarianceReport:
    wanted = [m for m in names if m != "accuracy" or y is not None]
    return evaluate_invariance(
        model,
        group,
        _batches(x, y, cfg.batch_size),
        metrics=wanted,
        device=x.device,
        progress=False,
        include_identity=cfg.include_identity,
        n_steps=cfg.si_steps,
    )


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
    groups = [(spec, _build_group(spec, cfg)) for spec in cfg.groups]  # every group checked before measuring
    n_classes = _probe(model, cfg, device)
    data: AuditData = load_data(cfg, n_classes)
    x = data.x.to(device)
    y = None if data.y is None else data.y.to(device)
    noise = random_like(data.x, cfg.seed).to(device)
    names = ["accuracy", "consistency", *cfg.metrics]
    si = "si" in cfg.metrics
    steps = len(groups) * (3 + int(si))
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
    with tqdm(total=steps, disable=not cfg.progress, desc="audit", unit="step") as bar:
        for spec, group in groups:
            averaged = GroupAveraged(model, group)
            entry: dict[str, Any] = {"group": spec.text, "repr": repr(group), "figures": []}
            bar.set_postfix_str(f"{spec.text}: model")
            reports = {"model": _evaluate(model, group, x, y, names, cfg)}
            bar.update()
            bar.set_postfix_str(f"{spec.text}: group-averaged model")
            reports["group_averaged"] = _evaluate(averaged, group, x, y, names, cfg)
            bar.update()
            bar.set_postfix_str(f"{spec.text}: random inputs")
            reports["random_inputs"] = _evaluate(model, group, noise, None, names, cfg)
            bar.update()
            entry.update({k: r.to_dict() for k, r in reports.items()})
            entry["summary"] = _summary(reports)
            fig = reports["model"].plot(
                references={REFERENCES[k]: reports[k] for k in REFERENCES},
                title=f"{spec.text}: model vs group-averaged vs random inputs ({x.shape[0]} samples)",
            )
            name = f"{spec.slug}_elements.png"
            fig.savefig(out / name, dpi=110)
            entry["figures"].append(name)
            if si:
                bar.set_postfix_str(f"{spec.text}: saliency figure")
                k = min(4, x.shape[0])
                fig = saliency_orbit(
                    {"model": model, "group-averaged": averaged},
                    group,
                    x[:k],
                    config=SaliencyConfig(n_steps=cfg.si_steps),
                    title=f"{spec.text}: realigned saliency maps over the orbit",
                )
                name = f"{spec.slug}_saliency.png"
                fig.savefig(out / name, dpi=110)
                entry["figures"].append(name)
                bar.update()
            result["groups"].append(entry)
    result["seconds"] = round(time.perf_counter() - started, 3)
    (out / "report.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown(result))
    return result


def _summary(reports: dict[str, InvarianceReport]) -> dict[str, dict[str, float | None]]:
    """``{metric: {"model", "group_averaged", "random_inputs"}}`` of the means (None where not measured)."""
    out: dict[str, dict[str, float | None]] = {}
    for key, _, _ in _ROWS:
        if key not in reports["model"].results:
            continue
        out[key] = {k: (r.results[key]["mean"] if key in r.results else None) for k, r in reports.items()}
        if key == "consistency":
            out["consistency_orbit"] = {k: r.results[key]["orbit"] for k, r in reports.items()}
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def markdown(result: dict[str, Any]) -> str:
    """``report.md``: per group, the summary beside its two reference points, and the per-element values."""
    d, m = result["data"], result["model"]
    n_elements = None
    lines = [
        "# Invariance audit",
        "",
        f"- model: `{m['factory']}` with `{json.dumps(m['kwargs'])}`, checkpoint "
        f"{'`' + m['checkpoint'] + '`' if m['checkpoint'] else 'none (the factory weights)'}, "
        f"{m['parameters']:,} parameters, {m['classes']} classes",
        f"- data: {d['source']}, {d['samples']} samples of shape {tuple(d['input_shape'])}, "
        f"{'with' if d['labels'] else 'without'} labels"
        + (
            f" ({d['skipped_labels_outside_the_model']} samples skipped: label not a class of the model)"
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
        "How to read it. **group-averaged**: the same model averaged over the orbit, "
        "`ti.GroupAveraged(model, group)`, invariant by construction: its DI and LI are 0 and its consistency and SI 1 "
        "up to rounding, the floor of the measurement; its accuracy is what exact invariance by averaging would give. "
        "**random inputs**: the model on Gaussian noise with the data's per-channel mean and std, off the data "
        "distribution. A model that is far more invariant on the data than on noise (DI, consistency, SI) learned its "
        "invariance from the data; an architecture that is invariant is invariant on both. LI is in the squared units "
        "of the logits, which differ between data and noise: compare LI within a column. Means run over the "
        "non-identity group elements unless `--include-identity` was given; accuracy over all elements.",
    ]
    for g in result["groups"]:
        n_elements = len(g["model"]["elements"])
        lines += ["", f"## `{g['group']}`: {g['repr']}, {n_elements} elements", ""]
        lines += [f"<!-- summary {g['group']} -->", ""]
        lines += ["| metric | model | group-averaged | random inputs | invariant model |", "|---|---:|---:|---:|---:|"]
        for key, label, ideal in _ROWS:
            if key in g["summary"]:
                s = g["summary"][key]
                lines.append(
                    f"| {label} | {_fmt(s['model'])} | {_fmt(s['group_averaged'])} | {_fmt(s['random_inputs'])} | "
                    f"{ideal or '–'} |"
                )
            if key == "consistency" and "consistency_orbit" in g["summary"]:
                s = g["summary"]["consistency_orbit"]
                lines.append(
                    f"| same top-1 on the whole orbit | {_fmt(s['model'])} | {_fmt(s['group_averaged'])} | "
                    f"{_fmt(s['random_inputs'])} | 1 |"
                )
        lines += ["", f"<!-- end of summary {g['group']} -->"]
        present = [(k, label) for k, label, _ in _ROWS if k in g["model"]]
        lines += ["", "Per group element (the model):", ""]
        lines += [
            "| element | " + " | ".join(label for _, label in present) + " |",
            "|---" + "|---:" * len(present) + "|",
        ]
        for i, element in enumerate(g["model"]["elements"]):
            lines.append(
                f"| {element} | " + " | ".join(_fmt(g["model"][k]["per_element"][i]) for k, _ in present) + " |"
            )
        lines += ["", f"<!-- end of per-element {g['group']} -->", ""]
        lines += [f"![{name}]({name})" for name in g["figures"]]
    return "\n".join(lines) + "\n"
