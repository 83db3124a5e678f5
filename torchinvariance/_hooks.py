"""pluggy markers and hook specifications of torchinvariance.

One project name everywhere: ``"torchinvariance"`` for the markers, the hook
prefix ``torchinvariance_`` and the entry-point group
``[project.entry-points.torchinvariance]``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from torchinvariance.groups import Group

PROJECT_NAME = "torchinvariance"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

GroupFactory = Callable[..., Group]
RegisterFn = Callable[[str, GroupFactory], None]


@hookspec
def torchinvariance_register_groups(register: RegisterFn) -> None:
    """Register groups by calling ``register(name, factory)`` for each.

    ``factory(**params)`` must return a :class:`~torchinvariance.groups.Group`.
    Built-in groups are registered through this same hook.

    Example:
        A plugin module (listed under ``[project.entry-points.torchinvariance]``)::

            import torchinvariance as ti

            @ti.hookimpl
            def torchinvariance_register_groups(register):
                register("time_reversal", TimeReversal)
    """
