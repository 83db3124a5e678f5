"""The group registry itself: built-in groups and groups from pluggy plugins.

Plugins are third-party packages that declare an entry point in the group
``torchinvariance``::

    [project.entry-points.torchinvariance]
    my_groups = "my_package.groups"

The module ``my_package.groups`` implements the hook
:func:`~torchinvariance.registry.hookspecs.torchinvariance_register_groups` with
:data:`torchinvariance.hookimpl`. Entry points are loaded once, lazily, on the
first use of the registry; set ``TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD=1`` to
turn autoloading off.

Loading is thread-safe: every caller sees the fully loaded registry (other
threads wait while one loads). A plugin that fails to import or raises while
registering is skipped with a :class:`RuntimeWarning`, emitted only once the
registry is consistent; if anything else interrupts the load (e.g.
``KeyboardInterrupt``), the partial load is rolled back and the next call
loads again.

A plugin whose module holds no hook implementation (a
``torchinvariance_register_groups`` without ``@ti.hookimpl``, or a misspelled
hook name) adds nothing; it is reported with a :class:`UserWarning` saying
which function is wrong. The :class:`KeyError` for an unknown group names
every plugin that was found and what it registered.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from torchinvariance.groups import Group, check_group, validate_group
from torchinvariance.registry import builtin, hookspecs

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "GroupRegistry",
    "get_group",
    "list_groups",
    "register_group",
]

DISABLE_AUTOLOAD_ENV = "TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PROVIDER = "torchinvariance (built-in)"
_HOOK_NAME = "torchinvariance_register_groups"
#: the values of DISABLE_AUTOLOAD_ENV (stripped, lower case) that turn autoloading off, and those that keep it
_DISABLE_VALUES = ("1", "true", "yes", "on", "y")
_ENABLE_VALUES = ("", "0", "false", "no", "off", "n")


def _missing_hook_reason(plugin: object) -> str:
    """Why ``plugin`` (a module or class) has no ``torchinvariance_register_groups`` hook implementation."""
    marker = f"{hookspecs.PROJECT_NAME}_impl"  # the attribute pluggy's HookimplMarker sets
    reasons = []
    for attr in sorted(dir(plugin)):
        try:
            obj = getattr(plugin, attr)
        except Exception:
            continue
        if not callable(obj):
            continue
        marked = hasattr(obj, marker)
        if attr == _HOOK_NAME and not marked:
            reasons.append(f"{attr}() is not marked with @ti.hookimpl")
        elif attr != _HOOK_NAME and (marked or attr.startswith("torchinvariance_")):
            if marked or difflib.get_close_matches(attr, [_HOOK_NAME], n=1, cutoff=0.8):
                what = "hook implementation" if marked else "function"
                reasons.append(f"{what} {attr}() matches no torchinvariance hook (did you mean {_HOOK_NAME!r}?)")
    if not reasons:
        reasons.append(f"it defines no function {_HOOK_NAME}() marked with @ti.hookimpl")
    return "; ".join(reasons)


class GroupRegistry:
    """Maps group names to factories; fed by pluggy plugins.

    Args:
        autoload: load entry points of the ``torchinvariance`` group. ``None``
            (default) loads them unless the environment variable
            ``TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD`` is set to ``1``/``true``/``yes``/``on``
            (``0``/``false``/``no``/``off`` or unset keep it; any other value warns and keeps it).

    Example:
        >>> from torchinvariance.registry import GroupRegistry
        >>> reg = GroupRegistry(autoload=False)
        >>> "rotation" in reg.list_groups()
        True
        >>> reg.get("rotation", order=2)
        Rotation(order=2)
    """

    def __init__(self, autoload: bool | None = None) -> None:
        self._autoload = autoload
        self._factories: dict[str, tuple[Callable[..., Group], str]] = {}
        # entry-point plugins found by the load: provider -> (module, what became of it); shown for unknown names
        self._plugins: dict[str, tuple[str, str]] = {}
        self._loaded = False  # set only once the load has completed
        self._loading = False  # True while this registry's load runs (re-entrant calls from plugins)
        self._lock = threading.RLock()
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)

    # ----------------------------------------------------------------- loading
    def _autoload_enabled(self) -> bool:
        if self._autoload is not None:
            return self._autoload
        return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in _DISABLE_VALUES

    def _ensure_loaded(self) -> None:
        if self._loaded:  # only ever set after a complete load
            return
        problems: list[tuple[str, type[Warning]]] = []
        with self._lock:  # other threads wait here until the load is complete
            if self._loaded or self._loading:
                # loaded meanwhile, or a plugin uses the registry while it is being loaded (same thread)
                return
            self._loading = True
            try:
                self._load(problems)
                self._loaded = True
            except BaseException:
                self._rollback()
                raise
            finally:
                self._loading = False
        # warn only now: a warning turned into an error (python -W error) leaves a complete registry behind
        for msg, category in problems:
            warnings.warn(msg, category, stacklevel=4)

    def _load(self, problems: list[tuple[str, type[Warning]]]) -> None:
        if not self.plugin_manager.has_plugin(BUILTIN_PROVIDER):
            self.plugin_manager.register(builtin, name=BUILTIN_PROVIDER)
        value = os.environ.get(DISABLE_AUTOLOAD_ENV, "")
        if self._autoload is None and value.strip().lower() not in _DISABLE_VALUES + _ENABLE_VALUES:
            # "on" or "disable" read as "keep loading" without a word: say how the value was taken
            problems.append(
                (
                    f"{DISABLE_AUTOLOAD_ENV}={value!r} is not understood, so plugins are loaded; set it to 1 (or "
                    f"true/yes/on) to turn plugin autoloading off, or to 0 (or false/no/off, or unset it) to keep it",
                    UserWarning,
                )
            )
        if self._autoload_enabled():
            self._load_entry_points(problems)
        for impl in self.plugin_manager.hook.torchinvariance_register_groups.get_hookimpls():
            self._call_plugin(impl.plugin_name, impl.function, problems)

    def _rollback(self) -> None:
        """Forget a partial load: the next call starts over."""
        self._factories.clear()
        self._plugins.clear()
        for name, plugin in list(self.plugin_manager.list_name_plugin()):
            if name is not None and name != BUILTIN_PROVIDER and ":" in name:  # entry-point plugins
                self.plugin_manager.unregister(plugin, name=name)

    def _load_entry_points(self, problems: list[tuple[str, type[Warning]]]) -> None:
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != hookspecs.PROJECT_NAME:
                    continue
                dist_name = dist.metadata["name"] or "?"
                provider = f"{dist_name}:{ep.name}"
                if provider in seen or self.plugin_manager.has_plugin(provider):
                    continue
                seen.add(provider)
                try:
                    plugin = ep.load()
                    self.plugin_manager.register(plugin, name=provider)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    self._plugins[provider] = (ep.value, f"failed to load ({why})")
                    problems.append(
                        (
                            f"torchinvariance plugin {provider!r} (entry point {ep.value!r}) "
                            f"failed to load and was skipped: {why}",
                            RuntimeWarning,
                        )
                    )
                    continue
                hooks = {caller.name for caller in self.plugin_manager.get_hookcallers(plugin) or []}
                if _HOOK_NAME in hooks:
                    self._plugins[provider] = (ep.value, "registered no groups")  # until its hook has run
                    continue
                why = _missing_hook_reason(plugin)
                self._plugins[provider] = (ep.value, f"loaded and registered no groups: no hook implementation ({why})")
                problems.append(
                    (
                        f"torchinvariance plugin {provider!r} (module {ep.value}) loaded but registers no hook "
                        f"implementation, so it adds no groups: {why}. Expected "
                        f"'@ti.hookimpl def {_HOOK_NAME}(register): ...' in that module.",
                        UserWarning,
                    )
                )

    def _call_plugin(self, provider: str, hook: Callable[..., None], problems: list[tuple[str, type[Warning]]]) -> None:
        """Run one plugin's hook; its registrations are kept only if the whole hook succeeds."""
        staged: dict[str, tuple[Callable[..., Group], str]] = {}

        def register(name: str, factory: Callable[..., Group]) -> None:
            self._check_new(name, factory, provider, staged)
            staged[name] = (factory, provider)

        try:
            hook(register=register)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if provider in self._plugins:
                self._plugins[provider] = (self._plugins[provider][0], f"raised while registering groups ({why})")
            problems.append(
                (
                    f"torchinvariance plugin {provider!r} raised while registering groups "
                    f"and was skipped (none of its groups were registered): {why}",
                    RuntimeWarning,
                )
            )
            return
        self._factories.update(staged)
        if provider in self._plugins:
            what = f"registered groups {sorted(staged)}" if staged else "loaded and registered no groups"
            self._plugins[provider] = (self._plugins[provider][0], what)

    def _check_new(
        self,
        name: str,
        factory: Callable[..., Group],
        provider: str,
        staged: dict[str, tuple[Callable[..., Group], str]] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"group names are non-empty strings without surrounding spaces, got {name!r}")
        if isinstance(factory, Group):
            raise TypeError(
                f"factory for group {name!r} must be callable (factory(**params) -> Group), got the group "
                f"{factory!r} itself: register its class, or a function returning it (lambda: group)"
            )
        if not callable(factory):
            raise TypeError(f"factory for group {name!r} must be callable, got {factory!r}")
        if isinstance(factory, type) and issubclass(factory, Group):
            order = inspect.getattr_static(factory, "order", None)
            if callable(order) and not isinstance(order, property):
                raise TypeError(
                    f"group {name!r} ({provider}): {factory.__name__}.order is a method; it must be an int property "
                    "(decorate it with @property) or an int class attribute"
                )
        taken = self._factories.get(name) or (staged or {}).get(name)
        if taken is not None:
            raise ValueError(
                f"group {name!r} is already registered by {taken[1]!r}; "
                f"{provider!r} tried to register it again. Pick another name."
            )

    def _add(self, name: str, factory: Callable[..., Group], provider: str) -> None:
        with self._lock:
            self._check_new(name, factory, provider)
            self._factories[name] = (factory, provider)

    # -------------------------------------------------------------- public API
    def register(
        self, name: str, factory: Callable[..., Group], *, provider: str = "user", check: bool = False
    ) -> None:
        """Register ``factory`` under ``name``; duplicates raise :class:`ValueError`.

        Args:
            name: the registry name.
            factory: ``factory(**params) -> Group``.
            provider: who registers it (shown in errors).
            check: build ``factory()`` with its default parameters and run the full
                :func:`~torchinvariance.check_group` before registering.
        """
        if not isinstance(check, bool):
            raise TypeError(f"check must be True (build factory() and run check_group) or False; got {check!r}")
        self._ensure_loaded()
        if check:
            self._check_new(name, factory, provider)  # a bad name or factory says so before anything is built
            check_group(self._build(name, factory, provider, {}, when="check=True builds factory() with no arguments"))
        self._add(name, factory, provider)

    def list_groups(self) -> list[str]:
        """Sorted names of all registered groups."""
        self._ensure_loaded()
        return sorted(self._factories)

    def provider(self, name: str) -> str:
        """Which plugin registered ``name``."""
        return self._lookup(name)[1]

    def _lookup(self, name: str) -> tuple[Callable[..., Group], str]:
        self._ensure_loaded()
        try:
            return self._factories[name]
        except KeyError:
            names = sorted(self._factories)
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            plugins = self._plugin_summary()
            raise KeyError(f"unknown group {name!r}; available groups: {names}{hint} {plugins}") from None

    def _plugin_summary(self) -> str:
        """One sentence per entry-point plugin: its module and what it registered (for unknown-name errors)."""
        if not self._autoload_enabled():
            return f"Plugin autoloading is off ({DISABLE_AUTOLOAD_ENV} or autoload=False), so no plugins were loaded."
        if not self._plugins:
            return f"No plugins are installed (no entry points in the group {hookspecs.PROJECT_NAME!r})."
        parts = [f"plugin {p!r} (module {module}) {what}" for p, (module, what) in sorted(self._plugins.items())]
        return "Plugins: " + "; ".join(parts) + "."

    def get(self, name: str, **params: Any) -> Group:
        """Build the group ``name`` with ``params``; the group's ``name`` is set to ``name``.

        Raises:
            KeyError: unknown name (the message lists the available names and the
                closest match).
            ValueError: parameters the factory does not accept or rejects.
        """
        factory, provider = self._lookup(name)
        group = self._build(name, factory, provider, params)
        group.name = name
        return group

    @staticmethod
    def _build(
        name: str, factory: Callable[..., Group], provider: str, params: dict[str, Any], when: str = ""
    ) -> Group:
        """``factory(**params)``, checked: parameters it accepts, a :class:`Group` back, ``validate_group``."""
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            try:
                sig.bind(**params)
            except TypeError as exc:
                allowed = [p for p in sig.parameters if p != "self"]
                why = f"{when}; " if when else ""
                raise ValueError(
                    f"{why}group {name!r} ({provider}) accepts parameters {allowed}; got {params}: {exc}"
                ) from None
        group = factory(**params)
        if not isinstance(group, Group):
            raise TypeError(
                f"factory of group {name!r} ({provider}) returned {type(group).__name__}, "
                "expected a torchinvariance.groups.Group"
            )
        try:
            validate_group(group)
        except (TypeError, ValueError) as exc:  # say whose group it is: a plugin's, the user's
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"group {name!r} ({provider}) is not a valid group: {exc}") from exc
        return group


_default_registry = GroupRegistry()


def get_group(name: str, **params: Any) -> Group:
    """Build a registered group by name.

    Args:
        name: registry name, e.g. ``"rotation"``, ``"translation"``, ``"flip"``,
            ``"dihedral"`` or one added by a plugin.
        **params: passed to the group's factory (e.g. ``order=4``).

    Returns:
        The :class:`~torchinvariance.groups.Group`.

    Raises:
        KeyError: unknown name, listing the available ones and the closest match.
        ValueError: parameters that the group does not allow.

    Example:
        >>> import torchinvariance as ti
        >>> ti.get_group("translation", order=3, axis="x")
        Translation(order=3, axis='x')
    """
    return _default_registry.get(name, **params)


def list_groups() -> list[str]:
    """Sorted names of all registered groups (built-in and from plugins).

    Example:
        >>> import torchinvariance as ti
        >>> {"dihedral", "flip", "rotation", "translation"} <= set(ti.list_groups())
        True
    """
    return _default_registry.list_groups()


def register_group(name: str, factory: Callable[..., Group], *, check: bool = False) -> None:
    """Register a group factory at run time (``factory(**params) -> Group``).

    Registration checks cheaply what needs no input (a class factory's ``order`` must be an int property; every
    built group must have an int ``order`` and an ``identity`` that is an element). ``check=True`` also builds
    ``factory()`` and runs the full :func:`~torchinvariance.check_group` (axioms and action) first.

    Raises:
        ValueError: ``name`` is already registered (the message names both providers).

    Example:
        >>> import torchinvariance as ti
        >>> ti.register_group("quarter_turns", lambda: ti.groups.Rotation(4))
        >>> ti.get_group("quarter_turns").order
        4
    """
    _default_registry.register(name, factory, check=check)
