"""Build the plugin manager of one run, and guard every plugin it holds.

:func:`make_plugin_manager` is the one factory (no global manager, nothing loaded at import).  It registers
the hook specs, the blocked names, the built-in plugins (unless a user plugin takes the name), the
``tbhooks`` entry points (a module, an instance, or a function returning a new plugin per run), then the
user's plugins, and runs ``check_pending()`` so a misspelled hook fails before training.
:class:`PluginHost` reports a plugin that raises once and unregisters it (``strict`` re-raises instead).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from tbhooks import hookspecs
from tbhooks.errors import PluginFaultWarning
from tbhooks.markers import NAME

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

BUILTIN_PLUGINS: dict[str, str] = {
    "scalars": "tbhooks.default_plugins.scalars:Scalars",
    "images": "tbhooks.default_plugins.images:Images",
    "graph": "tbhooks.default_plugins.graph:Graph",
    "embeddings": "tbhooks.default_plugins.embeddings:Embeddings",
    "pr_curves": "tbhooks.default_plugins.pr_curves:PRCurves",
    "histograms": "tbhooks.default_plugins.histograms:Histograms",
    "hparams": "tbhooks.default_plugins.hparams:HParams",
}
"""Built-in plugins: registered name -> ``module:factory``, instantiated with defaults."""


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str) -> list[str]:
    """The comma-separated names in environment variable ``name``, blanks dropped."""
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def plugin_name(plugin: object) -> str:
    """The name a user plugin is registered under: its ``name`` string, a module's name, or the class name lowered."""
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return type(plugin).__name__.lower()


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` as text, for fault reports."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


@dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from, for ``tbhooks plugins``."""

    origin: str  # "builtin", "entrypoint" or "user"
    distribution: str
    version: str


def _check_plugin_objects(plugins: list[object]) -> None:
    for plugin in plugins:
        if plugin is None or isinstance(plugin, (str, bytes, int, float)):
            raise TypeError(
                f"plugins expects plugin objects (a module or an instance with @hookimpl methods), got {plugin!r}"
            )
        if isinstance(plugin, type):
            raise TypeError(
                f"plugins got the class {plugin.__name__}; pass an instance, for example {plugin.__name__}()"
            )
        _check_hashable(plugin, "plugins got")


def _check_hashable(plugin: object, where: str) -> None:
    """pluggy keeps plugins in sets (a schedule calls a subset of them), so a plugin must be hashable."""
    try:
        hash(plugin)
    except TypeError:
        name = type(plugin).__name__
        raise TypeError(
            f"{where} an unhashable {name} object; give {name} identity hashing "
            f"(a dataclass: @dataclass(eq=False)), as pluggy keeps plugins in sets"
        ) from None


def _load_entry_point(ep: Any) -> object:
    loaded = ep.load()
    if isinstance(loaded, type):
        raise TypeError(
            f"entry point {ep.name!r} = {ep.value!r} points at a class; point it at a module, "
            f"an instance, or a function that returns a new instance (pluggy registers what it loads)"
        )
    # A factory is called once per run, so two runs in one process never share plugin state.
    plugin = loaded() if inspect.isfunction(loaded) else loaded
    _check_hashable(plugin, f"entry point {ep.name!r} = {ep.value!r} gave")
    return plugin


def make_plugin_manager(
    *,
    plugins: Iterable[object] = (),
    disable: Iterable[str] = (),
    autoload: bool | None = None,
    builtins: bool = True,
) -> tuple[pluggy.PluginManager, dict[str, PluginSource]]:
    """Build and validate the plugin manager of one run.

    :param plugins: plugin objects (modules or instances) to register last.
    :param disable: plugin names not to register; ``TBHOOKS_DISABLE_PLUGINS``
        adds to it.  An unknown name is a ``ValueError`` listing the known ones.
    :param autoload: load the ``tbhooks`` entry-point group; ``None`` means
        yes unless ``TBHOOKS_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param builtins: register the built-in plugins.
    :returns: the manager and, per registered name, where the plugin came from.
    """
    if isinstance(disable, str):
        disable = [disable]
    plugins = list(plugins)
    _check_plugin_objects(plugins)
    if autoload is None:
        autoload = not env_flag("TBHOOKS_DISABLE_PLUGIN_AUTOLOAD")
    blocked = [*disable, *env_list("TBHOOKS_DISABLE_PLUGINS")]
    user_names = [plugin_name(p) for p in plugins]
    # Installed entry points count as known even with autoload off: a shared TBHOOKS_DISABLE_PLUGINS stays valid.
    installed = list(entry_points(group=NAME))
    known = sorted({*BUILTIN_PLUGINS, *user_names, *(ep.name for ep in installed)})
    unknown = [name for name in blocked if name not in known]
    if unknown:
        raise ValueError(
            f"disable names unknown plugin(s) {', '.join(map(repr, unknown))}; known plugins: {', '.join(known)}"
        )

    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    sources: dict[str, PluginSource] = {}
    skip = {*blocked, *user_names}

    if builtins:
        from tbhooks import __version__

        for name, spec in BUILTIN_PLUGINS.items():
            if name not in skip:
                module_name, _, factory = spec.partition(":")
                pm.register(getattr(importlib.import_module(module_name), factory)(), name=name)
                sources[name] = PluginSource("builtin", NAME, __version__)

    for ep in installed if autoload else []:
        if ep.name in skip:
            continue
        if pm.has_plugin(ep.name):
            raise ValueError(
                f"entry point {ep.name!r} ({ep.value}) uses a name that is already registered; "
                f"rename the entry point or disable one of them"
            )
        pm.register(_load_entry_point(ep), name=ep.name)
        dist = ep.dist
        sources[ep.name] = PluginSource("entrypoint", dist.name if dist else "?", dist.version if dist else "?")

    seen: set[str] = set()
    for plugin, name in zip(plugins, user_names, strict=True):
        if name in seen:
            raise ValueError(
                f"plugin {name!r} is registered twice; pass each plugin once, "
                f"or give the second a different `name` attribute"
            )
        seen.add(name)
        if name not in blocked:
            pm.register(plugin, name=name)
            module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
            sources[name] = PluginSource("user", module.partition(".")[0], "")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        bad = pm.get_name(exc.plugin) or repr(exc.plugin)
        hooks = [h for h in dir(exc.plugin) if h.startswith("on_") and not hasattr(hookspecs, h)]
        raise pluggy.PluginValidationError(
            exc.plugin,
            f"plugin {bad!r} implements unknown hook(s) {', '.join(hooks) or '?'}; "
            f"known hooks: {', '.join(spec_names())}",
        ) from None
    return pm, sources


def spec_names() -> list[str]:
    """The names of every event in the contract, in file order."""
    return [name for name in vars(hookspecs) if name.startswith("on_")]


@dataclass
class Fault:
    """A plugin that raised: where, and what."""

    plugin: str
    hook: str
    error: BaseException
    report: str = field(repr=False)


class PluginHost:
    """The run's plugin manager, with every hook implementation guarded.

    pluggy lets one raising implementation end the whole hook call, so each ``HookImpl.function`` is
    wrapped in a guard that reports an exception once and unregisters its plugin.  With ``strict`` nothing
    is caught; with ``measure`` the guard adds each plugin's time to :attr:`overhead`.
    """

    def __init__(self, pm: pluggy.PluginManager, *, strict: bool, measure: bool, trace: bool) -> None:
        self.pm = pm
        self.hook = pm.hook
        self.strict = strict
        self.measure = measure
        self.faults: dict[str, Fault] = {}
        self.overhead: dict[str, float] = {}
        # Kept after a plugin is unregistered, so late background errors are still attributed to it.
        self.names = {id(plugin): name for name, plugin in pm.list_name_plugin() if plugin is not None}
        self._undo_trace: Callable[[], None] | None = None
        if not strict or measure:
            for name, plugin in pm.list_name_plugin():
                for caller in pm.get_hookcallers(plugin) or []:
                    for impl in caller.get_hookimpls():
                        if impl.plugin is plugin:
                            impl.function = self._guard(name, caller.name, impl.function)  # type: ignore[misc]
        if trace:
            self._undo_trace = pm.add_hookcall_monitoring(*self._tracer())

    def _guard(self, name: str, hook_name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        faults, overhead, clock = self.faults, self.overhead, time.perf_counter
        overhead.setdefault(name, 0.0)

        def guarded(*args: Any) -> Any:
            if name in faults:
                return None
            start = clock() if self.measure else 0.0
            try:
                return fn(*args)
            except Exception as exc:
                if self.strict:
                    raise
                self.fault(name, hook_name, exc)
                return None
            finally:
                if self.measure:
                    overhead[name] += clock() - start

        return guarded

    def fault(self, name: str, hook_name: str, exc: BaseException) -> None:
        """Report plugin ``name``'s error once and unregister it for the rest of the run."""
        if name in self.faults:
            return
        report = format_exception(exc)
        self.faults[name] = Fault(name, hook_name, exc, report)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        warnings.warn(
            f"tbhooks: plugin {name!r} raised in {hook_name} and is disabled for the rest of the run "
            f"(training goes on; pass strict=True or set TBHOOKS_STRICT=1 to re-raise):\n{report}",
            PluginFaultWarning,
            stacklevel=2,
        )

    def owner_name(self, owner: object) -> str | None:
        """The registered name of plugin object ``owner`` (also after it was unregistered)."""
        return self.names.get(id(owner))

    def fault_summary(self) -> str:
        """One line per disabled plugin, for the end of a fit ('' when none)."""
        return "\n".join(f"  {f.plugin}: {f.hook}: {type(f.error).__name__}: {f.error}" for f in self.faults.values())

    def _tracer(self) -> tuple[Callable[..., None], Callable[..., None]]:
        starts: list[float] = []

        def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            starts.append(time.perf_counter())

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            elapsed = time.perf_counter() - starts.pop()
            names = ",".join(impl.plugin_name for impl in hook_impls)
            print(
                f"tbhooks trace: {hook_name} step={kwargs.get('step', '')} {elapsed * 1e6:.1f}us [{names}]",
                file=sys.stderr,
            )

        return before, after

    def close(self) -> None:
        """Stop tracing; the manager itself is dropped with the run."""
        if self._undo_trace is not None:
            self._undo_trace()
            self._undo_trace = None
