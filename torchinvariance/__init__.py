"""torchinvariance: genuine invariance without weight-tying, and the tools to prove it.

The public API is flat: ``import torchinvariance as ti`` and use ``ti.get_group``,
``ti.InvarianceLoss``, ... See the documentation for the full reference.
"""

from torchinvariance import groups, metrics, models, spectral, testing
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
from torchinvariance.models import MLP, EscnnInvariantMLP, GroupAveraged, GroupInvariantMLP
from torchinvariance.registry import GroupRegistry, get_group, list_groups, register_group
from torchinvariance.spectral import jacobian_spectral_norm, weight_spectral_norms
from torchinvariance.testing import assert_invariant, invariance_error

__version__ = "0.1.0"

__all__ = [
    "CyclicGroup",
    "Dihedral",
    "DistributionInvariance",
    "EscnnInvariantMLP",
    "Flip",
    "Group",
    "GroupAveraged",
    "GroupInvariantMLP",
    "GroupRegistry",
    "InvarianceLoss",
    "InvarianceReport",
    "LogitInvariance",
    "MLP",
    "Rotation",
    "SaliencyInvariance",
    "Translation",
    "WeightedInvarianceLoss",
    "__version__",
    "assert_invariant",
    "distribution_invariance",
    "evaluate_invariance",
    "get_group",
    "groups",
    "hookimpl",
    "hookspec",
    "invariance_error",
    "jacobian_spectral_norm",
    "kl_divergence",
    "l2_divergence",
    "list_groups",
    "logit_invariance",
    "metrics",
    "models",
    "normalized_l2_divergence",
    "register_group",
    "saliency_invariance",
    "saliency_map",
    "spectral",
    "testing",
    "weight_spectral_norms",
]
