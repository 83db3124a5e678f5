"""The built-in groups, registered through the same hook as third-party plugins.

Adding a built-in group: write its class in :mod:`torchinvariance.groups` (listed in
that module's ``__all__``), then add one ``register(...)`` line here.
"""

from __future__ import annotations

from torchinvariance.groups import SO2, Dihedral, Flip, Rotation, Scale, Translation
from torchinvariance.registry.hookspecs import RegisterFn, hookimpl


@hookimpl
def torchinvariance_register_groups(register: RegisterFn) -> None:
    """Register the built-in groups."""
    register("rotation", Rotation)
    register("translation", Translation)
    register("flip", Flip)
    register("dihedral", Dihedral)
    register("so2", SO2)
    register("scale", Scale)
