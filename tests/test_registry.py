"""The registry: decorators, real entry points, laziness, clashes, broken plugins, the off switch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cxrkit.registry import PluginLoadWarning, Registry, RegistryError

GROUP = "cxrkit_test.things"


def make_registry() -> Registry:
    return Registry("thing", GROUP)


def test_decorator_register_and_get():
    reg = make_registry()

    @reg.register("alpha")
    def alpha():
        """Alpha thing."""
        return "a"

    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha"]
    assert reg.rows() == [("alpha", "Alpha thing.", "cxrkit")]


def test_unknown_name_lists_known_and_closest():
    reg = make_registry()
    reg.register("inat_swav", object())
    reg.register("imagenet", object())
    with pytest.raises(RegistryError) as err:
        reg.get("inat_swa")
    msg = str(err.value)
    assert "Did you mean 'inat_swav'" in msg
    assert "imagenet" in msg and "inat_swav" in msg


def test_register_twice_names_both_origins():
    reg = make_registry()
    reg.register("x", object(), origin="first.module:X")
    with pytest.raises(RegistryError) as err:
        reg.register("x", object(), origin="second.module:X")
    assert "first.module:X" in str(err.value) and "second.module:X" in str(err.value)


def test_entry_point_discovered_and_loaded_lazily(fake_dists):
    fake_dists.add(
        "thing-plugin",
        {GROUP: {"beta": "thing_plugin_mod:BETA"}},
        {"thing_plugin_mod": 'import sys\nsys.modules[__name__].IMPORTED = True\nBETA = "b"\n'},
    )
    reg = make_registry()
    assert "beta" in reg.names()
    assert "thing_plugin_mod" not in sys.modules  # listed, not imported
    assert reg.get("beta") == "b"
    assert sys.modules["thing_plugin_mod"].IMPORTED
    assert reg.entry("beta").distribution == "thing-plugin"


def test_distribution_installed_after_first_use_is_found(fake_dists):
    reg = make_registry()
    assert reg.names() == []
    fake_dists.add("late-plugin", {GROUP: {"late": "late_mod:VALUE"}}, {"late_mod": "VALUE = 42\n"})
    assert reg.get("late") == 42


def test_entry_point_clash_raises_naming_both_distributions(fake_dists):
    fake_dists.add("dist-one", {GROUP: {"same": "mod_one:V"}}, {"mod_one": "V = 1\n"})
    fake_dists.add("dist-two", {GROUP: {"same": "mod_two:V"}}, {"mod_two": "V = 2\n"})
    reg = make_registry()
    with pytest.warns(PluginLoadWarning, match="registered twice"):
        reg.names()
    with pytest.raises(RegistryError) as err:
        reg.get("same")
    assert "dist-one" in str(err.value) and "dist-two" in str(err.value)


def test_entry_point_clashing_with_builtin(fake_dists):
    fake_dists.add("dist-three", {GROUP: {"own": "mod_three:V"}}, {"mod_three": "V = 3\n"})
    reg = make_registry()
    reg.register("own", "builtin", origin="cxrkit.builtin:OWN")
    with pytest.warns(PluginLoadWarning):
        reg.names()
    with pytest.raises(RegistryError, match="dist-three"):
        reg.get("own")


def test_broken_plugin_warns_and_others_keep_working(fake_dists):
    fake_dists.add("broken-plugin", {GROUP: {"broken": "broken_mod:X"}}, {"broken_mod": "raise ImportError('no torchxyz')\n"})
    fake_dists.add("good-plugin", {GROUP: {"good": "good_mod:X"}}, {"good_mod": 'X = "ok"\n'})
    reg = make_registry()
    with pytest.warns(PluginLoadWarning, match="broken-plugin"):
        rows = dict((n, d) for n, d, _ in reg.rows())
    assert rows["broken"].startswith("BROKEN") and "no torchxyz" in rows["broken"]
    assert reg.get("good") == "ok"
    with pytest.raises(RegistryError, match="broken-plugin"):
        reg.get("broken")


def test_disable_switch_ignores_entry_points(fake_dists, monkeypatch):
    fake_dists.add("off-plugin", {GROUP: {"off": "off_mod:X"}}, {"off_mod": "X = 1\n"})
    monkeypatch.setenv("CXRKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = make_registry()
    assert reg.names() == []
    with pytest.raises(RegistryError):
        reg.get("off")
    monkeypatch.delenv("CXRKIT_DISABLE_PLUGIN_AUTOLOAD")
    assert reg.get("off") == 1


def test_builtin_modules_imported_on_first_use_only(fake_dists):
    fake_dists.add("nothing", {}, {"builtin_things": "from tests_registry_target import REG\nREG.register('b1', 1)\n"})
    reg = Registry("thing", GROUP, builtin_modules=("builtin_things",))
    sys.modules["tests_registry_target"] = type(sys)("tests_registry_target")
    sys.modules["tests_registry_target"].REG = reg
    try:
        assert "builtin_things" not in sys.modules
        assert reg.get("b1") == 1
    finally:
        del sys.modules["tests_registry_target"]


def test_cli_list_survives_broken_third_party_plugin(fake_dists):
    fake_dists.add(
        "cxrkit-broken",
        {"cxrkit.weights": {"broken_source": "cxrkit_broken_mod:SOURCE"}},
        {"cxrkit_broken_mod": "import does_not_exist_anywhere\n"},
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake_dists.root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "cxrkit", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "broken_source" in proc.stdout and "BROKEN" in proc.stdout
    assert "cxrkit-broken" in proc.stderr  # the warning names the distribution
    assert "resnet50" in proc.stdout  # everything else still listed
