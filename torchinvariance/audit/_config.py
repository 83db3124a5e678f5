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

__all__ = ["ActionSpec", "AuditConfig", "AuditError", "GroupSpec", "build_parser", "parse_args"]

METRICS = ("di", "li", "si", "worst", "flip", "discover")
#: measured on the model and the data only (no reference points): worst-of-k accuracy, smallest flip, LieGG spectrum
ROBUSTNESS_METRICS = ("worst", "flip", "discover")
DATA_CHOICES = "mnist | fmnist | folder:PATH | random"


class AuditError(Exception):
    """A problem with the audit's inputs; the message says what is wrong and how to fix it."""


ELEMENT_KEYS = ("angles", "factors", "elements")  # the elements of a continuous group, listed
SAMPLES_KEY = "samples"  # or drawn: k of them, with --seed


@dataclass(frozen=True)
class GroupSpec:
    """A group named on the command line: ``NAME[:k=v,...]`` (values are Python literals, else strings).

    The group's own parameters go to :func:`~torchinvariance.get_group`. Three keys choose the elements of a
    continuous group instead: ``angles=0,30,45,90`` (``so2``, degrees), ``factors=0.8,1.25`` (``scale``) or
    ``elements=...`` (any continuous group) list them: the values after ``=`` up to the next ``k=v`` are the
    list; ``samples=8`` draws 8 with ``--seed``. ``elements`` holds the list (a tuple of floats) or the count.
    """

    text: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    elements: tuple[float, ...] | int | None = None
    elements_key: str | None = None

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """Parse ``rotation:order=4``, ``translation:order=3,axis=x``, ``so2:angles=0,30,45`` or ``so2:samples=8``."""
        name, _, rest = text.partition(":")
        if not name.strip():
            raise AuditError(f"--group {text!r}: expected NAME[:k=v,...], e.g. rotation:order=4 or so2:samples=8")
        params: dict[str, Any] = {}
        listed: dict[str, list[str]] = {}
        current: str | None = None  # the element key whose list the bare values continue
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                if current is None:
                    raise AuditError(
                        f"--group {text!r}: parameter {item!r} is not k=v (e.g. rotation:order=4); only the lists "
                        f"{', '.join(k + '=' for k in ELEMENT_KEYS)} take several values (so2:angles=0,30,45,90)"
                    )
                listed[current].append(item)
                continue
            if not key:
                raise AuditError(f"--group {text!r}: parameter {item!r} is not k=v (e.g. rotation:order=4)")
            if key in params or key in listed:
                raise AuditError(f"--group {text!r}: parameter {key!r} is given twice")
            current = None
            if key in ELEMENT_KEYS:
                listed[key] = [value.strip()]
                current = key
                continue
            try:
                params[key] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                params[key] = value.strip()
        chosen = [k for k in (*ELEMENT_KEYS, SAMPLES_KEY) if k in listed or (k == SAMPLES_KEY and k in params)]
        if len(chosen) > 1:
            raise AuditError(
                f"--group {text!r}: give the elements one way, {' or '.join(k + '=' for k in chosen)}, not both"
            )
        elements: tuple[float, ...] | int | None = None
        key = chosen[0] if chosen else None
        if key == SAMPLES_KEY:
            k = params.pop(SAMPLES_KEY)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise AuditError(
                    f"--group {text!r}: samples= must be a positive integer (e.g. so2:samples=8); got {k!r}"
                )
            elements = k
        elif key is not None:
            values = []
            for v in listed[key]:
                try:
                    number = float(v)
                except ValueError:
                    number = math.nan
                if not v or not math.isfinite(number):
                    raise AuditError(
                        f"--group {text!r}: {key}= must list finite numbers separated by commas (e.g. "
                        f"so2:angles=0,30,45,90 or scale:factors=0.8,1.25); got {v!r}"
                    )
                values.append(number)
            elements = tuple(values)
        return cls(text=text, name=name.strip(), params=params, elements=elements, elements_key=key)

    @property
    def slug(self) -> str:
        """The group as a file-name-safe string, e.g. ``rotation-order4`` or ``so2-angles0_30_45``."""
        parts = [self.name, *(f"{k}{v}" for k, v in self.params.items())]
        if isinstance(self.elements, tuple):
            parts.append(f"{self.elements_key}" + "_".join(f"{v:g}" for v in self.elements))
        elif self.elements is not None:
            parts.append(f"samples{self.elements}")
        return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in str(p)) for p in parts)


@dataclass(frozen=True)
class ActionSpec:
    """``--output-action``: how a group element acts on the model's output (:mod:`torchinvariance.actions`).

    - ``trivial``: ``g · y = y``, an invariant classifier (the default);
    - ``same``: the output transforms like the input (segmentation masks, feature maps ``(B, C, H, W)``);
    - ``perm:ELEMENT=I,J,...;ELEMENT=...``: element ``ELEMENT`` (its name, e.g. ``rot90``, or its index in
      ``group.elements()``) permutes the output channels (dim 1; ``perm:dim=2;...`` for another dim): output
      position ``i`` takes the value of position ``I_i``. Every element but the identity needs one; finite groups
      only;
    - ``MODULE:CALLABLE``: a function ``(g, y) -> g · y`` (or ``rho(g) -> (d, d)`` matrix for vector outputs
      ``(B, d)``) imported from an importable module.

    Attributes:
        text: the option as given.
        kind: ``"trivial"``, ``"same"``, ``"perm"`` or ``"callable"``.
        perms: for ``perm``, ``((element, permutation), ...)`` as given (elements as strings).
        dim: for ``perm``, the output dim permuted.
        target: for ``callable``, ``MODULE:CALLABLE``.
    """

    text: str = "trivial"
    kind: str = "trivial"
    perms: tuple[tuple[str, tuple[int, ...]], ...] = ()
    dim: int = 1
    target: str | None = None

    @property
    def trivial(self) -> bool:
        """Whether the output is left unchanged (invariance)."""
        return self.kind == "trivial"

    @classmethod
    def parse(cls, text: str) -> ActionSpec:
        """Parse ``trivial``, ``same``, ``perm:rot90=1,2,3,0;...`` or ``MODULE:CALLABLE``."""
        expected = (
            "expected trivial, same, perm:ELEMENT=I,J,...;ELEMENT=... (e.g. 'perm:flipx=1,0') or MODULE:CALLABLE "
            "(a function (g, y) -> g·y)"
        )
        spec = text.strip()
        if spec in ("trivial", "same"):
            return cls(text=text, kind=spec)
        head, sep, rest = spec.partition(":")
        if not sep or not head.strip() or not rest.strip():
            raise AuditError(f"--output-action {text!r}: {expected}")
        if head.strip() != "perm":
            return cls(text=text, kind="callable", target=f"{head.strip()}:{rest.strip()}")
        perms: list[tuple[str, tuple[int, ...]]] = []
        dim = 1
        for item in filter(None, (p.strip() for p in rest.split(";"))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if key == "dim" and eq:
                try:
                    dim = int(value)
                except ValueError:
                    dim = 0
                if dim < 1:
                    raise AuditError(
                        f"--output-action {text!r}: dim= must be an output dim after the batch dim (>= 1); "
                        f"got {value.strip()!r}"
                    )
                continue
            try:
                perm = tuple(int(v) for v in value.split(","))
            except ValueError:
                perm = ()
            if not eq or not key or not perm or sorted(perm) != list(range(len(perm))):
                raise AuditError(
                    f"--output-action {text!r}: {item!r} is not ELEMENT=I,J,... with a permutation of 0..n-1 "
                    "(e.g. perm:flipx=1,0 or 'perm:rot90=1,2,3,0;rot180=2,3,0,1;rot270=3,0,1,2')"
                )
            if key in (k for k, _ in perms):
                raise AuditError(f"--output-action {text!r}: element {key!r} is given twice")
            perms.append((key, perm))
        if not perms:
            raise AuditError(f"--output-action {text!r}: no permutation given; {expected}")
        if len({len(p) for _, p in perms}) != 1:
            raise AuditError(
                f"--output-action {text!r}: the permutations have different lengths "
                f"{sorted({len(p) for _, p in perms})}; every one permutes the same output dim"
            )
        return cls(text=text, kind="perm", perms=tuple(perms), dim=dim)


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
        metrics: a selection of ``("di", "li", "si", "worst", "flip", "discover")``; accuracy (with labels) and
            top-1 consistency always.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        out: the output folder.
        data_root: where ``mnist``/``fmnist`` are read from (torchvision's layout).
        normalize: ``none``, ``standardize`` or per-channel ``MEAN,...:STD,...``.
        batch_size: samples per forward of the orbit.
        si_steps: integration steps of SI's integrated gradients.
        include_identity: the element averaging of the means.
        seed: the seed of the random inputs and of the elements drawn with ``samples=``.
        progress: show progress bars.
        output_action: how the group acts on the outputs (``trivial``: an invariant classifier).
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
    output_action: ActionSpec = field(default_factory=ActionSpec)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the configuration."""
        d = asdict(self)
        d["groups"] = [g.text for g in self.groups]
        for key in ("out", "checkpoint", "data_root"):
            d[key] = None if d[key] is None else str(d[key])
        d["input_shape"] = list(self.input_shape)
        d["metrics"] = list(self.metrics)
        d["output_action"] = self.output_action.text
        return d


def build_parser() -> argparse.ArgumentParser:
    """The ``audit`` command line."""
    p = argparse.ArgumentParser(
        prog="python -m torchinvariance audit",
        description=(
            "Measure how invariant a trained classifier is: per group element and overall, accuracy (where the data "
            "have labels), top-1 consistency across the orbit, DI, LI and (with --metrics ...,si) SI, each beside two "
            "reference points: the group-averaged model (exactly invariant) and random inputs of the same "
            "statistics. Writes report.json, report.md and PNG figures to --out. Nothing is downloaded. With "
            "--output-action, an equivariant model (e.g. a segmentation net) instead: its equivariance error per "
            "element beside the same two reference points."
        ),
        epilog=GROUP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="MODULE:FACTORY building the model, e.g. torchvision.models:resnet18")
    p.add_argument(
        "--model-kwargs", default="{}", help="JSON keyword arguments of the factory, e.g. '{\"num_classes\": 10}'"
    )
    p.add_argument("--checkpoint", type=Path, help="a state_dict saved with torch.save(model.state_dict(), PATH)")
    p.add_argument(
        "--group",
        action="append",
        required=True,
        help="NAME[:k=v,...]: rotation:order=4, flip:axis=x, so2:angles=0,30,45,90, so2:samples=8, "
        "scale:min_scale=0.8,factors=0.8,1.25 (repeat for several; see 'groups' below)",
    )
    p.add_argument(
        "--output-action",
        default="trivial",
        help="how an element acts on the output: trivial (default: an invariant classifier) | same (outputs "
        "transform like the input: masks, feature maps) | 'perm:ELEMENT=I,J,...;...' (finite groups; e.g. "
        "perm:flipx=1,0) | MODULE:CALLABLE (a function (g, y) -> g·y). Not trivial: the equivariance error is "
        "reported; accuracy, top-1 consistency, DI, LI and SI are skipped",
    )
    p.add_argument("--data", default="random", help=f"{DATA_CHOICES} (default random; no labels)")
    p.add_argument(
        "--data-root", type=Path, help="folder with MNIST/raw, FashionMNIST/raw (default $TORCHINVARIANCE_DATA)"
    )
    p.add_argument("--input-shape", required=True, help="C,H,W of one input, e.g. 3,32,32")
    p.add_argument("--samples", type=int, required=True, help="number of samples to measure")
    p.add_argument(
        "--metrics",
        default="di,li",
        help="a selection of di,li,si,worst,flip,discover (default di,li; SI costs ~200x). worst: worst-of-k "
        "accuracy over the measured elements (needs labels); flip: each sample's smallest flipping angle, factor or "
        "shift (so2, scale and cyclic groups); discover: the LieGG symmetry spectrum of the model on the data",
    )
    p.add_argument("--normalize", default="none", help="none | standardize | MEAN,...:STD,... (per channel)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per forward of the orbit (default 64)")
    p.add_argument("--si-steps", type=int, default=50, help="integration steps of SI (default 50, the paper's)")
    p.add_argument("--include-identity", action="store_true", help="average the metrics over all group elements")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and of samples= (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    return p


GROUP_HELP = """groups (--group NAME[:k=v,...], values are Python literals, else strings):
  finite groups: every element is measured, identity first
    rotation:order=4   rotation:order=2   flip:axis=x   translation:order=3,axis=x   dihedral
  continuous groups (so2, scale): name the elements, listed or drawn
    so2:angles=0,30,45,90             these angles (degrees), in this order
    so2:samples=8                     8 uniform angles drawn with --seed (sorted)
    scale:factors=0.8,1.25            these scale factors
    scale:min_scale=0.8,max_scale=1.25,samples=8
                                      8 factors drawn log-uniformly in [min_scale, max_scale]
    NAME:elements=...                 the listed elements of any other continuous group
    (rotations by multiples of 45 degrees: so2:angles=0,45,90,135,180,225,270,315)
  The values of angles=, factors=, elements= run up to the next k=v. A continuous group interpolates: the
  report puts the interpolation floor (the same metric on the round trip g^-1 (g x)) beside DI and LI of every
  element and draws the metrics against the angle or factor. Its group-averaged reference averages over the
  identity and the measured elements only: it is not exactly invariant, neither between them nor at them.

output actions (--output-action), for equivariant models f(g x) = g f(x):
  same                               the output transforms like the input, e.g. segmentation masks
  'perm:rot90=1,2,3,0;rot180=2,3,0,1;rot270=3,0,1,2'
                                     element rot90 permutes the output channels: position i takes the value of
                                     position I_i (the identity may be left out; 'perm:dim=2;...' for dim 2)
  mypkg.actions:act                  a function act(g, y) -> g·y, or rho(g) -> (d, d) matrix for (B, d) outputs
"""


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
        output_action=ActionSpec.parse(args.output_action),
    )
