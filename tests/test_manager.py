"""The plugin manager: built-ins, entry points of real distributions, blocking, and clear errors."""

from __future__ import annotations

import dataclasses
import textwrap
from importlib.metadata import distribution

import pluggy
import pytest
from _support import mlp

import tbhooks
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.manager import BUILTIN_PLUGINS, make_plugin_manager


def install_fake_dist(tmp_path, monkeypatch, name: str, entry: str, source: str) -> None:
    """Lay out a real distribution (dist-info with METADATA and entry_points.txt) on sys.path.

    importlib.metadata discovers it exactly as it discovers a pip-installed one.
    """
    module = name.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{module}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[tbhooks]\n{entry} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_registered_by_name():
    pm, sources = make_plugin_manager(autoload=False)
    assert [name for name, _ in pm.list_name_plugin()] == list(BUILTIN_PLUGINS)
    assert {s.origin for s in sources.values()} == {"builtin"}


def test_installed_distribution_is_discovered_through_its_entry_point():
    # tbhooks-example is installed from plugins/ by the Makefile, as a user would pip install it.
    dist = distribution("tbhooks-example")
    assert any(ep.group == "tbhooks" for ep in dist.entry_points)
    pm, sources = make_plugin_manager()
    assert pm.has_plugin("example")
    assert sources["example"].origin == "entrypoint"
    assert sources["example"].distribution == "tbhooks-example"
    assert sources["example"].version == dist.version


def test_autoload_off_by_argument_and_by_environment(monkeypatch):
    pm, _ = make_plugin_manager(autoload=False)
    assert not pm.has_plugin("example")
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm, _ = make_plugin_manager()
    assert not pm.has_plugin("example")
    assert pm.has_plugin("scalars")


def test_blocking_by_name_and_by_environment(monkeypatch):
    pm, _ = make_plugin_manager(disable=["example", "graph"])
    assert not pm.has_plugin("example") and not pm.has_plugin("graph") and pm.has_plugin("scalars")
    monkeypatch.setenv("TBHOOKS_DISABLE_PLUGINS", "histograms, example")
    pm, _ = make_plugin_manager()
    assert not pm.has_plugin("histograms") and not pm.has_plugin("example")


def test_unknown_name_in_disable_list_lists_the_known_plugins():
    with pytest.raises(ValueError, match=r"unknown plugin\(s\) 'scalar'; known plugins: .*scalars"):
        make_plugin_manager(disable=["scalar"], autoload=False)


def test_misspelled_hook_names_the_plugin_and_the_hook(tmp_path):
    class Typo:
        name = "typo"

        @tbhooks.hookimpl
        def on_bach_end(self):
            pass

    with pytest.raises(pluggy.PluginValidationError, match=r"plugin 'typo' implements unknown hook\(s\) on_bach_end"):
        tbhooks.attach(mlp(), logdir=tmp_path, plugins=[Typo()], autoload=False)


def test_hookimpl_argument_not_in_the_spec_is_refused(tmp_path):
    class Extra:
        @tbhooks.hookimpl
        def on_batch_end(self, stepp):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="stepp"):
        tbhooks.attach(mlp(), logdir=tmp_path, plugins=[Extra()], autoload=False)


def test_wrong_option_types_are_clear_errors():
    with pytest.raises(TypeError, match=r"Scalars\(every_n_steps=...\) expects an int, got str"):
        Scalars(every_n_steps="5")
    with pytest.raises(ValueError, match=r"Scalars\(every_n_steps=...\) expects an int >= 1, got 0"):
        Scalars(every_n_steps=0)
    with pytest.raises(TypeError, match=r"Scalars\(lr=...\) expects True or False"):
        Scalars(lr=1)


def test_plugin_objects_are_checked(tmp_path):
    with pytest.raises(TypeError, match="pass an instance, for example Scalars()"):
        make_plugin_manager(plugins=[Scalars], autoload=False)
    with pytest.raises(TypeError, match="plugins expects plugin objects"):
        make_plugin_manager(plugins=["scalars"], autoload=False)
    probe = Scalars()
    with pytest.raises(ValueError, match="'scalars' is registered twice"):
        make_plugin_manager(plugins=[probe, probe], autoload=False)


@dataclasses.dataclass
class Counted:  # a dataclass compares by value, so it is unhashable unless eq=False
    every: int = 2

    def batch_end_due(self, step: int) -> bool:
        return step % self.every == 0

    @tbhooks.hookimpl
    def on_batch_end(self) -> None:
        pass


@dataclasses.dataclass(eq=False)  # the remedy the error names
class Remedied:
    every: int = 2

    def batch_end_due(self, step: int) -> bool:
        return step % self.every == 0

    @tbhooks.hookimpl
    def on_batch_end(self) -> None:
        pass


def test_an_unhashable_plugin_is_refused_naming_the_remedy():
    # pluggy calls a subset of the plugins on a step some are not due: it keeps them in a set.
    with pytest.raises(TypeError, match=r"plugins got an unhashable Counted object; .*@dataclass\(eq=False\)"):
        make_plugin_manager(plugins=[Counted()], autoload=False)
    pm, _ = make_plugin_manager(plugins=[Remedied()], autoload=False)
    scalars = pm.get_plugin("scalars")
    assert Remedied in {type(i.plugin) for i in pm.subset_hook_caller("on_batch_end", [scalars]).get_hookimpls()}


def test_a_user_instance_replaces_the_builtin_of_the_same_name():
    mine = Histograms(every_n_steps=7)
    pm, sources = make_plugin_manager(plugins=[mine], autoload=False)
    assert pm.get_plugin("histograms") is mine
    assert sources["histograms"].origin == "user"


def test_entry_point_forms(tmp_path, monkeypatch):
    install_fake_dist(
        tmp_path,
        monkeypatch,
        "tbhooks-factory",
        "factory",
        """
        import tbhooks

        class Counter:
            @tbhooks.hookimpl
            def on_epoch_end(self):
                pass

        def make():
            return Counter()
        """,
    )
    (tmp_path / "tbhooks_factory-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[tbhooks]\nfactory = tbhooks_factory:make\n"
    )
    first, _ = make_plugin_manager()
    second, sources = make_plugin_manager()
    assert type(first.get_plugin("factory")).__name__ == "Counter"
    assert first.get_plugin("factory") is not second.get_plugin("factory"), "a factory gives each run its own plugin"
    assert sources["factory"].distribution == "tbhooks-factory" and sources["factory"].version == "1.2.3"

    (tmp_path / "tbhooks_factory-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[tbhooks]\nfactory = tbhooks_factory:Counter\n"
    )
    with pytest.raises(TypeError, match="points at a class"):
        make_plugin_manager()


def test_cli_lists_plugins_with_distribution_version_and_hooks(capsys):
    from tbhooks.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    scalars = next(line for line in out.splitlines() if line.startswith("scalars"))
    assert "builtin" in scalars and f"tbhooks {tbhooks.__version__}" in scalars
    assert "on_batch_end" in out and "on_eval" in out
    assert "tbhooks-example" in out


def test_two_runs_share_no_plugin_or_writer(tmp_path):
    first = tbhooks.attach(mlp(), logdir=tmp_path / "a")
    second = tbhooks.attach(mlp(), logdir=tmp_path / "b", disable=["graph"])
    try:
        for name, plugin in first.plugin_manager.list_name_plugin():
            other = second.plugin_manager.get_plugin(name)
            assert other is None or other is not plugin, name
        assert first.run.writer is not second.run.writer
        assert not second.plugin_manager.has_plugin("graph") and first.plugin_manager.has_plugin("graph")
    finally:
        first.close()
        second.close()


def test_only_marked_functions_are_hook_implementations_wherever_they_come_from():
    """The manager's quick path (plain unmarked methods skipped) finds what pluggy's own path finds."""
    import types

    class Base:
        name = "base"

        @tbhooks.hookimpl
        def on_epoch_end(self, step):
            pass

        @tbhooks.hookimpl
        def on_eval(self, step):
            pass

    class Child(Base):
        name = "child"

        def on_eval(self, step):  # overridden without the mark: no longer an implementation
            pass

        def on_batch_end(self, step):  # an event's name, unmarked: a plain method
            pass

        @staticmethod
        @tbhooks.hookimpl
        def on_fit_end(step):
            pass

        @property
        def on_fit_start(self):
            raise AssertionError("registration evaluated a property")

        @tbhooks.hookimpl(tryfirst=True)
        def on_eval_end(self, step):  # not an event: check_pending names it
            pass

    module = types.ModuleType("plugin_module")
    module.on_eval_start = tbhooks.hookimpl(lambda step: None)
    module.on_epoch_start = lambda step: None

    child = Child()
    child.on_exception = tbhooks.hookimpl(lambda step: None)  # an instance attribute
    child.on_eval_batch_end = 3  # data under an event's name
    with pytest.raises(pluggy.PluginValidationError, match="on_eval_end"):
        make_plugin_manager(plugins=[child], autoload=False, builtins=False)
    del Child.on_eval_end
    Child.on_epoch_end = tbhooks.hookimpl(tryfirst=True)(lambda self, step: None)  # options carried over
    pm, _ = make_plugin_manager(plugins=[child, module], autoload=False, builtins=False)
    assert pm.hook.on_epoch_end.get_hookimpls()[0].tryfirst
    found = {hook: [impl.plugin for impl in getattr(pm.hook, hook).get_hookimpls()] for hook in vars(pm.hook)}
    expected = {"on_epoch_end", "on_fit_end", "on_exception"}
    assert {hook for hook, plugins in found.items() if child in plugins} == expected
    assert {hook for hook, plugins in found.items() if module in plugins} == {"on_eval_start"}
