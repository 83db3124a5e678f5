"""Finite groups acting on tensors (the bottom layer: no models, no losses)."""

from torchinvariance.groups._base import CyclicGroup, Group, check_group
from torchinvariance.groups._image import Dihedral, Flip, Rotation, Translation

__all__ = ["CyclicGroup", "Dihedral", "Flip", "Group", "Rotation", "Translation", "check_group"]
