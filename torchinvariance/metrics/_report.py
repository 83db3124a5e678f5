r"""Evaluate accuracy and the invariance metrics of a model over a whole data loader."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
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
    _OrbitAccuracy,
    _OrbitConsistency,
    _OrbitTermsMetric,
)
from torchinvariance.metrics._functional import di_terms, li_terms, orbit_outputs, round_trip_outputs
from torchinvariance.metrics._reduction import averaged_rows, check_include_identity, measured_elements
from torchinvariance.metrics._report_type import _NO_STD, METRICS, ROBUSTNESS, InvarianceReport
from torchinvariance.metrics.saliency import SaliencyConfig
from torchinvariance.orbit import measuring, resolve_elements
from torchinvariance.robustness import FlipResult, WorstCaseResult, check_flip_group, smallest_flip, worst_of_outputs
from torchinvariance.symmetry import SymmetrySpectrum, discover_symmetries

__all__ = ["InvarianceReport", "evaluate_invariance"]

MetricName = Literal["accuracy", "consistency", "di", "li", "si", "worst", "flip", "discover"]


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS + ROBUSTNESS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"metrics must be a non-empty selection without repeats of {METRICS + ROBUSTNESS}; got {metrics!r}"
        )
    return metrics


def _check_robustness(names: list[str], group: Group, sync: bool) -> None:
    """The robustness metrics' conditions that do not depend on the data, checked before any work."""
    asked = [m for m in names if m in ROBUSTNESS]
    if asked and sync:
        raise ValueError(
            f"metrics {asked} keep per-sample results that are not synced across processes; pass sync_dist=False to "
            "measure this rank's data"
        )
    if "flip" in names:
        try:
            check_flip_group(group)
        except TypeError as exc:
            raise ValueError(
                f"metric 'flip' searches a one-parameter path: so2, scale or a cyclic group (rotation, translation, "
                f"flip); got {group!r}: use 'worst' for its elements"
            ) from exc


def _labels(y: Tensor | None, x: Tensor, metric: str) -> Tensor:
    if y is None:
        raise ValueError(f"metric {metric!r} needs labels: the loader must yield (x, y) pairs")
    y = y.to(x.device)
    if y.shape != (x.shape[0],) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be class indices shaped ({x.shape[0]},); got {tuple(y.shape)} {y.dtype}")
    return y.long()


def _check_images(x: Tensor) -> None:
    if x.dim() < 3 or not x.is_floating_point() or min(x.shape[-2:]) < 2:
        raise ValueError(
            "metric 'discover' (the LieGG spectrum of the affine transformations of images) needs floating point "
            f"image batches (B, ..., H, W) with H, W >= 2; got shape {tuple(x.shape)} and dtype {x.dtype}"
        )


def _check_classes(out: Tensor, names: list[str]) -> None:
    """DI, consistency and worst-of-k compare classes: one output per sample makes them 0, 1, accuracy by default."""
    trivial = [m for m in ("di", "consistency", "worst") if m in names]
    if trivial and out.dim() == 3 and out.shape[-1] < 2:
        raise ValueError(
            f"metrics {trivial} compare the classes of a classifier and need logits of at least 2 classes; got "
            f"{out.shape[-1]} output per sample (the softmax of one logit is 1 whatever the input: DI 0, consistency "
            "1 by default). For a one-logit binary classifier return torch.cat([-z, z], 1) / 2, or measure 'li'"
        )


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


class _OrbitFloor(_OrbitTermsMetric):
    """The interpolation floor of DI or LI: terms ``d(f(x_b), f(g^{-1} (g x_b)))``, averaged like the metric."""

    _prefix = "floor"


_FLOOR_TERMS = {"di": di_terms, "li": li_terms}


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
    elements: Sequence | int | None = None,
    seed: int = 0,
    floor: bool | None = None,
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
      :math:`g^{-1} m_f(g x_b)` (:func:`~torchinvariance.saliency_invariance`);
    - ``"worst"``: worst-of-k accuracy, :math:`\frac1N \sum_b \bigwedge_g
      [\arg\max f(g x_b) = y_b]` over the measured elements
      (:func:`~torchinvariance.worst_case`; needs labels), from the same
      forward of the orbit as accuracy, DI and LI;
    - ``"flip"``: per sample the smallest angle, scale change or shift that
      changes the prediction (:func:`~torchinvariance.smallest_flip` with its
      defaults, its own search along the group's path whatever ``elements``
      says; ``so2``, ``scale`` and cyclic groups only);
    - ``"discover"``: the LieGG symmetry spectrum of all samples
      (:func:`~torchinvariance.discover_symmetries`; image inputs only).

    The last three are kept in the report as the result objects over all
    samples (``report.worst_case``, ``report.flips``, ``report.spectrum``),
    not per element; they are not synced across processes (pass
    ``sync_dist=False``).

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
    only, with its own per-sample progress bar. For an interpolating group
    the floor adds one forward of the orbit per sample (``floor=False``
    skips it). ``"worst"`` costs nothing beyond the orbit's forward;
    ``"flip"`` a search per sample (for ``so2`` 72 grid forwards and about 14
    bisection steps; for a cyclic group of order :math:`n` up to :math:`n - 1`
    forwards); ``"discover"`` one backward pass per model output.

    **Which elements.** ``elements=None`` (default) measures every element of
    a finite group, identity first. A continuous group (``so2``, ``scale``)
    needs ``elements``: a list (``[0.0, 30.0, 45.0, 90.0]``, angles in
    degrees) measured in that order, or an int ``k``: ``k`` elements drawn
    once with a :class:`torch.Generator` seeded by ``seed`` (``so2``: ``k``
    uniform angles, ``scale``: log-uniform factors in its range, sorted by
    value; a finite group: ``k`` distinct non-identity elements), so the same
    ``(k, seed)`` gives the same report on every run and every process. A list
    works for finite groups too (a subset). The identity, when listed, is
    reported with the others and left out of the means (unless
    ``include_identity``); :math:`f(x)` is computed either way.

    **Interpolation floor.** For a group that interpolates (``group.exact``
    is ``False``: ``so2``, ``scale``) no model reaches DI = LI = 0: resampling
    itself changes the image. Beside DI and LI of every element the report
    then gives the floor of :func:`~torchinvariance.interpolation_floor`,
    :math:`d\big(f(x_b), f(g^{-1} (g x_b))\big)` averaged the same way: what
    resampling alone explains. Read a per-element value against its floor
    (a value near the floor is as invariant as resampling lets one see), and
    compare models by their values. ``floor=None`` (default) measures it for
    interpolating groups only; ``True`` also for exact ones (where it is 0),
    ``False`` never. :meth:`InvarianceReport.plot` draws, for a continuous
    group, each metric against the element (the angle) with the floor as a
    dashed line.

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
        group: the group: finite, or continuous with ``elements``.
        loader: iterable of ``(x, y)`` tuples/lists or bare ``x`` tensors (then
            ``"accuracy"`` cannot be requested).
        metrics: any non-empty selection of ``("accuracy", "consistency",
            "di", "li", "si", "worst", "flip", "discover")``; default
            ``("accuracy", "di", "li")``.
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
        elements: ``None`` (every element of a finite group), a list of
            elements, or an int ``k`` drawn with ``seed`` (see above).
        seed: the seed of the draw for ``elements=k`` (default 0).
        floor: measure the interpolation floor of DI and LI: ``None``
            (default) for interpolating groups, ``True`` always, ``False``
            never.
        **saliency_kwargs: options of the SI recipe
            (:class:`~torchinvariance.SaliencyConfig`: ``n_steps``,
            ``threshold``, ``kernel_size``, ``sigma``, ``internal_batch_size``,
            ``padding``, ``backend``).

    Returns:
        The :class:`InvarianceReport`.

    Raises:
        ValueError: unknown metric names, an empty loader, ``"accuracy"``
            or ``"worst"`` without labels, ``"flip"`` for a group that is not
            ``so2``, ``scale`` or cyclic, ``"discover"`` on inputs that are not
            images, a robustness metric under ``sync_dist``, a group that
            cannot act on the inputs, non-finite
            model outputs, a continuous group without ``elements``, an element
            the group rejects, ``k < 1`` (or, for a finite group, not below
            its order), a bad ``seed``.
        TypeError: unknown saliency options, batches of the wrong type,
            ``elements`` or ``floor`` of the wrong type.

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

        A continuous group: the angles to measure, or how many to draw; the
        floor stands beside DI and LI of every angle.

        >>> so2 = ti.get_group("so2")
        >>> report = ti.evaluate_invariance(model, so2, data, elements=[0.0, 45.0, 90.0], progress=False)
        >>> report.elements, report.element_values
        (['rot0', 'rot45', 'rot90'], [0.0, 45.0, 90.0])
        >>> li = report.to_dict()["li"]
        >>> sorted(li), len(li["floor"]["per_element"])
        (['floor', 'mean', 'per_element', 'std'], 3)
        >>> drawn = ti.evaluate_invariance(model, so2, data, elements=4, seed=0, progress=False)
        >>> drawn.elements == ti.evaluate_invariance(model, so2, data, elements=4, seed=0, progress=False).elements
        True
        >>> fig = drawn.plot()  # LI and DI against the angle, each with its floor dashed

        The worst element, the smallest flip and the discovered symmetries, on the same data:

        >>> rot = ti.get_group("rotation", order=4)
        >>> report = ti.evaluate_invariance(model, rot, data, metrics=("li", "worst", "flip", "discover"),
        ...                                 progress=False)
        >>> report.worst_case.robust.shape, report.flips.unit, report.spectrum.singular_values.shape
        (torch.Size([8]), 'steps', torch.Size([6]))
        >>> sorted(report.to_dict())  # doctest: +NORMALIZE_WHITESPACE
        ['discover', 'elements', 'flip', 'group', 'include_identity', 'li', 'n_samples', 'worst']
        >>> report.plot().axes[0].get_title()
        'LI'
    """
    check_model(model)
    ensure_group(group)
    names = _check_metrics(metrics)
    saliency = SaliencyConfig.from_options(saliency_kwargs)
    _check_optional_int("max_batches", max_batches)
    _check_optional_int("si_samples", si_samples)
    _check_optional_int("chunk_size", chunk_size)
    check_include_identity(include_identity)
    if floor is not None and not isinstance(floor, bool):
        raise TypeError(f"floor must be None (for interpolating groups), True or False; got {floor!r}")
    # None: every element of a finite group (the orbit's first row is f(x)); a list: those, after f(x)
    chosen = measured_elements(group, elements, seed)
    measured = resolve_elements(group, chosen)
    dev = _model_device(model) if device is None else torch.device(device)
    sync = _should_sync(sync_dist)
    _check_robustness(names, group, sync)

    element_names = [group.element_name(g) for g in measured]
    rows = averaged_rows(group, measured, include_identity)
    options: dict[str, Any] = {"sync_on_compute": sync}
    acc: dict[str, _OrbitTermsMetric] = {}
    if "accuracy" in names:
        acc["accuracy"] = _OrbitAccuracy(element_names, [True] * len(measured), **options)
    if "consistency" in names:
        acc["consistency"] = _OrbitConsistency(element_names, rows, **options)
    bound = {"elements": chosen, "include_identity": include_identity, "eval_mode": eval_mode, **options}
    if "di" in names:
        acc["di"] = DistributionInvariance(model, group, **bound)
    if "li" in names:
        acc["li"] = LogitInvariance(model, group, **bound)
    si = SaliencyInvariance(model, group, config=saliency, **bound) if "si" in names else None
    with_floor = (not group.exact) if floor is None else floor
    floors = {n: _OrbitFloor(element_names, rows, **options) for n in ("di", "li") if n in acc and with_floor}
    for metric in [*acc.values(), *floors.values(), *([si] if si is not None else [])]:
        metric.to(dev).set_dtype(torch.float64)  # float64 results for the report (the sums are float64 anyway)
    needs_logits = bool(acc) or "worst" in names
    worst_parts: list[WorstCaseResult] = []
    flip_parts: list[FlipResult] = []
    lie_parts: list[Tensor] = []
    orbit = None if chosen is None else [group.identity, *chosen]

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
                if "discover" in names:
                    _check_images(x)
                if needs_logits:
                    with torch.no_grad():
                        out = orbit_outputs(model, group, x, eval_mode=eval_mode, chunk_size=chunk_size, elements=orbit)
                    if any(k in names for k in ("di", "accuracy", "consistency", "worst")):
                        check_logits(out, "evaluate_invariance", batch_dims=2)
                    _check_classes(out, names)
                    if not (out.is_floating_point() or out.is_complex()):
                        out = out.double()  # integer logits: the softmax of DI needs floats (exact up to 2**53)
                    fx, fgx = out[0], (out if chosen is None else out[1:])  # fgx: one row per measured element
                    if "accuracy" in acc:
                        acc["accuracy"].update_terms(fgx.argmax(-1) == _labels(y, x, "accuracy").unsqueeze(0))
                    if "worst" in names:  # the same orbit: f(x) and one row per measured element
                        worst_parts.append(worst_of_outputs(measured, fx, fgx, _labels(y, x, "worst")))
                    if "consistency" in acc:
                        acc["consistency"].update_terms(fgx.argmax(-1) == fx.argmax(-1).unsqueeze(0))
                    for name in ("di", "li"):
                        if name in acc:
                            acc[name].update_from_outputs(fx, fgx)  # type: ignore[attr-defined]
                    if floors:
                        with torch.no_grad():  # f(g^-1 (g x)): what resampling alone changes
                            back = round_trip_outputs(model, group, x, measured, chunk_size=chunk_size)
                        back = back.to(out.dtype) if back.dtype != out.dtype else back
                        for name, meter in floors.items():
                            meter.update_terms(_FLOOR_TERMS[name](fx, back))
                if "flip" in names:
                    flip_parts.append(smallest_flip(model, group, x, chunk_size=chunk_size, eval_mode=eval_mode))
                if "discover" in names:
                    lie_parts.append(discover_symmetries(model, x, eval_mode=eval_mode).lie_derivatives)
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
        for name in (n for n in names if n not in ROBUSTNESS):
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
            if name in floors:
                res["floor"] = {
                    "mean": float(floors[name].compute()),
                    "per_element": [float(v) for v in floors[name].compute_per_element()],
                }
            results[name] = res
            if name != "si":
                n_samples = metric.compute_count()
        if n_samples == 0 and si is not None:
            n_samples = si.compute_count()
    worst = WorstCaseResult.cat(worst_parts) if worst_parts else None
    flips = FlipResult.cat(flip_parts) if flip_parts else None
    spectrum = SymmetrySpectrum.from_lie_derivatives(torch.cat(lie_parts)) if lie_parts else None
    if not results:  # robustness metrics only: the samples they measured
        if worst is not None:
            n_samples = worst.robust.numel()
        elif flips is not None:
            n_samples = flips.magnitude.numel()
        elif spectrum is not None:
            n_samples = spectrum.lie_derivatives.shape[0]
    for res in results.values():
        values = [res["mean"], res.get("std", 0.0), *res["per_element"]]
        if "floor" in res:
            values += [res["floor"]["mean"], *res["floor"]["per_element"]]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite metric values in the report: {results}")
    return InvarianceReport(
        group=repr(group),
        n_samples=n_samples,
        elements=element_names,
        results=results,
        include_identity=include_identity,
        element_values=None if group.is_finite else [float(g) for g in measured],
        averaged=rows,
        worst_case=worst,
        flips=flips,
        spectrum=spectrum,
    )
