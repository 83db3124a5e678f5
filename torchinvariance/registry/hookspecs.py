"""The hook plugin authors implement, and the pluggy markers.

One project name everywhere: ``"torchinvariance"`` for the markers, the hook
prefix ``torchinvariance_`` and the entry-point group
``[project.entry-points.torchinvariance]``.

A plugin is a module with one function, marked with :data:`hookimpl`::

    import torchinvariance as ti

    class TimeReversal(ti.CyclicGroup):
        event_ndim = 1

        def __init__(self):
            super().__init__(2)

        def transform(self, g, x):  # the action; inputs are already validated
            return x.flip(-1) if g else x

    @ti.hookimpl
    def torchinvariance_register_groups(register):
        register("time_reversal", TimeReversal)

and an entry point in the plugin package's ``pyproject.toml``::

    [project.entry-points.torchinvariance]
    my_groups = "my_package.groups"
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from torchinvariance.groups import Group

__all__ = ["PROJECT_NAME", "GroupFactory", "RegisterFn", "hookimpl", "hookspec", "torchinvariance_register_groups"]

PROJECT_NAME = "torchinvariance"

#: Marks hook specifications (used by torchinvariance itself).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin's hook implementation: ``@ti.hookimpl def torchinvariance_register_groups(register): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

GroupFactory = Callable[..., Group]
RegisterFn = Callable[[str, GroupFactory], None]


@hookspec
def torchinvariance_register_groups(register: RegisterFn) -> None:
    """Register groups by calling ``register(name, factory)`` for each.

    ``factory(**params)`` must return a :class:`~torchinvariance.groups.Group`;
    :func:`~torchinvariance.get_group` calls it with the user's parameters and
    sets the group's ``name`` to ``name``. Built-in groups are registered
    through this same hook (``torchinvariance.registry.builtin``).

    Registration is all-or-nothing per plugin: if the hook raises, none of the
    groups it registered are kept, and the plugin is reported as skipped with a
    :class:`RuntimeWarning`. A name that is already taken makes ``register``
    raise :class:`ValueError` naming both providers.

    Example:
        A plugin module (listed under ``[project.entry-points.torchinvariance]``)::

            import torchinvariance as ti

            @ti.hookimpl
            def torchinvariance_register_groups(register):
                register("time_reversal", TimeReversal)
    """
