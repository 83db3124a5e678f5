import importlib.metadata
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import FakeDistribution, FakeEntryPoint, Reverse, fake_distributions

import torchinvariance as ti
from torchinvariance.registry import GroupRegistry


class _PluginModule:
    @staticmethod
    @ti.hookimpl
    def torchinvariance_register_groups(register):
        register("reverse1d", Reverse)


def test_builtins_registered_through_hook():
    reg = GroupRegistry(autoload=False)
    assert set(reg.list_groups()) == {"dihedral", "flip", "rotation", "scale", "so2", "translation"}
    assert reg.provider("rotation") == "torchinvariance (built-in)"
    assert reg.plugin_manager.hook.torchinvariance_register_groups.get_hookimpls()


def test_get_group_params():
    assert ti.get_group("rotation", order=4).order == 4
    assert ti.get_group("translation", order=3, axis="x").order == 3
    assert ti.get_group("flip").axis == "x"
    assert ti.get_group("dihedral").order == 8


def test_unknown_name_lists_names_and_closest_match():
    with pytest.raises(KeyError) as err:
        ti.get_group("rotaton")
    msg = str(err.value)
    assert "did you mean 'rotation'" in msg and "'translation'" in msg and "'dihedral'" in msg


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("rotation", {"order": 5}, r"order in \{2, 4\}.*order=5"),
        ("rotation", {"angle": 3}, r"accepts parameters \['order'\]"),
        ("translation", {"order": 0}, "positive int"),
        ("dihedral", {"order": 8}, r"accepts parameters \[\]"),
    ],
)
def test_bad_params(name, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        ti.get_group(name, **params)


def test_duplicate_names_both_providers():
    reg = GroupRegistry(autoload=False)
    with pytest.raises(ValueError, match=r"'rotation' is already registered by 'torchinvariance \(built-in\)'.*'me'"):
        reg.register("rotation", ti.Rotation, provider="me")


def test_register_group_runtime():
    reg = GroupRegistry(autoload=False)
    reg.register("half_turns", lambda: ti.Rotation(2))
    assert reg.get("half_turns").order == 2
    with pytest.raises(TypeError, match=r"expected a torchinvariance\.groups\.Group"):
        reg.register("bad", lambda: 3)
        reg.get("bad")


def test_fake_entry_point_plugin_loads(monkeypatch):
    fake_distributions(monkeypatch, [FakeDistribution("reverse-plugin", [FakeEntryPoint("rev", _PluginModule)])])
    reg = GroupRegistry(autoload=True)
    group = reg.get("reverse1d")
    assert reg.provider("reverse1d") == "reverse-plugin:rev"
    assert torch.equal(group.act(1, torch.arange(3)), torch.tensor([2, 1, 0]))


def test_broken_plugin_warns_and_others_load(monkeypatch):
    fake_distributions(
        monkeypatch,
        [
            FakeDistribution("broken-plugin", [FakeEntryPoint("boom", exc=ImportError("no module named nope"))]),
            FakeDistribution("reverse-plugin", [FakeEntryPoint("rev", _PluginModule)]),
        ],
    )
    reg = GroupRegistry(autoload=True)
    with pytest.warns(RuntimeWarning, match=r"'broken-plugin:boom'.*no module named nope"):
        names = reg.list_groups()
    assert "reverse1d" in names and "rotation" in names


def test_plugin_duplicate_is_skipped_with_warning(monkeypatch):
    class Dup:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            register("rotation", ti.Rotation)

    fake_distributions(monkeypatch, [FakeDistribution("dup-plugin", [FakeEntryPoint("dup", Dup)])])
    reg = GroupRegistry(autoload=True)
    with pytest.warns(RuntimeWarning, match=r"dup-plugin:dup.*already registered by 'torchinvariance \(built-in\)'"):
        assert "rotation" in reg.list_groups()
    assert reg.provider("rotation") == "torchinvariance (built-in)"


def test_autoload_env_var(monkeypatch):
    fake_distributions(monkeypatch, [FakeDistribution("reverse-plugin", [FakeEntryPoint("rev", _PluginModule)])])
    monkeypatch.setenv("TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "reverse1d" not in GroupRegistry().list_groups()
    monkeypatch.setenv("TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "reverse1d" in GroupRegistry().list_groups()


@pytest.mark.parametrize(("value", "loaded"), [("on", False), ("Y", False), (" off ", True), ("no", True)])
def test_autoload_env_var_spellings(monkeypatch, value, loaded, recwarn):
    """'on' kept loading the plugins without a word (only 1/true/yes turned autoloading off)."""
    fake_distributions(monkeypatch, [FakeDistribution("reverse-plugin", [FakeEntryPoint("rev", _PluginModule)])])
    monkeypatch.setenv("TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD", value)
    assert ("reverse1d" in GroupRegistry().list_groups()) is loaded
    assert not [w for w in recwarn if "AUTOLOAD" in str(w.message)]


def test_autoload_env_var_not_understood_warns(monkeypatch):
    fake_distributions(monkeypatch, [FakeDistribution("reverse-plugin", [FakeEntryPoint("rev", _PluginModule)])])
    monkeypatch.setenv("TORCHINVARIANCE_DISABLE_PLUGIN_AUTOLOAD", "disable")
    with pytest.warns(UserWarning, match=r"AUTOLOAD='disable' is not understood, so plugins are loaded; set it to 1"):
        assert "reverse1d" in GroupRegistry().list_groups()


def test_plugins_loaded_once(monkeypatch):
    calls = []

    def dists():
        calls.append(1)
        return iter([])

    monkeypatch.setattr(importlib.metadata, "distributions", dists)
    reg = GroupRegistry(autoload=True)
    reg.list_groups()
    reg.get("rotation")
    reg.list_groups()
    assert len(calls) == 1


def test_installed_example_plugin():
    """The real plugin package in plugins/ (installed by .ci/run) provides its groups."""
    import torchinvariance_signal  # noqa: F401  (installed by .ci/run: pip install ./plugins/torchinvariance-signal)

    code = (
        "import warnings, torch, torchinvariance as ti\n"
        "warnings.simplefilter('error')\n"
        "g = ti.get_group('time_reversal')\n"
        "print(ti.registry._registry._default_registry.provider('time_reversal'))\n"
        "print(g.act(1, torch.arange(4.)).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torchinvariance-signal" in out
    assert "[3.0, 2.0, 1.0, 0.0]" in out


def test_no_warnings_on_plain_import():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GroupRegistry().list_groups()


class _WrongIdentity(ti.Group):
    """A group whose identity is not one of its elements (validate_group rejects it)."""

    order = 3
    identity = 7

    def compose(self, g, h):
        return (g + h) % 3

    def inverse(self, g):
        return (-g) % 3

    def transform(self, g, x):
        return x


def test_register_group_bad_arguments_say_what_was_expected():
    reg = GroupRegistry(autoload=False)
    for name in ("  ", " rotation", "rot "):  # were registered: "  " then showed in list_groups()
        with pytest.raises(ValueError, match="non-empty strings without surrounding spaces"):
            reg.register(name, ti.Rotation)
    with pytest.raises(TypeError, match=r"got the group Rotation\(order=4\) itself: register its class"):
        reg.register("quarter", ti.Rotation(4))
    with pytest.raises(TypeError, match=r"check must be True .* or False; got 'yes'"):
        reg.register("quarter", ti.Rotation, check="yes")
    # check=True on a factory that needs a parameter: was the lambda's own "missing 1 required positional argument"
    with pytest.raises(ValueError, match=r"check=True builds factory\(\) with no arguments; group 'needs' \(user\)"):
        reg.register("needs", lambda order: ti.Rotation(order), check=True)
    # check=True on a factory returning no group: was "group must be a torchinvariance Group, got int"
    with pytest.raises(TypeError, match=r"factory of group 'three' \(user\) returned int"):
        reg.register("three", lambda: 3, check=True)
    assert not {"  ", " rotation", "quarter", "needs", "three"} & set(reg.list_groups())


def test_an_invalid_plugin_group_names_its_plugin(monkeypatch):
    """A plugin group that fails validate_group: the error of get() says which group and plugin (it did not)."""

    class Plugin:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            register("wrong_identity", _WrongIdentity)

    fake_distributions(monkeypatch, [FakeDistribution("bad-groups", [FakeEntryPoint("bad", Plugin)])])
    reg = GroupRegistry(autoload=True)
    expected = r"'wrong_identity' \(bad-groups:bad\) is not a valid group: .*identity \(7\) is not an element"
    with pytest.raises(ValueError, match=expected):
        reg.get("wrong_identity")
