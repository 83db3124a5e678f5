r"""Evaluate accuracy and the invariance metrics of a model over a whole data loader."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

import torchinvariance._mpl as _mpl
from torchinvariance._checks import check_model
from torchinvariance.divergences import check_logits
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._classes import (
    DistributionInvariance,
    LogitInvariance,
    SaliencyInvariance,
    _OrbitAccuracy,
    _OrbitConsistency,
    _OrbitTermsMetric,
)
from torchinvariance.metrics._functional import orbit_outputs
from torchinvariance.metrics._reduction import averaged_rows, check_include_identity
from torchinvariance.metrics.saliency import SaliencyConfig
from torchinvariance.orbit import measuring

__all__ = ["InvarianceReport", "evaluate_invariance"]

MetricName = Literal["accuracy", "consistency", "di", "li", "si"]
METRICS = ("accuracy", "consistency", "di", "li", "si")
_LABELS = {"accuracy": "accuracy", "consistency": "top-1 cons.", "di": "DI", "li": "LI", "si": "SI"}
_NO_STD = ("accuracy", "consistency")  # 0/1 terms: reported without a std over samples


@dataclass(frozen=True)
class InvarianceReport:
    r"""Accuracy and invariance metrics of a model on every element of a group orbit.

    Built by :func:`evaluate_invariance`. ``results`` maps each requested
    metric to ``{"mean", "std", "per_element"}`` (accuracy and top-1
    consistency have no ``"std"``; consistency adds ``"orbit"``):

    .. math::
        \text{per\_element}_g = \frac1N \sum_{b=1}^N d_g(x_b), \qquad
        \text{mean} = \frac1{|A|} \sum_{g \in A} \text{per\_element}_g, \qquad
        \text{std} = \operatorname{std}_b \Big(\frac1{|A|} \sum_{g \in A} d_g(x_b)\Big)

    where :math:`d_g(x_b)` is the metric's term for element :math:`g` and
    sample :math:`x_b` and :math:`A` the averaged elements: the non-identity
    elements (``include_identity=False``, the default) or all of them. The
    per-element values always list every element, identity first. Accuracy
    (:math:`[\arg\max f(g x_b) = y_b]`) is averaged over all elements whatever
    ``include_identity`` says: its mean is the accuracy on uniformly
    transformed data. The std is over samples (ddof=0).

    Attributes:
        group: ``repr`` of the group.
        n_samples: number of samples evaluated.
        elements: names of the group elements, identity first.
        results: ``{metric: {"mean": float, "std": float, "per_element": [float]}}``.
        include_identity: whether the means of the invariance metrics include
            the identity element.

    Example:
        >>> from torchinvariance import InvarianceReport
        >>> r = InvarianceReport("Flip(axis='x')", 10, ["id", "flipx"],
        ...                      {"li": {"mean": 1.0, "std": 0.1, "per_element": [0.0, 1.0]}})
        >>> r.to_dict()["li"]["per_element"]
        [0.0, 1.0]
        >>> print(r)  # doctest: +NORMALIZE_WHITESPACE
        Invariance report: Flip(axis='x'), 10 samples
        element        LI
        id         0.0000
        flipx      1.0000
        mean       1.0000
        std        0.1000
        (means over the 1 non-identity elements)
    """

    group: str
    n_samples: int
    elements: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    include_identity: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ``{"group", "n_samples", "elements", "include_identity", <metric>: {...}, ...}``."""
        out: dict[str, Any] = {
            "group": str(self.group),
            "n_samples": int(self.n_samples),
            "elements": [str(e) for e in self.elements],
            "include_identity": bool(self.include_identity),
        }
        for name, res in self.results.items():
            entry: dict[str, Any] = {"mean": float(res["mean"])}
            if "std" in res:
                entry["std"] = float(res["std"])
            if "orbit" in res:
                entry["orbit"] = float(res["orbit"])
            entry["per_element"] = [float(v) for v in res["per_element"]]
            out[name] = entry
        return out

    def to_pandas(self) -> Any:
        """The per-element values as a :class:`pandas.DataFrame`: one row per element, one column per metric.

        The frame's ``attrs`` hold ``group``, ``n_samples``, ``include_identity`` and the summaries ``mean`` and
        ``std`` (``{metric: value}``). Needs pandas (``pip install pandas``).

        Raises:
            ImportError: pandas is not installed.
        """
        pd = _mpl.require("pandas", "InvarianceReport.to_pandas()", extra="pandas")
        frame = pd.DataFrame(
            {name: [float(v) for v in res["per_element"]] for name, res in self.results.items()},
            index=pd.Index([str(e) for e in self.elements], name="element"),
        )
        frame.attrs.update(
            group=str(self.group),
            n_samples=int(self.n_samples),
            include_identity=bool(self.include_identity),
            mean={name: float(res["mean"]) for name, res in self.results.items()},
            std={name: float(res["std"]) for name, res in self.results.items() if "std" in res},
        )
        return frame

    def plot(
        self,
        metrics: Sequence[str] | None = None,
        *,
        references: dict[str, InvarianceReport] | None = None,
        title: str | None = None,
    ) -> Any:
        """Per-element bars of each metric, one panel per metric, with the mean as a dashed line.

        Elements left out of the mean (the identity, unless ``include_identity``) are hatched. ``references`` adds
        the same metrics of other reports as bars beside this one's (e.g. ``{"group-averaged": ...}``), for the
        metrics and elements they share. Needs matplotlib (``pip install "torchinvariance[plot]"``); the figure
        is made without :mod:`matplotlib.pyplot` and without changing the backend.

        Args:
            metrics: the metrics to draw, default every metric of the report except accuracy when there are
                invariance metrics (DI, LI, SI first).
            references: other reports to draw beside this one, by label.
            title: the figure's title (default: the group and the sample count).

        Returns:
            A :class:`matplotlib.figure.Figure`.

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: a metric that is not in the report.
        """
        order = ["di", "li", "si", "consistency", "accuracy"]
        if metrics is None:
            names = [m for m in order if m in self.results]
            names = [m for m in names if m != "accuracy"] or names
        else:
            names = [metrics] if isinstance(metrics, str) else list(metrics)
            bad = [m for m in names if m not in self.results]
            if bad or not names:
                raise ValueError(f"metrics must be a non-empty selection of {list(self.results)}; got {names!r}")
        refs = dict(references or {})
        fig, axes = _mpl.new_figure(
            1, len(names), figsize=(max(3.2, 0.55 * len(self.elements) + 1.6) * len(names), 3.2)
        )
        for ax, name in zip(axes[0], names):
            res = self.results[name]
            series = {"model": res["per_element"]}
            for label, other in refs.items():
                if name in other.results and list(other.elements) == list(self.elements):
                    series[label] = other.results[name]["per_element"]
            left_out = [False] * len(self.elements)
            if name != "accuracy" and not self.include_identity and self.elements:
                left_out[0] = True
            handles = _mpl.grouped_bars(ax, self.elements, series, hatched=left_out)
            mean = ax.axhline(res["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {res['mean']:.3g}")
            ax.set_title(_LABELS.get(name, name))
            ax.set_xlabel("group element")
            ax.legend(handles=[*handles, mean], fontsize=7)
        fig.suptitle(title or f"{self.group}, {self.n_samples} samples")
        return fig

    def __str__(self) -> str:
        names = list(self.results)
        width = max([7, *(len(e) for e in self.elements)]) + 2
        cols = max([10, *(len(_LABELS.get(n, n)) + 1 for n in names)])

        def cell(name: str, value: float | None) -> str:
            if value is None:
                return f"{'-':>{cols}}"
            if name in _NO_STD or value == 0 or abs(value) >= 1e-3:
                return f"{value:>{cols}.4f}"
            return f"{value:>{cols}.3e}"

        lines = [
            f"Invariance report: {self.group}, {self.n_samples} samples",
            "element".ljust(width) + "".join(f"{_LABELS.get(n, n):>{cols}}" for n in names),
        ]
        for i, e in enumerate(self.elements):
            lines.append(e.ljust(width) + "".join(cell(n, self.results[n]["per_element"][i]) for n in names))
        lines.append("mean".ljust(width) + "".join(cell(n, self.results[n]["mean"]) for n in names))
        if any("std" in self.results[n] for n in names):
            lines.append("std".ljust(width) + "".join(cell(n, self.results[n].get("std")) for n in names))
        if any("orbit" in self.results[n] for n in names):
            lines.append("orbit".ljust(width) + "".join(cell(n, self.results[n].get("orbit")) for n in names))
        n = len(self.elements)
        if self.include_identity:
            lines.append(f"(means over all {n} elements)")
        else:
            note = f"(means over the {n - 1} non-identity elements"
            lines.append(note + (f"; accuracy over all {n})" if "accuracy" in names else ")"))
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
    include_identity: bool = False,
    **saliency_kwargs: Any,
) -> InvarianceReport:
    r"""Accuracy and invariance metrics of ``model`` under ``group`` over a data loader.

    For every group element :math:`g` and sample :math:`(x_b, y_b)`:

    - ``"accuracy"``: :math:`[\arg\max f(g x_b) = y_b]` (needs labels);
    - ``"consistency"``: top-1 consistency
      :math:`[\arg\max f(g x_b) = \arg\max f(x_b)]`; the report adds
      ``"orbit"``, the fraction of samples whose top-1 class is the same on
      every averaged element;
    - ``"di"``: :math:`D_{KL}(\mathrm{softmax} f(x_b) \| \mathrm{softmax} f(g x_b))`
      (:func:`~torchinvariance.distribution_invariance`);
    - ``"li"``: :math:`\tfrac12 \lVert f(x_b) - f(g x_b) \rVert_2^2`
      (:func:`~torchinvariance.logit_invariance`);
    - ``"si"``: cosine similarity of :math:`m_f(x_b)` and
      :math:`g^{-1} m_f(g x_b)` (:func:`~torchinvariance.saliency_invariance`).

    Each is reported per group element (mean over samples, every element), as
    the mean over the non-identity elements (``include_identity=True``: over
    all of them; the same convention as ``reduction="mean"`` of the metric
    functions; accuracy is always averaged over all elements) and, for DI, LI
    and SI, as the std over samples of the per-sample mean (see
    :class:`InvarianceReport`). Accuracy, consistency, DI and LI share one
    batched forward of the orbit per batch. The model is evaluated in
    ``eval()`` mode (``eval_mode=False`` keeps its modes), and its modes and
    buffers are restored afterwards.

    **Cost.** The default metrics (accuracy, DI, LI) cost one forward of the
    orbit per sample. SI is not in the default: it needs integrated gradients,
    ``n_steps`` forward and backward passes of the orbit per sample (about 200x
    DI and LI with the default 50 steps; e.g. minutes for 1,000 ResNet-18
    samples on a laptop CPU). Ask for it with ``metrics=(..., "si")`` and cap
    it with ``si_samples``: SI then runs on the first ``si_samples`` samples
    only, with its own per-sample progress bar.

    **Distributed.** The accumulators are the torchmetrics metrics
    :class:`DistributionInvariance` & co., synced by torchmetrics. With
    ``sync_dist=None`` (default) the states are summed over all processes when
    a process group is initialized with more than one rank, so with a
    distributed sampler every rank gets the metrics of the whole dataset; then
    EVERY rank must call this function (it runs collectives).
    ``sync_dist=False`` evaluates this rank's data alone, with no collective
    (use it to evaluate on one rank only).

    Args:
        model: classifier returning logits ``(N, C)``.
        group: the finite group.
        loader: iterable of ``(x, y)`` tuples/lists or bare ``x`` tensors (then
            ``"accuracy"`` cannot be requested).
        metrics: any non-empty selection of ``("accuracy", "consistency",
            "di", "li", "si")``; default ``("accuracy", "di", "li")``.
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
        include_identity: ``False`` (default): the means of the invariance
            metrics run over the non-identity elements; ``True``: over all.
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
        ['accuracy', 'di', 'elements', 'group', 'include_identity', 'li', 'n_samples']
        >>> li = report.to_dict()["li"]  # the mean is over the three rotations that are not the identity
        >>> abs(li["mean"] - sum(li["per_element"][1:]) / 3) < 1e-9
        True
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
    check_include_identity(include_identity)
    if not group.is_finite:
        raise ValueError(f"evaluate_invariance needs a finite group (it measures every element); got {group!r}")
    dev = _model_device(model) if device is None else torch.device(device)
    sync = _should_sync(sync_dist)

    elements = list(group.elements())
    element_names = [group.element_name(g) for g in elements]
    rows = averaged_rows(group, elements, include_identity)
    options: dict[str, Any] = {"sync_on_compute": sync}
    acc: dict[str, _OrbitTermsMetric] = {}
    if "accuracy" in names:
        acc["accuracy"] = _OrbitAccuracy(element_names, [True] * len(elements), **options)
    if "consistency" in names:
        acc["consistency"] = _OrbitConsistency(element_names, rows, **options)
    bound = {"include_identity": include_identity, "eval_mode": eval_mode, **options}
    if "di" in names:
        acc["di"] = DistributionInvariance(model, group, **bound)
    if "li" in names:
        acc["li"] = LogitInvariance(model, group, **bound)
    si = SaliencyInvariance(model, group, config=saliency, **bound) if "si" in names else None
    for metric in [*acc.values(), *([si] if si is not None else [])]:
        metric.to(dev).set_dtype(torch.float64)  # float64 results for the report (the sums are float64 anyway)
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
                    if any(k in acc for k in ("di", "accuracy", "consistency")):
                        check_logits(out, "evaluate_invariance", batch_dims=2)
                    if "accuracy" in acc:
                        if y is None:
                            raise ValueError("metric 'accuracy' needs labels: the loader must yield (x, y) pairs")
                        y = y.to(dev)
                        if y.shape != (x.shape[0],) or y.is_floating_point():
                            raise ValueError(
                                f"labels must be class indices shaped ({x.shape[0]},); got {tuple(y.shape)} {y.dtype}"
                            )
                        acc["accuracy"].update_terms(out.argmax(-1) == y.unsqueeze(0))
                    if "consistency" in acc:
                        top1 = out.argmax(-1)
                        acc["consistency"].update_terms(top1 == top1[:1])
                    for name in ("di", "li"):
                        if name in acc:
                            acc[name].update_from_outputs(out[0], out)  # type: ignore[attr-defined]
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
    with warnings.catch_warnings():
        # a rank without batches under sync: the global count decides (below), not torchmetrics' warning
        warnings.filterwarnings("ignore", message=r".*compute.*called before the ``update``", category=UserWarning)
        for name in names:
            metric = si if name == "si" else acc[name]
            assert metric is not None
            try:
                per_element = metric.compute_per_element()
                res: dict[str, Any] = {"mean": float(metric.compute())}
            except RuntimeError as exc:
                where = "the loaders of all processes" if sync else "the loader"
                raise ValueError(f"{where} yielded no batches: nothing to evaluate") from exc
            if name not in _NO_STD:
                res["std"] = float(metric.compute_std())
            if isinstance(metric, _OrbitConsistency):
                res["orbit"] = float(metric.compute_orbit())
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
        elements=element_names,
        results=results,
        include_identity=include_identity,
    )
