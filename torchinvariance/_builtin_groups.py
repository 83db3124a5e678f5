"""The built-in groups, registered through the same hook as third-party plugins."""

from __future__ import annotations

from torchinvariance._hooks import RegisterFn, hookimpl
from torchinvariance.groups import Dihedral, Flip, Rotation, Translation


@hookimpl
def torchinvariance_register_groups(register: RegisterFn) -> None:
    register("rotation", Rotation)
    register("translation", Translation)
    register("flip", Flip)
    register("dihedral", Dihedral)
