"""The group registry: groups by name, built-in and from pluggy plugins.

- :mod:`torchinvariance.registry.hookspecs`: the hook a plugin implements and the
  ``hookimpl`` marker (the page plugin authors read);
- ``torchinvariance.registry.builtin``: the built-in groups, registered through
  that same hook;
- :class:`GroupRegistry` and the module-level :func:`get_group`,
  :func:`list_groups`, :func:`register_group` on the default registry.
"""

from torchinvariance.registry._registry import (
    DISABLE_AUTOLOAD_ENV,
    GroupRegistry,
    get_group,
    list_groups,
    register_group,
)
from torchinvariance.registry.hookspecs import PROJECT_NAME, hookimpl, hookspec

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "PROJECT_NAME",
    "GroupRegistry",
    "get_group",
    "hookimpl",
    "hookspec",
    "list_groups",
    "register_group",
]
