"""torchinvariance: genuine invariance without weight-tying, and the tools to prove it.

The public API is flat: ``import torchinvariance as ti`` and use ``ti.get_group``,
``ti.InvarianceLoss``, ... See the documentation for the full reference.
"""

from torchinvariance import groups
from torchinvariance._hooks import hookimpl, hookspec
from torchinvariance.groups import CyclicGroup, Dihedral, Flip, Group, Rotation, Translation
from torchinvariance.losses import (
    InvarianceLoss,
    WeightedInvarianceLoss,
    kl_divergence,
    l2_divergence,
    normalized_l2_divergence,
)
from torchinvariance.registry import GroupRegistry, get_group, list_groups, register_group

__version__ = "0.1.0"

__all__ = [
    "CyclicGroup",
    "Dihedral",
    "Flip",
    "Group",
    "GroupRegistry",
    "InvarianceLoss",
    "Rotation",
    "Translation",
    "WeightedInvarianceLoss",
    "__version__",
    "get_group",
    "groups",
    "hookimpl",
    "hookspec",
    "kl_divergence",
    "l2_divergence",
    "list_groups",
    "normalized_l2_divergence",
    "register_group",
]
