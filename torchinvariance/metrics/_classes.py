r"""Stateful invariance metrics that accumulate over a dataset (torchmetrics pattern).

The math lives in :mod:`torchinvariance.metrics._functional` (DI, LI) and
:mod:`torchinvariance.metrics.saliency` (SI); the classes only add up, in
float64 on the CPU, the per-element sums of the terms, the sum of squared
per-sample values and the sample count. :meth:`compute` reduces these
states across processes with ``all_reduce`` when :mod:`torch.distributed` is
initialized, so under DDP every rank gets the metric of the whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from torchinvariance._checks import check_model
from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics._functional import di_terms, li_terms, orbit_outputs
from torchinvariance.metrics.saliency import Backend, Padding, SaliencyConfig, saliency_terms

__all__ = ["DistributionInvariance", "LogitInvariance", "SaliencyInvariance"]


class _OrbitAccumulator:
    r"""Float64 sums of a ``(n_elements, batch)`` matrix of terms, DDP-reduced on compute.

    A sample's value is the mean of its terms over the group elements
    :math:`v_b = \frac1n \sum_i d_{ib}`; the states are
    :math:`\sum_b d_{ib}` per element, :math:`\sum_b v_b^2` and the count.
    """

    def __init__(self, n_elements: int, sync_dist: bool = True) -> None:
        self.n_elements = n_elements
        self.sync_dist = bool(sync_dist)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sum = torch.zeros(self.n_elements, dtype=torch.float64)
        self._sumsq = torch.zeros((), dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)

    def update_terms(self, values: Tensor) -> None:
        """Add a ``(n_elements, batch)`` matrix of per-element, per-sample terms."""
        if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[0] != self.n_elements:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"expected terms shaped ({self.n_elements}, batch), got {got}")
        v = values.detach().to(device="cpu", dtype=torch.float64)
        self._sum += v.sum(1)
        self._sumsq += v.mean(0).pow(2).sum()
        self._count += v.shape[1]

    def _states(self) -> tuple[Tensor, Tensor, Tensor]:
        """The states, summed over all processes when a process group is initialized."""
        packed = torch.cat([self._sum, self._sumsq.reshape(1), self._count.reshape(1)])
        if self.sync_dist and dist.is_available() and dist.is_initialized():
            device = torch.device("cpu")
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            packed = packed.to(device)  # torch.cat made a copy: the local states stay untouched
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            packed = packed.cpu()
        n = self.n_elements
        count = packed[n + 1]
        if count == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any update()")
        return packed[:n], packed[n], count

    @property
    def n_samples(self) -> int:
        """Number of samples seen (by this process)."""
        return int(self._count.item())

    def compute_count(self) -> int:
        """Number of samples seen by all processes (synchronized like :meth:`compute`)."""
        return int(self._states()[2].item())

    def compute(self) -> Tensor:
        """Mean over samples and group elements (float64 scalar)."""
        total, _, count = self._states()
        return total.sum() / (count * self.n_elements)

    def compute_per_element(self) -> Tensor:
        """Mean over samples for each group element, ``(n_elements,)`` float64."""
        total, _, count = self._states()
        return total / count

    def compute_std(self) -> Tensor:
        """Standard deviation over samples (ddof=0) of the per-sample values :math:`v_b`."""
        total, sumsq, count = self._states()
        mean = total.sum() / (count * self.n_elements)
        return (sumsq / count - mean**2).clamp_min(0.0).sqrt()


class _InvarianceMetric(_OrbitAccumulator):
    """A metric bound to a model and a group: ``update(x)`` runs the orbit, ``update_from_outputs`` takes it."""

    _terms: Callable[[Tensor, Tensor], Tensor]

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        group: Group,
        *,
        sync_dist: bool = True,
        eval_mode: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        check_model(model)
        ensure_group(group)
        self.model = model
        self.group = group
        self.eval_mode = bool(eval_mode)
        self.chunk_size = chunk_size
        super().__init__(group.order, sync_dist=sync_dist)

    def update(self, x: Tensor, y: Tensor | None = None) -> None:
        """Add the batch ``x`` (``y`` is accepted for a uniform loop and ignored)."""
        with torch.no_grad():
            out = orbit_outputs(self.model, self.group, x, eval_mode=self.eval_mode, chunk_size=self.chunk_size)
        self.update_terms(type(self)._terms(out[0], out))

    def update_from_outputs(self, fx: Tensor, fgx: Tensor) -> None:
        """Add a batch from outputs already computed: ``fx`` ``(B, ...)`` and ``fgx`` ``(group.order, B, ...)``.

        Row ``i`` of ``fgx`` holds the outputs on ``group.elements()[i] · x`` (identity first).
        """
        if isinstance(fgx, Tensor) and fgx.dim() >= 1 and fgx.shape[0] != self.n_elements:
            raise ValueError(
                f"fgx must hold one row per element of {self.group!r} ({self.n_elements}), got {fgx.shape[0]} rows"
            )
        self.update_terms(type(self)._terms(fx.detach(), fgx.detach()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(group={self.group!r}, n_samples={self.n_samples})"


class DistributionInvariance(_InvarianceMetric):
    r"""Predictive distribution invariance DI (paper eq. 1) accumulated over batches.

    After updates with batches that together hold the samples
    :math:`x_1..x_N`,

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G}}
        D_{KL}\big(\mathrm{softmax} f(x_b) \,\|\, \mathrm{softmax} f(g x_b)\big)

    which equals :func:`~torchinvariance.distribution_invariance` with
    ``reduction="mean"`` on the concatenated data (mean over samples and all
    :math:`n` group elements, identity included). :meth:`compute_per_element`
    gives the mean per group element and :meth:`compute_std` the standard
    deviation over samples of :math:`v_b = \frac1n \sum_g D_{KL}(\cdot)`.
    Sums are kept in float64 on the CPU; under DDP the states are
    ``all_reduce``-d in ``compute*()`` (``sync_dist=False`` to disable).

    Args:
        model: classifier returning logits.
        group: the finite group.
        sync_dist: reduce across processes when :mod:`torch.distributed` is
            initialized.
        eval_mode: measure with the model in ``eval()`` mode (default), see
            :func:`~torchinvariance.distribution_invariance`.
        chunk_size: at most this many group elements per forward.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> metric = ti.DistributionInvariance(model, ti.get_group("rotation", order=4))
        >>> for _ in range(3):
        ...     metric.update(torch.randn(8, 1, 4, 4))
        >>> metric.n_samples, metric.compute().dtype, metric.compute_per_element().shape
        (24, torch.float64, torch.Size([4]))
        >>> metric.reset()
    """

    _terms = staticmethod(di_terms)


class LogitInvariance(_InvarianceMetric):
    r"""Logit invariance LI (paper eq. 2) accumulated over batches.

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G}}
        \tfrac12 \big\lVert f(x_b) - f(g x_b) \big\rVert_2^2

    equal to :func:`~torchinvariance.logit_invariance` with
    ``reduction="mean"`` on the concatenated data. Accumulation, std and DDP
    behaviour as in :class:`DistributionInvariance`.

    Args:
        model: module returning ``(N, ...)``.
        group: the finite group.
        sync_dist: reduce across processes when :mod:`torch.distributed` is
            initialized.
        eval_mode: measure with the model in ``eval()`` mode (default), see
            :func:`~torchinvariance.logit_invariance`.
        chunk_size: at most this many group elements per forward.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> metric = ti.LogitInvariance(model, ti.get_group("flip"))
        >>> metric.update(torch.ones(4, 1, 4, 4))  # flip-symmetric inputs
        >>> metric.compute()
        tensor(0., dtype=torch.float64)
    """

    _terms = staticmethod(li_terms)


class SaliencyInvariance(_InvarianceMetric):
    r"""Saliency invariance similarity SI (paper eq. 3) accumulated over batches.

    .. math::
        \mathrm{compute}() = \frac{1}{nN} \sum_{b=1}^{N} \sum_{g \in \mathcal{G}}
        \frac{m_f(x_b) \cdot g^{-1} m_f(g x_b)}
             {\lVert m_f(x_b) \rVert_2 \, \lVert g^{-1} m_f(g x_b) \rVert_2}

    equal to :func:`~torchinvariance.saliency_invariance` with
    ``reduction="mean"`` on the concatenated data; the target class of each
    sample is the model's prediction on it. Accumulation, std and DDP
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
        sync_dist: reduce across processes when :mod:`torch.distributed` is
            initialized.
        eval_mode: attribute with the model in ``eval()`` mode (default).
        config: a :class:`~torchinvariance.SaliencyConfig`; when given, it
            replaces the seven recipe options above.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        >>> metric = ti.SaliencyInvariance(model, ti.get_group("rotation", order=2), n_steps=8)
        >>> metric.update(torch.randn(4, 1, 6, 6))
        >>> 0.0 <= metric.compute().item() <= 1.0
        True
    """

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
        sync_dist: bool = True,
        eval_mode: bool = True,
        config: SaliencyConfig | None = None,
    ) -> None:
        self.config = config or SaliencyConfig(
            n_steps, threshold, kernel_size, sigma, internal_batch_size, padding, backend
        )
        super().__init__(model, group, sync_dist=sync_dist, eval_mode=eval_mode)

    def update(self, x: Tensor, y: Tensor | None = None) -> None:
        """Add the batch ``x`` (``y`` is accepted for a uniform loop and ignored)."""
        self.update_terms(saliency_terms(self.model, self.group, x, None, self.config, eval_mode=self.eval_mode))

    def update_from_outputs(self, fx: Tensor, fgx: Tensor) -> None:
        raise TypeError("SaliencyInvariance needs the model's gradients, not its outputs: call update(x)")
