"""torchinvariance: genuine invariance without weight-tying, and the tools to prove it.

The public API is flat: ``import torchinvariance as ti`` and use ``ti.get_group``,
``ti.InvarianceLoss``, ... See the documentation for the full reference.
"""

from torchinvariance import (
    actions,
    divergences,
    groups,
    metrics,
    models,
    orbit,
    plot,
    registry,
    robustness,
    spectral,
    symmetry,
    testing,
)
from torchinvariance.actions import OutputAction
from torchinvariance.divergences import kl_divergence, l2_divergence, normalized_l2_divergence
from torchinvariance.groups import (
    SO2,
    ContinuousGroup,
    CyclicGroup,
    Dihedral,
    Flip,
    Group,
    Rotation,
    Scale,
    Translation,
)
from torchinvariance.losses import EquivarianceLoss, InvarianceLoss, WeightedInvarianceLoss
from torchinvariance.metrics import (
    DistributionInvariance,
    InvarianceReport,
    LogitInvariance,
    SaliencyConfig,
    SaliencyInvariance,
    distribution_invariance,
    evaluate_invariance,
    interpolation_floor,
    logit_invariance,
    saliency_invariance,
    saliency_map,
)
from torchinvariance.models import MLP, EscnnInvariantMLP, GroupAveraged, GroupInvariantMLP
from torchinvariance.orbit import orbit_forward
from torchinvariance.registry import GroupRegistry, get_group, hookimpl, hookspec, list_groups, register_group
from torchinvariance.robustness import FlipResult, WorstCaseResult, smallest_flip, worst_case
from torchinvariance.spectral import jacobian_spectral_norm, weight_spectral_norms
from torchinvariance.symmetry import SymmetrySpectrum, discover_symmetries
from torchinvariance.testing import (
    assert_equivariant,
    assert_invariant,
    check_group,
    equivariance_error,
    invariance_error,
)

__version__ = "0.1.0"

__all__ = [
    "SO2",
    "ContinuousGroup",
    "CyclicGroup",
    "Dihedral",
    "DistributionInvariance",
    "EquivarianceLoss",
    "EscnnInvariantMLP",
    "Flip",
    "FlipResult",
    "Group",
    "GroupAveraged",
    "GroupInvariantMLP",
    "GroupRegistry",
    "InvarianceLoss",
    "InvarianceReport",
    "LogitInvariance",
    "MLP",
    "OutputAction",
    "Rotation",
    "SaliencyConfig",
    "SaliencyInvariance",
    "Scale",
    "SymmetrySpectrum",
    "Translation",
    "WeightedInvarianceLoss",
    "WorstCaseResult",
    "__version__",
    "actions",
    "assert_equivariant",
    "assert_invariant",
    "check_group",
    "distribution_invariance",
    "discover_symmetries",
    "divergences",
    "equivariance_error",
    "evaluate_invariance",
    "get_group",
    "interpolation_floor",
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
    "orbit",
    "orbit_forward",
    "plot",
    "register_group",
    "registry",
    "robustness",
    "saliency_invariance",
    "saliency_map",
    "smallest_flip",
    "spectral",
    "symmetry",
    "testing",
    "weight_spectral_norms",
    "worst_case",
]
