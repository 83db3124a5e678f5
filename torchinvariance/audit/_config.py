"""The audit's run configuration: parsed once from the command line into a frozen dataclass."""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AuditConfig", "AuditError", "GroupSpec", "build_parser", "parse_args"]

METRICS = ("di", "li", "si")
DATA_CHOICES = "mnist | fmnist | folder:PATH | random"


class AuditError(Exception):
    """A problem with the audit's inputs; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class GroupSpec:
    """A group named on the command line: ``NAME[:k=v,...]`` (values are Python literals, else strings)."""

    text: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """Parse ``rotation:order=4`` or ``translation:order=3,axis=x``."""
        name, _, rest = text.partition(":")
        if not name.strip():
            raise AuditError(f"--group {text!r}: expected NAME[:k=v,...], e.g. rotation:order=4")
        params: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise AuditError(f"--group {text!r}: parameter {item!r} is not k=v (e.g. rotation:order=4)")
            try:
                params[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                params[key.strip()] = value.strip()
        return cls(text=text, name=name.strip(), params=params)

    @property
    def slug(self) -> str:
        """The group as a file-name-safe string, e.g. ``rotation-order4``."""
        parts = [self.name, *(f"{k}{v}" for k, v in self.params.items())]
        return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in str(p)) for p in parts)


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit needs, validated (see ``python -m torchinvariance audit --help``).

    Attributes:
        model: ``MODULE:FACTORY``, e.g. ``torchvision.models:resnet18``.
        model_kwargs: keyword arguments of the factory.
        checkpoint: a ``state_dict`` file (loaded with ``weights_only=True``), or ``None`` for the factory's weights.
        groups: the groups to measure.
        data: ``mnist``, ``fmnist``, ``folder:PATH`` or ``random``.
        input_shape: ``(C, H, W)`` of one input.
        samples: number of samples.
        metrics: a selection of ``("di", "li", "si")``; accuracy (with labels) and top-1 consistency always.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        out: the output folder.
        data_root: where ``mnist``/``fmnist`` are read from (torchvision's layout).
        normalize: ``none``, ``standardize`` or per-channel ``MEAN,...:STD,...``.
        batch_size: samples per forward of the orbit.
        si_steps: integration steps of SI's integrated gradients.
        include_identity: the element averaging of the means.
        seed: the seed of the random inputs.
        progress: show progress bars.
    """

    model: str
    groups: tuple[GroupSpec, ...]
    input_shape: tuple[int, int, int]
    samples: int
    out: Path
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    data: str = "random"
    metrics: tuple[str, ...] = ("di", "li")
    device: str = "auto"
    data_root: Path | None = None
    normalize: str = "none"
    batch_size: int = 64
    si_steps: int = 50
    include_identity: bool = False
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the configuration."""
        d = asdict(self)
        d["groups"] = [g.text for g in self.groups]
        for key in ("out", "checkpoint", "data_root"):
            d[key] = None if d[key] is None else str(d[key])
        d["input_shape"] = list(self.input_shape)
        d["metrics"] = list(self.metrics)
        return d


def build_parser() -> argparse.ArgumentParser:
    """The ``audit`` command line."""
    p = argparse.ArgumentParser(
        prog="python -m torchinvariance audit",
        description=(
            "Measure how invariant a trained classifier is: per group element and overall, accuracy (where the data "
            "have labels), top-1 consistency across the orbit, DI, LI and (with --metrics ...,si) SI, each beside two "
            "reference points: the group-averaged model (exactly invariant) and random inputs of the same "
            "statistics. Writes report.json, report.md and PNG figures to --out. Nothing is downloaded."
        ),
    )
    p.add_argument("--model", required=True, help="MODULE:FACTORY building the model, e.g. torchvision.models:resnet18")
    p.add_argument(
        "--model-kwargs", default="{}", help="JSON keyword arguments of the factory, e.g. '{\"num_classes\": 10}'"
    )
    p.add_argument("--checkpoint", type=Path, help="a state_dict saved with torch.save(model.state_dict(), PATH)")
    p.add_argument(
        "--group", action="append", required=True, help="NAME[:k=v,...], e.g. rotation:order=4 (repeat for several)"
    )
    p.add_argument("--data", default="random", help=f"{DATA_CHOICES} (default random; no labels)")
    p.add_argument(
        "--data-root", type=Path, help="folder with MNIST/raw, FashionMNIST/raw (default $TORCHINVARIANCE_DATA)"
    )
    p.add_argument("--input-shape", required=True, help="C,H,W of one input, e.g. 3,32,32")
    p.add_argument("--samples", type=int, required=True, help="number of samples to measure")
    p.add_argument("--metrics", default="di,li", help="a selection of di,li,si (default di,li; SI costs ~200x)")
    p.add_argument("--normalize", default="none", help="none | standardize | MEAN,...:STD,... (per channel)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per forward of the orbit (default 64)")
    p.add_argument("--si-steps", type=int, default=50, help="integration steps of SI (default 50, the paper's)")
    p.add_argument("--include-identity", action="store_true", help="average the metrics over all group elements")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    return p


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise AuditError(f"{name} must be a positive integer, got {value}")
    return value


def parse_normalize(spec: str, channels: int) -> tuple[list[float], list[float]] | None:
    """``--normalize``: ``None`` for ``none``/``standardize``, else the per-channel ``(means, stds)``.

    Every value must be a finite number and every STD positive (``nan:1`` or ``0:inf`` would turn the inputs into
    NaN or zeros); 1 value each (for all channels) or ``channels`` values each.
    """
    if spec in ("none", "standardize"):
        return None
    mean, sep, std = spec.partition(":")
    try:
        means, stds = [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
    except ValueError:
        sep = ""
    if (
        not sep
        or len(means) not in (1, channels)
        or len(stds) != len(means)
        or not all(math.isfinite(v) for v in (*means, *stds))
        or min(stds) <= 0
    ):
        raise AuditError(
            f"--normalize {spec!r}: expected none, standardize, or MEAN,...:STD,... with 1 or {channels} values "
            "each, all finite, and positive STD (e.g. 0.1307:0.3081)"
        )
    return means, stds


def parse_args(argv: Sequence[str] | None = None) -> AuditConfig:
    """Parse and validate the command line (argparse errors exit with status 2, like every argparse program)."""
    args = build_parser().parse_args(argv)
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise AuditError(
            f"--model-kwargs is not valid JSON ({exc}); e.g. --model-kwargs '{{\"num_classes\": 10}}'"
        ) from exc
    if not isinstance(kwargs, dict):
        raise AuditError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise AuditError(
            f"--input-shape must be C,H,W with three positive integers, e.g. 3,32,32; got {args.input_shape!r}"
        )
    metrics = tuple(m.strip().lower() for m in args.metrics.split(",") if m.strip())
    if not metrics or any(m not in METRICS for m in metrics) or len(set(metrics)) != len(metrics):
        raise AuditError(f"--metrics must be a selection of {','.join(METRICS)} without repeats; got {args.metrics!r}")
    parse_normalize(args.normalize, shape[0])
    data = args.data
    if data not in ("mnist", "fmnist", "random") and not data.startswith("folder:"):
        raise AuditError(f"--data must be {DATA_CHOICES}; got {data!r}")
    root = args.data_root
    if root is None and os.environ.get("TORCHINVARIANCE_DATA"):
        root = Path(os.environ["TORCHINVARIANCE_DATA"]).expanduser()
    return AuditConfig(
        model=args.model,
        model_kwargs=kwargs,
        checkpoint=args.checkpoint,
        groups=tuple(GroupSpec.parse(g) for g in args.group),
        data=data,
        data_root=root,
        input_shape=shape,  # type: ignore[arg-type]
        samples=_positive("--samples", args.samples),
        metrics=metrics,
        normalize=args.normalize,
        device=args.device,
        batch_size=_positive("--batch-size", args.batch_size),
        si_steps=_positive("--si-steps", args.si_steps),
        include_identity=bool(args.include_identity),
        seed=args.seed,
        progress=not args.no_progress,
        out=args.out,
    )
