r"""Evaluate accuracy and the invariance metrics of a model over a whole data loader."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from torchinvariance._checks import check_model
from torchinvariance.divergences import check_logits
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._classes import (
    DistributionInvariance,
    LogitInvariance,
    SaliencyInvariance,
    _OrbitAccumulator,
)
from torchinvariance.metrics._functional import orbit_outputs
from torchinvariance.metrics.saliency import SaliencyConfig
from torchinvariance.orbit import measuring

__all__ = ["InvarianceReport", "evaluate_invariance"]

MetricName = Literal["accuracy", "di", "li", "si"]
METRICS = ("accuracy", "di", "li", "si")
_LABELS = {"accuracy": "accuracy", "di": "DI", "li": "LI", "si": "SI"}


@dataclass(frozen=True)
class InvarianceReport:
    r"""Accuracy and invariance metrics of a model on every element of a group orbit.

    Built by :func:`evaluate_invariance`. ``results`` maps each requested
    metric to ``{"mean", "std", "per_element"}`` (accuracy has no ``"std"``):

    .. math::
        \text{per\_element}_g = \frac1N \sum_{b=1}^N d_g(x_b), \qquad
        \text{mean} = \frac1n \sum_{g} \text{per\_element}_g, \qquad
        \text{std} = \operatorname{std}_b \Big(\frac1n \sum_g d_g(x_b)\Big)

    where :math:`d_g(x_b)` is the metric's term for element :math:`g` and
    sample :math:`x_b` (for accuracy: :math:`[\arg\max f(g x_b) = y_b]`); the
    std is over samples (ddof=0).

    Attributes:
        group: ``repr`` of the group.
        n_samples: number of samples evaluated.
        elements: names of the group elements, identity first.
        results: ``{metric: {"mean": float, "std": float, "per_element": [float]}}``.

    Example:
        >>> from torchinvariance import InvarianceReport
        >>> r = InvarianceReport("Flip(axis='x')", 10, ["id", "flipx"],
        ...                      {"li": {"mean": 0.5, "std": 0.1, "per_element": [0.0, 1.0]}})
        >>> r.to_dict()["li"]["per_element"]
        [0.0, 1.0]
        >>> print(r)  # doctest: +NORMALIZE_WHITESPACE
        Invariance report: Flip(axis='x'), 10 samples
        element        LI
        id         0.0000
        flipx      1.0000
        mean       0.5000
        std        0.1000
    """

    group: str
    n_samples: int
    elements: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ``{"group", "n_samples", "elements", <metric>: {...}, ...}``."""
        out: dict[str, Any] = {
            "group": str(self.group),
            "n_samples": int(self.n_samples),
            "elements": [str(e) for e in self.elements],
        }
        for name, res in self.results.items():
            entry: dict[str, Any] = {"mean": float(res["mean"])}
            if "std" in res:
                entry["std"] = float(res["std"])
            entry["per_element"] = [float(v) for v in res["per_element"]]
            out[name] = entry
        return out

    def __str__(self) -> str:
        names = list(self.results)
        width = max([7, *(len(e) for e in self.elements)]) + 2

        def cell(name: str, value: float | None) -> str:
            if value is None:
                return f"{'-':>10}"
            if name == "accuracy" or value == 0 or abs(value) >= 1e-3:
                return f"{value:>10.4f}"
            return f"{value:>10.3e}"

        lines = [
            f"Invariance report: {self.group}, {self.n_samples} samples",
            "element".ljust(width) + "".join(f"{_LABELS.get(n, n):>10}" for n in names),
        ]
        for i, e in enumerate(self.elements):
            lines.append(e.ljust(width) + "".join(cell(n, self.results[n]["per_element"][i]) for n in names))
        lines.append("mean".ljust(width) + "".join(cell(n, self.results[n]["mean"]) for n in names))
        if any("std" in self.results[n] for n in names):
            lines.append("std".ljust(width) + "".join(cell(n, self.results[n].get("std")) for n in names))
        return "\n".join(lines)


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be a non-empty selection without repeats of {METRICS}; got {metrics!r}")
    return metrics


def _model_device(model: Callable[[Tensor], Tensor]) -> torch.device:
    if isinstance(model, nn.Module):
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return torch.device("cpu")


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
        y = batch[1] if len(batch) >= 2 else None
        if y is not None and not isinstance(y, Tensor):
            y = torch.as_tensor(y)
        return batch[0], y
    raise TypeError(
        "the loader must yield (x, y) tuples/lists or bare x tensors; got "
        f"{type(batch).__name__}{'' if not isinstance(batch, (tuple, list)) else f' of length {len(batch)}'}"
    )


def _should_sync(sync_dist: bool | None) -> bool:
    if sync_dist is not None:
        return bool(sync_dist)
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_optional_int(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def evaluate_invariance(
    model: Callable[[Tensor], Tensor],
    group: Group,
    loader: Iterable[Any],
    metrics: Sequence[MetricName] = ("accuracy", "di", "li"),
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    *,
    si_samples: int | None = None,
    chunk_size: int | None = None,
    sync_dist: bool | None = None,
    eval_mode: bool = True,
    **saliency_kwargs: Any,
) -> InvarianceReport:
    r"""Accuracy and invariance metrics of ``model`` under ``group`` over a data loader.

    For every group element :math:`g` and sample :math:`(x_b, y_b)`:

    - ``"accuracy"``: :math:`[\arg\max f(g x_b) = y_b]` (needs labels);
    - ``"di"``: :math:`D_{KL}(\mathrm{softmax} f(x_b) \| \mathrm{softmax} f(g x_b))`
      (:func:`~torchinvariance.distribution_invariance`);
    - ``"li"``: :math:`\tfrac12 \lVert f(x_b) - f(g x_b) \rVert_2^2`
      (:func:`~torchinvariance.logit_invariance`);
    - ``"si"``: cosine similarity of :math:`m_f(x_b)` and
      :math:`g^{-1} m_f(g x_b)` (:func:`~torchinvariance.saliency_invariance`).

    Each is reported per group element (mean over samples), as the mean over
    elements (identity included, the same convention as
    ``reduction="mean"``) and, except accuracy, as the std over samples of
    the per-sample orbit average (see :class:`InvarianceReport`). Accuracy,
    DI and LI share one batched forward of the orbit per batch. The model is
    evaluated in ``eval()`` mode (``eval_mode=False`` keeps its modes), and its
    modes and buffers are restored afterwards.

    **Cost.** The default metrics (accuracy, DI, LI) cost one forward of the
    orbit per sample. SI is not in the default: it needs integrated gradients,
    ``n_steps`` forward and backward passes of the orbit per sample (about 200x
    DI and LI with the default 50 steps; e.g. minutes for 1,000 ResNet-18
    samples on a laptop CPU). Ask for it with ``metrics=(..., "si")`` and cap
    it with ``si_samples``: SI then runs on the first ``si_samples`` samples
    only, with its own per-sample progress bar.

    **Distributed.** The accumulators are those of
    :class:`DistributionInvariance` & co. With ``sync_dist=None`` (default)
    the states are summed over all processes when a process group is
    initialized with more than one rank, so with a distributed sampler every
    rank gets the metrics of the whole dataset; then EVERY rank must call this
    function (it runs collectives). ``sync_dist=False`` evaluates this rank's
    data alone, with no collective (use it to evaluate on one rank only).

    Args:
        model: classifier returning logits ``(N, C)``.
        group: the finite group.
        loader: iterable of ``(x, y)`` tuples/lists or bare ``x`` tensors (then
            ``"accuracy"`` cannot be requested).
        metrics: any non-empty selection of ``("accuracy", "di", "li", "si")``;
            default ``("accuracy", "di", "li")``.
        device: where to run; ``None`` means the model's device (its first
            parameter or buffer; CPU for a model without any).
        max_batches: stop after this many batches (``None``: the whole loader).
        progress: show ``tqdm`` progress bars (batches; SI also per sample).
        si_samples: evaluate SI on at most this many samples (the first ones);
            ``None`` for all of them.
        chunk_size: at most this many group elements per forward for accuracy,
            DI and LI, so peak memory is bounded by one chunk.
        sync_dist: sum the states over processes; ``None`` decides from
            :mod:`torch.distributed` as described above.
        eval_mode: evaluate in ``eval()`` mode (default).
        **saliency_kwargs: options of the SI recipe
            (:class:`~torchinvariance.SaliencyConfig`: ``n_steps``,
            ``threshold``, ``kernel_size``, ``sigma``, ``internal_batch_size``,
            ``padding``, ``backend``).

    Returns:
        The :class:`InvarianceReport`.

    Raises:
        ValueError: unknown metric names, an empty loader, ``"accuracy"``
            without labels, a group that cannot act on the inputs, non-finite
            model outputs.
        TypeError: unknown saliency options or batches of the wrong type.

    Example:
        >>> import json, torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> data = [(torch.randn(4, 1, 6, 6), torch.randint(3, (4,))) for _ in range(2)]
        >>> report = ti.evaluate_invariance(model, ti.get_group("rotation", order=4), data, progress=False)
        >>> report.n_samples, report.elements
        (8, ['rot0', 'rot90', 'rot180', 'rot270'])
        >>> sorted(json.loads(json.dumps(report.to_dict())))
        ['accuracy', 'di', 'elements', 'group', 'li', 'n_samples']
        >>> report = ti.evaluate_invariance(model, ti.get_group("rotation", order=4), data, metrics=("li", "si"),
        ...                                 si_samples=2, progress=False, n_steps=8)
        >>> report.n_samples, round(report.to_dict()["si"]["per_element"][0], 6)  # identity: 1
        (8, 1.0)
    """
    check_model(model)
    ensure_group(group)
    names = _check_metrics(metrics)
    saliency = SaliencyConfig.from_options(saliency_kwargs)
    _check_optional_int("max_batches", max_batches)
    _check_optional_int("si_samples", si_samples)
    _check_optional_int("chunk_size", chunk_size)
    dev = _model_device(model) if device is None else torch.device(device)
    sync = _should_sync(sync_dist)

    acc: dict[str, Any] = {}
    if "accuracy" in names:
        acc["accuracy"] = _OrbitAccumulator(group.order, sync_dist=sync)  # terms are 0/1: correct or not
    if "di" in names:
        acc["di"] = DistributionInvariance(model, group, sync_dist=sync)
    if "li" in names:
        acc["li"] = LogitInvariance(model, group, sync_dist=sync)
    si = (
        SaliencyInvariance(model, group, sync_dist=sync, eval_mode=eval_mode, config=saliency)
        if "si" in names
        else None
    )
    needs_logits = bool(acc)

    total = None
    if hasattr(loader, "__len__"):
        total = len(loader)  # type: ignore[arg-type]
        if max_batches is not None:
            total = min(total, max_batches)
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)

    n_batches = 0
    si_left = si_samples
    si_bar = tqdm(total=si_samples, disable=not (progress and si is not None), desc="SI", unit="sample")
    try:
        with measuring(model, eval_mode):
            for batch in tqdm(batches, total=total, disable=not progress, desc=f"invariance {group!r}"):
                x, y = _split_batch(batch)
                x = x.to(dev)
                if needs_logits:
                    with torch.no_grad():
                        out = orbit_outputs(model, group, x, eval_mode=eval_mode, chunk_size=chunk_size)
                    if "di" in acc or "accuracy" in acc:
                        check_logits(out, "evaluate_invariance", batch_dims=2)
                    if "accuracy" in acc:
                        if y is None:
                            raise ValueError("metric 'accuracy' needs labels: the loader must yield (x, y) pairs")
                        y = y.to(dev)
                        if y.shape != (x.shape[0],) or y.is_floating_point():
                            raise ValueError(
                                f"labels must be class indices shaped ({x.shape[0]},); got {tuple(y.shape)} {y.dtype}"
                            )
                        acc["accuracy"].update_terms((out.argmax(-1) == y.unsqueeze(0)).double())
                    for name in ("di", "li"):
                        if name in acc:
                            acc[name].update_from_outputs(out[0], out)
                if si is not None and (si_left is None or si_left > 0):
                    xs = x if si_left is None else x[:si_left]
                    si.update(xs)
                    si_bar.update(xs.shape[0])
                    if si_left is not None:
                        si_left -= xs.shape[0]
                n_batches += 1
    finally:
        si_bar.close()
    if n_batches == 0 and not sync:  # synchronized: decided on the global count (no deadlock)
        raise ValueError("the loader yielded no batches: nothing to evaluate")

    results: dict[str, dict[str, Any]] = {}
    n_samples = 0
    for name in names:
        metric = si if name == "si" else acc[name]
        assert metric is not None
        try:
            per_element = metric.compute_per_element()
        except RuntimeError as exc:
            where = "the loaders of all processes" if sync else "the loader"
            raise ValueError(f"{where} yielded no batches: nothing to evaluate") from exc
        res: dict[str, Any] = {"mean": float(per_element.mean())}
        if name != "accuracy":
            res["std"] = float(metric.compute_std())
        res["per_element"] = [float(v) for v in per_element]
        results[name] = res
        if name != "si":
            n_samples = metric.compute_count()
    if n_samples == 0 and si is not None:
        n_samples = si.compute_count()
    for res in results.values():
        if not all(math.isfinite(v) for v in [res["mean"], res.get("std", 0.0), *res["per_element"]]):
            raise ValueError(f"non-finite metric values in the report: {results}")
    return InvarianceReport(
        group=repr(group),
        n_samples=n_samples,
        elements=[group.element_name(g) for g in group.elements()],
        results=results,
    )
