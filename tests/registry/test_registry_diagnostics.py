"""Plugin diagnostics (issue 21 item 4): a plugin that registers nothing says so, and unknown names name the plugins."""

import types

import pytest
from helpers import FakeDistribution, FakeEntryPoint, Reverse, fake_distributions

import torchinvariance as ti
from torchinvariance.registry import GroupRegistry


def _hook():
    """A fresh function each time (``ti.hookimpl`` marks the function object itself)."""

    def torchinvariance_register_groups(register):
        register("transpose", Reverse)

    return torchinvariance_register_groups


def _module(name, **functions):
    """A plugin module as an entry point loads it."""
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (
            _module("no_marker", torchinvariance_register_groups=_hook()),
            r"torchinvariance_register_groups\(\) is not marked with @ti\.hookimpl",
        ),
        (
            _module("misspelled", torchinvariance_register_group=ti.hookimpl(_hook())),
            r"hook implementation torchinvariance_register_group\(\) matches no torchinvariance hook "
            r"\(did you mean 'torchinvariance_register_groups'\?\)",
        ),
        (
            _module("misspelled_unmarked", torchinvariance_registergroups=_hook()),
            r"function torchinvariance_registergroups\(\) matches no torchinvariance hook",
        ),
        (_module("empty"), r"defines no function torchinvariance_register_groups\(\) marked with @ti\.hookimpl"),
    ],
    ids=["no-hookimpl", "misspelled-hookimpl", "misspelled-unmarked", "empty-module"],
)
def test_plugin_without_hook_implementation_warns(monkeypatch, plugin, reason):
    fake_distributions(monkeypatch, [FakeDistribution("transpose-plugin", [FakeEntryPoint("tp", plugin)])])
    reg = GroupRegistry(autoload=True)
    with pytest.warns(UserWarning, match=r"'transpose-plugin:tp' \(module fake_module_tp\) .*no hook implementation"):
        names = reg.list_groups()
    assert "transpose" not in names
    with pytest.warns(UserWarning, match=reason):
        GroupRegistry(autoload=True).list_groups()


def test_unknown_group_names_the_plugin_that_registered_nothing(monkeypatch):
    plugin = _module("no_marker", torchinvariance_register_groups=_hook())
    fake_distributions(monkeypatch, [FakeDistribution("transpose-plugin", [FakeEntryPoint("tp", plugin)])])
    reg = GroupRegistry(autoload=True)
    with pytest.warns(UserWarning, match="no hook implementation"):
        reg.list_groups()
    with pytest.raises(KeyError) as err:
        reg.get("transpose")
    msg = str(err.value)
    assert "plugin 'transpose-plugin:tp' (module fake_module_tp) loaded and registered no groups" in msg
    assert "not marked with @ti.hookimpl" in msg


def test_unknown_group_lists_every_plugin_and_what_it_registered(monkeypatch):
    class Good:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            register("reverse_a", Reverse)
            register("reverse_b", Reverse)

    class Silent:  # a correct hook that happens to register nothing: no warning, but the error says so
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            pass

    class Raising:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            raise RuntimeError("boom")

    fake_distributions(
        monkeypatch,
        [
            FakeDistribution("good", [FakeEntryPoint("g", Good)]),
            FakeDistribution("silent", [FakeEntryPoint("s", Silent)]),
            FakeDistribution("raising", [FakeEntryPoint("r", Raising)]),
            FakeDistribution("broken", [FakeEntryPoint("b", exc=ImportError("no module named nope"))]),
        ],
    )
    reg = GroupRegistry(autoload=True)
    with pytest.warns(RuntimeWarning):
        reg.list_groups()
    with pytest.raises(KeyError) as err:
        reg.get("transpose")
    msg = str(err.value)
    assert "plugin 'good:g' (module fake_module_g) registered groups ['reverse_a', 'reverse_b']" in msg
    assert "plugin 'silent:s' (module fake_module_s) loaded and registered no groups" in msg
    assert "plugin 'raising:r' (module fake_module_r) raised while registering groups (RuntimeError: boom)" in msg
    assert "plugin 'broken:b' (module fake_module_b) failed to load (ImportError: no module named nope)" in msg


def test_correct_plugin_does_not_warn(monkeypatch, recwarn):
    class Good:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            register("reverse_ok", Reverse)

    fake_distributions(monkeypatch, [FakeDistribution("good", [FakeEntryPoint("g", Good)])])
    assert "reverse_ok" in GroupRegistry(autoload=True).list_groups()
    assert [str(w.message) for w in recwarn] == []


def test_unknown_group_without_plugins_says_so(monkeypatch):
    fake_distributions(monkeypatch, [])
    with pytest.raises(KeyError, match="No plugins are installed"):
        GroupRegistry(autoload=True).get("transpose")
    with pytest.raises(KeyError, match="autoloading is off"):
        GroupRegistry(autoload=False).get("transpose")
