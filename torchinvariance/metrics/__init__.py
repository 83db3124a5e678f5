"""Invariance metrics (paper §3.2): DI, LI, SI, their accumulating classes and a dataset report.

- pure functions: :func:`distribution_invariance`, :func:`logit_invariance`,
  :func:`saliency_invariance`, :func:`saliency_map`;
- accumulating metric objects (``update`` / ``compute`` / ``reset``, DDP-safe):
  :class:`DistributionInvariance`, :class:`LogitInvariance`,
  :class:`SaliencyInvariance`;
- :func:`evaluate_invariance` over a data loader, returning an
  :class:`InvarianceReport`.
"""

from torchinvariance.metrics._classes import DistributionInvariance, LogitInvariance, SaliencyInvariance
from torchinvariance.metrics._functional import (
    distribution_invariance,
    logit_invariance,
    saliency_invariance,
    saliency_map,
)
from torchinvariance.metrics._report import InvarianceReport, evaluate_invariance

__all__ = [
    "DistributionInvariance",
    "InvarianceReport",
    "LogitInvariance",
    "SaliencyInvariance",
    "distribution_invariance",
    "evaluate_invariance",
    "logit_invariance",
    "saliency_invariance",
    "saliency_map",
]
