"""torchinvariance: genuine invariance without weight-tying, and the tools to prove it.

The public API is flat: ``import torchinvariance as ti`` and use ``ti.get_group``,
``ti.InvarianceLoss``, ... See the documentation for the full reference.
"""

from torchinvariance import groups, metrics, spectral
from torchinvariance._hooks import hookimpl, hookspec
from torchinvariance.groups import CyclicGroup, Dihedral, Flip, Group, Rotation, Translation
from torchinvariance.losses import (
    InvarianceLoss,
    WeightedInvarianceLoss,
    kl_divergence,
    l2_divergence,
    normalized_l2_divergence,
)
from torchinvariance.metrics import (
    DistributionInvariance,
    InvarianceReport,
    LogitInvariance,
    SaliencyInvariance,
    distribution_invariance,
    evaluate_invariance,
    logit_invariance,
    saliency_invariance,
    saliency_map,
)
from torchinvariance.registry import GroupRegistry, get_group, list_groups, register_group
from torchinvariance.spectral import jacobian_spectral_norm, weight_spectral_norms

__version__ = "0.1.0"

__all__ = [
    "CyclicGroup",
    "Dihedral",
    "DistributionInvariance",
    "Flip",
    "Group",
    "GroupRegistry",
    "InvarianceLoss",
    "InvarianceReport",
    "LogitInvariance",
    "Rotation",
    "SaliencyInvariance",
    "Translation",
    "WeightedInvarianceLoss",
    "__version__",
    "distribution_invariance",
    "evaluate_invariance",
    "get_group",
    "groups",
    "hookimpl",
    "hookspec",
    "jacobian_spectral_norm",
    "kl_divergence",
    "l2_divergence",
    "list_groups",
    "logit_invariance",
    "metrics",
    "normalized_l2_divergence",
    "register_group",
    "saliency_invariance",
    "saliency_map",
    "spectral",
    "weight_spectral_norms",
]
