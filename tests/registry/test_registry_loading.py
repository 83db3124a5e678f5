"""Registry loading under stress (issue 11 items 2, 3, 11): threads, interrupted loads, half-registered plugins."""

import threading
import time
import warnings

import pytest
from helpers import FakeDistribution, FakeEntryPoint, Reverse, fake_distributions

import torchinvariance as ti
from torchinvariance.registry import GroupRegistry


def test_threads_all_see_the_fully_loaded_registry(monkeypatch):
    """A plugin hook that is still running while 8 threads ask for its group: nobody gets a KeyError."""

    class SlowPlugin:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            time.sleep(0.3)
            register("slow_reverse", Reverse)

    fake_distributions(monkeypatch, [FakeDistribution("slow", [FakeEntryPoint("slow", SlowPlugin)])])
    reg = GroupRegistry(autoload=True)
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        try:
            results.append(reg.get("slow_reverse").order)
        except Exception as exc:  # the bug: KeyError while another thread is loading
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [2] * 8


def test_failed_plugin_warning_as_error_leaves_a_usable_registry(monkeypatch):
    """python -W error::RuntimeWarning with a broken plugin: the second call works and built-ins are there."""
    fake_distributions(
        monkeypatch, [FakeDistribution("broken", [FakeEntryPoint("broken", exc=ImportError("no module named nope"))])]
    )
    reg = GroupRegistry(autoload=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="failed to load and was skipped"):
            reg.get("rotation")
        assert reg.get("rotation", order=4).order == 4  # the registry is complete, no second failure
    assert set(reg.list_groups()) == {"dihedral", "flip", "rotation", "scale", "so2", "translation"}


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupted_load_is_rolled_back_and_retried(monkeypatch, exc):
    calls = []

    class Plugin:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            calls.append(1)
            register("reverse_once", Reverse)

    class Interrupting:
        def __init__(self):
            self.first = True

        def load(self):
            if self.first:
                self.first = False
                raise exc()
            return Plugin

    ep = Interrupting()
    ep.name, ep.group, ep.value = "intr", "torchinvariance", "fake_intr"
    fake_distributions(monkeypatch, [FakeDistribution("intr", [ep])])
    reg = GroupRegistry(autoload=True)
    with pytest.raises(exc):
        reg.list_groups()
    # the next call loads again, completely
    assert {"rotation", "reverse_once"} <= set(reg.list_groups())
    assert reg.get("reverse_once").order == 2


def test_plugin_registration_is_all_or_nothing(monkeypatch):
    class HalfPlugin:
        @staticmethod
        @ti.hookimpl
        def torchinvariance_register_groups(register):
            register("half_registered", Reverse)
            raise RuntimeError("boom after registering")

    fake_distributions(monkeypatch, [FakeDistribution("half", [FakeEntryPoint("half", HalfPlugin)])])
    reg = GroupRegistry(autoload=True)
    with pytest.warns(RuntimeWarning, match="none of its groups were registered.*boom"):
        names = reg.list_groups()
    assert "half_registered" not in names
    with pytest.raises(KeyError, match="unknown group 'half_registered'"):
        reg.get("half_registered")


def test_get_group_sets_the_registry_name():
    reg = GroupRegistry(autoload=False)
    reg.register("quarter_turns", lambda: ti.groups.Rotation(4))
    assert reg.get("quarter_turns").name == "quarter_turns"
    assert reg.get("rotation").name == "rotation"
