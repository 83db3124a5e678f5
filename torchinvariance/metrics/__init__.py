"""Invariance metrics (paper §3.2): DI, LI, SI, their accumulating classes and a dataset report.

- pure functions: :func:`distribution_invariance`, :func:`logit_invariance`
  (``_functional``), :func:`saliency_invariance`, :func:`saliency_map` and the
  :class:`SaliencyConfig` of their recipe (``metrics/saliency.py``);
- accumulating metric objects, :class:`torchmetrics.Metric` subclasses
  (``update`` / ``compute`` / ``reset``, synced by torchmetrics under DDP):
  :class:`DistributionInvariance`, :class:`LogitInvariance`,
  :class:`SaliencyInvariance`;
- :func:`evaluate_invariance` over a data loader, returning an
  :class:`InvarianceReport`.
"""

from torchinvariance.metrics._classes import DistributionInvariance, LogitInvariance, SaliencyInvariance
from torchinvariance.metrics._functional import distribution_invariance, interpolation_floor, logit_invariance
from torchinvariance.metrics._report import InvarianceReport, evaluate_invariance
from torchinvariance.metrics.saliency import SaliencyConfig, realign_saliency, saliency_invariance, saliency_map

__all__ = [
    "DistributionInvariance",
    "InvarianceReport",
    "LogitInvariance",
    "SaliencyConfig",
    "SaliencyInvariance",
    "distribution_invariance",
    "evaluate_invariance",
    "interpolation_floor",
    "logit_invariance",
    "realign_saliency",
    "saliency_invariance",
    "saliency_map",
]
