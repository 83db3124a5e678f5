"""Groups acting on tensors (the bottom layer: no models, no losses).

- :class:`Group`, :class:`CyclicGroup`: finite groups with integer elements;
- the exact image groups :class:`Rotation`, :class:`Translation`, :class:`Flip`, :class:`Dihedral`;
- :class:`ContinuousGroup` and the interpolating :class:`SO2`, :class:`Scale`;
- :func:`check_group` (the axioms and the action) and :func:`validate_group` (the cheap checks).
"""

from torchinvariance.groups._base import CyclicGroup, Group, ensure_group
from torchinvariance.groups._check import check_group, listed_elements, validate_group
from torchinvariance.groups._continuous import SO2, ContinuousGroup, Scale
from torchinvariance.groups._image import Dihedral, Flip, Rotation, Translation

__all__ = [
    "SO2",
    "ContinuousGroup",
    "CyclicGroup",
    "Dihedral",
    "Flip",
    "Group",
    "Rotation",
    "Scale",
    "Translation",
    "check_group",
    "ensure_group",
    "listed_elements",
    "validate_group",
]
