r"""Invariance metrics that accumulate over a dataset: :class:`torchmetrics.Metric` subclasses.

The math lives in :mod:`torchinvariance.metrics._functional` (DI, LI terms), :mod:`torchinvariance.metrics.saliency`
(SI terms) and :mod:`torchinvariance.metrics._reduction` (the element averaging, ``orbit_update`` and
``orbit_compute``, which the functional forms call on one batch). The classes only add the sums of
``orbit_update`` to float64 states declared with ``add_state(..., dist_reduce_fx="sum")``; torchmetrics syncs
them across processes in ``compute()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from torchinvariance._checks import check_model
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._functional import di_terms, li_terms, orbit_outputs
from torchinvariance.metrics._reduction import (
    averaged_rows,
    check_include_identity,
    measured_elements,
    orbit_compute,
    orbit_std,
    orbit_update,
)
from torchinvariance.metrics.saliency import Backend, Padding, SaliencyConfig, saliency_terms
from torchinvariance.orbit import resolve_elements

__all__ = ["DistributionInvariance", "LogitInvariance", "SaliencyInvariance"]

F64 = torch.float64


class _Terms(NamedTuple):
    """A batch of precomputed terms ``(n, B)``, routed through :meth:`Metric.update` (its bookkeeping)."""

    values: Tensor


class _Outputs(NamedTuple):
    """A batch of precomputed orbit outputs, routed through :meth:`Metric.update`."""

    fx: Tensor
    fgx: Tensor


def _keep_float64(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Apply ``fn`` (a ``.to()`` conversion) to a state, keeping float64 states float64 (on the new device)."""
    out = fn(t)
    return out.to(F64) if t.dtype == F64 and out.is_floating_point() else out


class _OrbitTermsMetric(Metric):
    r"""Float64 sums of ``(n, batch)`` matrices of per-element, per-sample terms.

    States (``<prefix>`` is the metric's kind, so that the compute groups of a
    :class:`~torchmetrics.MetricCollection` never merge two different metrics):
    ``<prefix>_element_sum`` :math:`\sum_b d_{ib}` ``(n,)``,
    ``<prefix>_sample_sumsq`` :math:`\sum_b v_b^2` with :math:`v_b` the sample's mean over the averaged rows, and
    ``<prefix>_count``. All are summed over processes (``dist_reduce_fx="sum"``), saved in ``state_dict()``, and
    stay float64 whatever ``.to(dtype)`` asks; results come in the metric's ``dtype`` (float32 by default, as in
    torchmetrics; ``.set_dtype(torch.float64)`` for float64 results).
    """

    full_state_update: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = False
    _prefix: ClassVar[str] = "terms"

    def __init__(self, element_names: Sequence[str], rows: Sequence[bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(element_names) != len(rows):
            raise ValueError(f"{len(element_names)} element names for {len(rows)} rows")
        self.element_names = [str(e) for e in element_names]
        self.rows = [bool(r) for r in rows]
        n = len(self.rows)
        p = self._prefix
        self.add_state(f"{p}_element_sum", torch.zeros(n, dtype=F64), dist_reduce_fx="sum", persistent=True)
        self.add_state(f"{p}_sample_sumsq", torch.zeros((), dtype=F64), dist_reduce_fx="sum", persistent=True)
        self.add_state(f"{p}_count", torch.zeros((), dtype=F64), dist_reduce_fx="sum", persistent=True)

    # ---------------------------------------------------------------- states
    @property
    def n_elements(self) -> int:
        """Number of rows (group elements) of the terms."""
        return len(self.rows)

    def _sums(self) -> tuple[Tensor, Tensor, Tensor]:
        p = self._prefix
        return getattr(self, f"{p}_element_sum"), getattr(self, f"{p}_sample_sumsq"), getattr(self, f"{p}_count")

    def _add(self, values: Tensor) -> None:
        """Add a ``(n_elements, batch)`` matrix of terms to the states (the update of every subclass)."""
        if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[0] != self.n_elements:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"expected terms shaped ({self.n_elements}, batch), got {got}")
        element_sum, sumsq, count = self._sums()
        v = values.detach().to(device=element_sum.device, dtype=F64)
        batch_sum, batch_sumsq, batch_count = orbit_update(v, self.rows)
        p = self._prefix
        setattr(self, f"{p}_element_sum", element_sum + batch_sum)
        setattr(self, f"{p}_sample_sumsq", sumsq + batch_sumsq)
        setattr(self, f"{p}_count", count + batch_count)

    def update(self, values: Tensor) -> None:  # type: ignore[override]
        """Add a ``(n_elements, batch)`` matrix of terms."""
        self._add(values.values if isinstance(values, _Terms) else values)

    def update_terms(self, values: Tensor) -> None:
        """Add a ``(n_elements, batch)`` matrix of per-element, per-sample terms (e.g. from ``reduction="none"``)."""
        self.update(_Terms(values))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add the states of another metric of the same kind (or a dict of such states) to this one.

        Unlike torchmetrics' default, which checks only the class, the incoming metric must measure the same rows:
        the same element names and averaged rows here, and for metrics bound to a group the same group and elements.

        Raises:
            ValueError: another class, other elements or another group, or a state dict whose per-element sums do
                not hold one entry per element.
        """
        if isinstance(incoming_state, type(self)):
            self._check_mergeable(incoming_state)
        elif isinstance(incoming_state, dict):
            key = f"{self._prefix}_element_sum"
            got = incoming_state.get(key)
            if isinstance(got, Tensor) and tuple(got.shape) != (self.n_elements,):
                raise ValueError(
                    f"cannot merge into {type(self).__name__} over {self.n_elements} elements: the incoming state "
                    f"{key!r} has shape {tuple(got.shape)}, expected ({self.n_elements},)"
                )
        super().merge_state(incoming_state)
        self._computed = None  # torchmetrics keeps the cached compute() of the states before the merge

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # torchmetrics sets the states as they come: a checkpoint of another number of elements was loaded without a
        # word, and compute() then failed ("2 averaged-row flags for terms with 4 rows"). A size mismatch is reported
        # as torch reports one for a parameter (load_state_dict raises), and no state is changed.
        wrong = []
        for key, default in self._defaults.items():
            got = state_dict.get(prefix + key)
            if isinstance(got, Tensor) and isinstance(default, Tensor) and got.shape != default.shape:
                wrong.append(
                    f"size mismatch for {prefix + key}: copying a state of shape {tuple(got.shape)} from the "
                    f"checkpoint, the shape in the current {type(self).__name__} over {self._describe()} is "
                    f"{tuple(default.shape)}"
                )
        if wrong:
            error_msgs.extend(wrong)
            for key in self._defaults:
                state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._computed = None  # torchmetrics keeps the cached compute() of the states before the load

    def _describe(self) -> str:
        return f"elements {self.element_names}"

    def _check_mergeable(self, other: _OrbitTermsMetric) -> None:
        """Raise :class:`ValueError` unless ``other`` measures the same rows as ``self``."""
        if other.element_names != self.element_names or other.rows != self.rows:
            raise ValueError(
                f"cannot merge {type(self).__name__} over {self._describe()} (averaged rows {self.rows}) with one "
                f"over {other._describe()} (averaged rows {other.rows}): merge only metrics of the same rows"
            )

    def _checked_sums(self, method: str = "compute") -> tuple[Tensor, Tensor, Tensor]:
        element_sum, sumsq, count = self._sums()
        if count == 0:
            raise RuntimeError(f"{type(self).__name__}.{method}() called before any update()")
        return element_sum, sumsq, count

    def _synced(self, read: Callable[[], Any]) -> Any:
        """``read()`` on the states summed over processes, as ``compute()`` sees them (torchmetrics' sync); the local
        states are restored after, also when ``read`` raises.
        """
        if self._is_synced or not self.sync_on_compute:
            return read()
        self.sync(dist_sync_fn=self.dist_sync_fn, should_sync=True)
        try:
            return read()
        finally:
            self.unsync(should_unsync=self._is_synced)

    def _global_sums(self, method: str) -> tuple[Tensor, Tensor, Tensor]:
        return self._synced(lambda: tuple(t.clone() for t in self._checked_sums(method)))

    # ---------------------------------------------------------------- results
    def compute(self) -> Tensor:
        """Mean over samples and the averaged group elements (a scalar in the metric's ``dtype``)."""
        element_sum, _, count = self._checked_sums()  # synced by torchmetrics' wrapper
        return orbit_compute(element_sum, count, self.rows).to(self.dtype)

    def compute_per_element(self) -> Tensor:
        """Mean over samples for each group element, ``(n_elements,)`` in the metric's ``dtype`` (every element)."""
        element_sum, _, count = self._global_sums("compute_per_element")
        return (element_sum / count).to(self.dtype)

    def compute_std(self) -> Tensor:
        r"""Standard deviation over samples (ddof=0) of :math:`v_b`, a sample's mean over the averaged elements."""
        element_sum, sumsq, count = self._global_sums("compute_std")
        return orbit_std(element_sum, sumsq, count, self.rows).to(self.dtype)

    def compute_count(self) -> int:
        """Number of samples seen by all processes (synchronized like :meth:`compute`); 0 before any update."""
        return self._synced(lambda: int(self._sums()[2].item()))

    @property
    def n_samples(self) -> int:
        """Number of samples seen by this process."""
        return int(self._sums()[2].item())

    @property
    def update_called(self) -> bool:
        """Whether samples were added since the last reset, also by ``load_state_dict()`` (torchmetrics' flag)."""
        return super().update_called or bool(self._sums()[2] > 0)

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = "") -> Any:
        # device moves apply to the states, dtype changes only to the results: the sums stay float64. A partial
        # (not a closure) keeps repr(fn) visible to torchmetrics, which tells .half()/.float() from set_dtype by it.
        dtype = self._dtype
        this = super()._apply(functools.partial(_keep_float64, fn), exclude_state)
        if this._dtype != dtype:  # torchmetrics reads the dtype off a default-dtype probe: a pure .to(device) ...
            this._dtype = fn(torch.zeros((), dtype=dtype)).dtype  # ... keeps the dtype of the results
        this._computed = None  # results are recomputed from the float64 sums in the (new) dtype
        return this

    def extra_repr(self) -> str:
        return f"n_elements={self.n_elements}, n_samples={self.n_samples}"


class _BoundMetric(_OrbitTermsMetric):
    """A metric bound to a model and a group: ``update(x)`` runs the orbit, ``update_from_outputs`` takes it."""

    _terms: ClassVar[Callable[[Tensor, Tensor], Tensor]]

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        group: Group,
        *,
        elements: Sequence | int | None = None,
        seed: int = 0,
        include_identity: bool = False,
        eval_mode: bool = True,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        # every argument is checked here, when the metric is built, not in the first update() (inside training)
        check_model(model)
        ensure_group(group)
        check_include_identity(include_identity)
        if not isinstance(eval_mode, bool):
            raise TypeError(f"eval_mode must be True (measure in eval() mode) or False; got {eval_mode!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive int (group elements per forward) or None; got {chunk_size!r}"
            )
        chosen = measured_elements(group, elements, seed)
        els = resolve_elements(group, chosen)
        super().__init__([group.element_name(g) for g in els], averaged_rows(group, els, include_identity), **kwargs)
        # held, not registered: the model is neither in the metric's state_dict() nor moved by metric.to()
        object.__setattr__(self, "model", model)
        self.group = group
        self.elements = chosen  # None: the whole finite group (its orbit's first row is f(x)); else the list
        self._measured = els  # the rows' elements, also when elements=None (for merge_state)
        self.include_identity = include_identity
        self.eval_mode = eval_mode
        self.chunk_size = chunk_size

    def _orbit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x)`` and the outputs on the measured elements, in one forward, without autograd."""
        with torch.no_grad():
            if self.elements is None:
                out = orbit_outputs(self.model, self.group, x, eval_mode=self.eval_mode, chunk_size=self.chunk_size)
                return out[0], out
            rows = [self.group.identity, *self.elements]
            out = orbit_outputs(
                self.model, self.group, x, eval_mode=self.eval_mode, chunk_size=self.chunk_size, elements=rows
            )
            return out[0], out[1:]

    def _empty_batch(self, x: object) -> bool:
        """Whether ``x`` is an empty batch ``(0, ...)`` the group could act on: its update adds nothing.

        An empty selection (``x[mask]`` with no sample picked) is a legal batch, as an empty matrix of terms is for
        :meth:`update_terms`; a tensor of the wrong shape still raises.
        """
        if not isinstance(x, Tensor) or x.dim() <= self.group.event_ndim or x.shape[0] != 0:
            return False
        self.group.check_input(x)
        return True

    def update(self, x: Tensor, y: Tensor | None = None) -> None:  # type: ignore[override]
        """Add the batch ``x`` (``y`` is accepted for a uniform loop and ignored); an empty batch adds nothing."""
        if isinstance(x, _Terms):
            self._add(x.values)
            return
        if self._empty_batch(x):
            return
        fx, fgx = (x.fx, x.fgx) if isinstance(x, _Outputs) else self._orbit(x)
        self._add(type(self)._terms(fx.detach(), fgx.detach()))

    def update_from_outputs(self, fx: Tensor, fgx: Tensor) -> None:
        """Add a batch from outputs already computed: ``fx`` ``(B, ...)`` and ``fgx`` ``(n_elements, B, ...)``.

        Row ``i`` of ``fgx`` holds the outputs on ``g_i · x`` for the measured elements (by default
        ``group.elements()``, identity first).
        """
        if isinstance(fgx, Tensor) and fgx.dim() >= 1 and fgx.shape[0] != self.n_elements:
            raise ValueError(
                f"fgx must hold one row per measured element of {self.group!r} ({self.n_elements}), "
                f"got {fgx.shape[0]} rows"
            )
        self.update(_Outputs(fx, fgx))

    def _describe(self) -> str:
        return f"{self.group!r} elements {self.element_names}"

    def _check_mergeable(self, other: _OrbitTermsMetric) -> None:
        same_group = other.group is self.group or (
            type(other.group) is type(self.group) and repr(other.group) == repr(self.group)
        )
        same_elements = (
            same_group
            and len(other._measured) == len(self._measured)
            and all(self.group.same_element(g, h) for g, h in zip(self._measured, other._measured))
        )
        if not (same_group and same_elements):
            raise ValueError(
                f"cannot merge {type(self).__name__} over {self._describe()} with one over {other._describe()}: "
                "merge only metrics of the same group and elements"
            )
        super()._check_mergeable(other)
        if getattr(other, "config", None) != getattr(self, "config", None):
            raise ValueError(
                f"cannot merge {type(self).__name__} with saliency options {self.config} with one with "
                f"{other.config}: merge only metrics of the same options"
            )

    def extra_repr(self) -> str:
        return f"group={self.group!r}, n_samples={self.n_samples}"


class DistributionInvariance(_BoundMetric):
    r"""Predictive distribution invariance DI (paper eq. 1) accumulated over batches.

    After updates with batches that together hold the samples
    :math:`x_1..x_N`,

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G} \setminus \{e\}}
        D_{KL}\big(\mathrm{softmax} f(x_b) \,\|\, \mathrm{softmax} f(g x_b)\big)

    with :math:`n` the number of non-identity elements (``include_identity=True``:
    all elements), which equals :func:`~torchinvariance.distribution_invariance`
    with ``reduction="mean"`` on the concatenated data.
    :meth:`compute_per_element` gives the mean per group element (every element,
    identity included), :meth:`compute_std` the standard deviation over samples of
    :math:`v_b`, the sample's mean over the averaged elements, and
    :meth:`compute_count` the number of samples.

    The metric is a :class:`torchmetrics.Metric`: it works in a
    :class:`~torchmetrics.MetricCollection`, moves with ``.to(device)``, keeps
    its states in ``state_dict()``, and Lightning's ``self.log(name, metric)``
    accepts it. The model is held, not registered: it is not part of the
    metric's ``state_dict()`` and ``metric.to()`` does not move it.
    ``compute()`` returns the metric's ``dtype`` (float32 by default, as
    torchmetrics; ``set_dtype(torch.float64)`` for float64); the sums stay
    float64 whatever the dtype. Under :mod:`torch.distributed` the states are
    summed over processes by torchmetrics in ``compute*()`` (every process must
    call it; ``sync_on_compute=False`` turns that off). In a
    :class:`~torchmetrics.MetricCollection`, pass ``compute_groups=False`` when
    it holds two metrics of the same class: torchmetrics merges metrics whose
    states are equal after the first batch, which two exactly invariant models
    would be.

    Args:
        model: classifier returning logits.
        group: the group.
        elements: the elements to measure, fixed for the metric's life (its
            rows): ``None`` (default) every element of a finite group,
            identity first; a list of elements (e.g. angles in degrees for
            ``so2``); or an int ``k``, ``k`` elements drawn once, when the
            metric is built, with a generator seeded by ``seed`` (for a
            continuous group ``group.sample(k)`` sorted by value, for a finite
            group ``k`` distinct non-identity elements). A continuous group
            needs a list or ``k``. Unlike :class:`~torchinvariance.InvarianceLoss`, whose
            ``elements=k`` draws anew on every call, a metric keeps its rows.
        seed: the seed of the draw for ``elements=k`` (default 0): the same
            ``(k, seed)`` gives the same elements on every process.
        include_identity: ``False`` (default): ``compute()`` averages over the
            non-identity elements; ``True``: over all of them.
        eval_mode: measure with the model in ``eval()`` mode (default), see
            :func:`~torchinvariance.distribution_invariance`.
        chunk_size: at most this many group elements per forward.
        **kwargs: options of :class:`torchmetrics.Metric` (``sync_on_compute``,
            ``process_group``, ``dist_sync_fn``, ...).

    Raises:
        ValueError: (when built) a continuous group without ``elements``, an
            element the group rejects, a finite group whose ``elements()`` is
            not a valid listing, ``k < 1`` or not below a finite group's order, a
            bad ``chunk_size`` or ``seed``.
        TypeError: (when built) a model that is not callable, a group that is
            not a :class:`~torchinvariance.Group`, ``elements``,
            ``include_identity`` or ``eval_mode`` of the wrong type.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> metric = ti.DistributionInvariance(model, ti.get_group("rotation", order=4))
        >>> for _ in range(3):
        ...     metric.update(torch.randn(8, 1, 4, 4))
        >>> metric.n_samples, metric.compute().dtype, metric.compute_per_element().shape
        (24, torch.float32, torch.Size([4]))
        >>> metric.element_names
        ['rot0', 'rot90', 'rot180', 'rot270']
        >>> metric.reset()
        >>> so2 = ti.get_group("so2")  # a continuous group: a list of angles, or k angles drawn with a seed
        >>> ti.DistributionInvariance(model, so2, elements=[0.0, 45.0, 90.0]).element_names
        ['rot0', 'rot45', 'rot90']
        >>> ti.DistributionInvariance(model, so2, elements=3, seed=1).elements == ti.DistributionInvariance(
        ...     model, so2, elements=3, seed=1).elements
        True
    """

    higher_is_better: ClassVar[bool] = False
    _prefix: ClassVar[str] = "di"
    _terms = staticmethod(di_terms)


class LogitInvariance(_BoundMetric):
    r"""Logit invariance LI (paper eq. 2) accumulated over batches.

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G} \setminus \{e\}}
        \tfrac12 \big\lVert f(x_b) - f(g x_b) \big\rVert_2^2

    equal to :func:`~torchinvariance.logit_invariance` with ``reduction="mean"``
    on the concatenated data (:math:`n` the number of non-identity elements;
    ``include_identity=True``: all elements). Accumulation, dtype, DDP and
    torchmetrics behaviour as in :class:`DistributionInvariance`.

    Args:
        model: module returning ``(N, ...)``.
        group: the group.
        elements: as in :class:`DistributionInvariance`.
        seed: as in :class:`DistributionInvariance`.
        include_identity: as in :class:`DistributionInvariance`.
        eval_mode: measure with the model in ``eval()`` mode (default), see
            :func:`~torchinvariance.logit_invariance`.
        chunk_size: at most this many group elements per forward.
        **kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch, torchinvariance as ti
        >>> from torchmetrics import MetricCollection
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> group = ti.get_group("flip")
        >>> metrics = MetricCollection({"li": ti.LogitInvariance(model, group),
        ...                             "di": ti.DistributionInvariance(model, group)})
        >>> metrics.update(torch.ones(4, 1, 4, 4))  # flip-symmetric inputs
        >>> sorted((k, v.item()) for k, v in metrics.compute().items())
        [('di', 0.0), ('li', 0.0)]
    """

    higher_is_better: ClassVar[bool] = False
    _prefix: ClassVar[str] = "li"
    _terms = staticmethod(li_terms)


class SaliencyInvariance(_BoundMetric):
    r"""Saliency invariance similarity SI (paper eq. 3) accumulated over batches.

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G} \setminus \{e\}}
        \frac{m_f(x_b) \cdot g^{-1} m_f(g x_b)}
             {\lVert m_f(x_b) \rVert_2 \, \lVert g^{-1} m_f(g x_b) \rVert_2}

    equal to :func:`~torchinvariance.saliency_invariance` with
    ``reduction="mean"`` on the concatenated data (:math:`n` the number of
    non-identity elements, whose similarity is 1 for any model;
    ``include_identity=True``: all elements); the target class of each sample
    is the model's prediction on it. Accumulation, dtype, DDP and torchmetrics
    behaviour as in :class:`DistributionInvariance`. Integrated gradients run
    in plain torch by default; ``backend="captum"`` needs captum
    (``pip install torchinvariance[saliency]``).

    Args:
        model: classifier returning logits, in ``eval()`` mode.
        group: a group acting on images.
        n_steps: integration steps.
        threshold: see :func:`~torchinvariance.saliency_map`.
        kernel_size: see :func:`~torchinvariance.saliency_map`.
        sigma: see :func:`~torchinvariance.saliency_map`.
        internal_batch_size: rows per forward/backward pass (at least
            ``group.order * B``).
        padding: see :func:`~torchinvariance.saliency_map`.
        backend: ``"torch"`` (default) or ``"captum"``, see
            :func:`~torchinvariance.saliency_map`.
        elements: as in :class:`DistributionInvariance`.
        seed: as in :class:`DistributionInvariance`.
        include_identity: as in :class:`DistributionInvariance`.
        eval_mode: attribute with the model in ``eval()`` mode (default).
        config: a :class:`~torchinvariance.SaliencyConfig`; when given, it
            replaces the seven recipe options above.
        **kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> metric = ti.SaliencyInvariance(model, ti.get_group("rotation", order=2), n_steps=8)
        >>> metric.update(torch.randn(4, 1, 6, 6))
        >>> 0.0 <= metric.compute().item() <= 1.0
        True
    """

    higher_is_better: ClassVar[bool] = True
    _prefix: ClassVar[str] = "si"

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        group: Group,
        n_steps: int = 50,
        threshold: float = 0.9,
        kernel_size: int = 3,
        sigma: float = 1.0,
        internal_batch_size: int | None = None,
        *,
        padding: Padding = "circular",
        backend: Backend = "torch",
        elements: Sequence | int | None = None,
        seed: int = 0,
        include_identity: bool = False,
        eval_mode: bool = True,
        config: SaliencyConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if config is not None and not isinstance(config, SaliencyConfig):
            raise TypeError(f"config must be a SaliencyConfig (the SI recipe) or None; got {type(config).__name__}")
        cfg = config or SaliencyConfig(n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend)
        super().__init__(
            model,
            group,
            elements=elements,
            seed=seed,
            include_identity=include_identity,
            eval_mode=eval_mode,
            **kwargs,
        )
        self.config = cfg

    def update(self, x: Tensor, y: Tensor | None = None) -> None:  # type: ignore[override]
        """Add the batch ``x`` (``y`` is accepted for a uniform loop and ignored); an empty batch adds nothing."""
        if isinstance(x, _Terms):
            self._add(x.values)
            return
        if self._empty_batch(x):
            return
        terms = saliency_terms(
            self.model, self.group, x, None, self.config, eval_mode=self.eval_mode, elements=self.elements
        )
        self._add(terms)

    def update_from_outputs(self, fx: Tensor, fgx: Tensor) -> None:
        raise TypeError("SaliencyInvariance needs the model's gradients, not its outputs: call update(x)")


class _OrbitAccuracy(_OrbitTermsMetric):
    """Accuracy on every element of the orbit: terms ``[argmax f(g x_b) = y_b]``, mean over all elements."""

    higher_is_better: ClassVar[bool] = True
    _prefix: ClassVar[str] = "accuracy"


class _OrbitConsistency(_OrbitTermsMetric):
    r"""Top-1 consistency: terms :math:`[\arg\max f(g x_b) = \arg\max f(x_b)]`.

    Besides the per-element means, it counts the samples whose prediction is the same on every averaged element
    (``compute_orbit()``).
    """

    higher_is_better: ClassVar[bool] = True
    _prefix: ClassVar[str] = "consistency"

    def __init__(self, element_names: Sequence[str], rows: Sequence[bool], **kwargs: Any) -> None:
        super().__init__(element_names, rows, **kwargs)
        self.add_state("consistency_orbit_sum", torch.zeros((), dtype=F64), dist_reduce_fx="sum", persistent=True)

    def _add(self, values: Tensor) -> None:
        super()._add(values)
        v = values.detach().to(device=self.consistency_orbit_sum.device, dtype=F64)
        self.consistency_orbit_sum = (
            self.consistency_orbit_sum + v[torch.as_tensor(self.rows, device=v.device)].amin(0).sum()
        )

    def compute_orbit(self) -> Tensor:
        """Fraction of samples whose top-1 class is the same on every averaged element."""
        return self._synced(
            lambda: (self.consistency_orbit_sum / self._checked_sums("compute_orbit")[2]).to(self.dtype)
        )
