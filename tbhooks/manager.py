"""Build the plugin manager of one run, and guard every plugin it holds.

:func:`make_plugin_manager` is the one factory (there is no module-global
manager, and nothing is loaded at import time).  It registers, in this order:

1. the hook specs of :mod:`tbhooks.hookspecs`;
2. the names the user blocked (``disable=`` and ``TBHOOKS_DISABLE_PLUGINS``);
3. the built-in plugins, imported by dotted name (those a user plugin object
   replaces by carrying the same name are skipped);
4. the plugins of the ``tbhooks`` entry-point group of installed
   distributions, unless ``autoload=False`` or ``TBHOOKS_DISABLE_PLUGIN_AUTOLOAD=1``.
   An entry point names a module or an instance (registered as is) or a
   function without arguments that returns a plugin (called once per run, so
   runs never share a plugin's state);
5. the plugin objects the user passed;

and ends with ``check_pending()``, so a misspelled hook fails before training.

:class:`PluginHost` then wraps each hook implementation so that a plugin that
raises is reported once and unregistered, and the run goes on (``strict``
re-raises instead).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import FunctionType, ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from tbhooks import hookspecs
from tbhooks.errors import PluginFaultWarning
from tbhooks.markers import NAME
from tbhooks.run import format_exception

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
    """The name a user plugin object is registered under.

    Its ``name`` attribute when that is a string, else the module's name for a
    module, else the class name in lower case.
    """
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return type(plugin).__name__.lower()


@dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from, for ``tbhooks plugins``."""

    origin: str  # "builtin", "entrypoint" or "user"
    distribution: str
    version: str


_IMPL_MARK = f"{NAME}_impl"
"""The attribute ``@hookimpl`` sets on a function (pluggy's ``<project>_impl``)."""

_SPEC_MARK = f"{NAME}_spec"
"""The attribute ``@hookspec`` sets on a function (pluggy's ``<project>_spec``)."""


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, told quickly which attributes are not hook implementations.

    ``register`` inspects every name in ``dir(plugin)`` without evaluating it
    (``inspect.getattr_static``, tens of microseconds a name): a few
    milliseconds for the built-in plugins at every run's start.  Dunders are
    never events; a plain function in the class is an implementation with the
    options its ``@hookimpl`` mark holds, or a method and nothing more; an
    instance attribute that is not callable is the plugin's data; a property
    or other descriptor in the class is not an implementation either, and is
    not evaluated (pluggy 1.5 and 1.6 would call it).  Anything else (callable
    instance attributes, static and class methods, modules' attributes) still
    takes pluggy's own path.  Hook specifications likewise: a function of the
    spec module carries its ``@hookspec`` options or none.
    """

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        if name.startswith("__"):
            return None
        if not isinstance(plugin, ModuleType):
            own = getattr(plugin, "__dict__", None)
            if isinstance(own, dict) and name in own:
                if not callable(own[name]):
                    return None  # the plugin's data: never an implementation
            else:
                for klass in type(plugin).__mro__:
                    if name in klass.__dict__:
                        found = klass.__dict__[name]
                        if isinstance(found, FunctionType):
                            # A method: its @hookimpl options, or nothing (what pluggy's own
                            # lookup finds, without inspect.getattr_static's cost).
                            opts = getattr(found, _IMPL_MARK, None)
                            return opts if isinstance(opts, dict) else None
                        if not isinstance(found, (staticmethod, classmethod)):
                            # A property or another descriptor: never an implementation, and pluggy
                            # before 1.7 would evaluate it (getattr) to find that out.
                            return None
                        break
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if isinstance(module_or_class, ModuleType) and not name.startswith("__"):
            found = vars(module_or_class).get(name)
            if isinstance(found, FunctionType):
                opts = getattr(found, _SPEC_MARK, None)
                return opts if isinstance(opts, dict) else None
            if found is not None and not callable(found):
                return None  # the spec module's constants and imports
        return super().parse_hookspec_opts(module_or_class, name)


def _load_builtin(spec: str) -> object:
    module_name, _, factory = spec.partition(":")
    return getattr(importlib.import_module(module_name), factory)()


def _tbhooks_version() -> str:
    from tbhooks import __version__

    return __version__


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
    for plugin in plugins:
        if plugin is None or isinstance(plugin, (str, bytes, int, float)):
            raise TypeError(
                f"plugins expects plugin objects (a module or an instance with @hookimpl methods), got {plugin!r}"
            )
        if isinstance(plugin, type):
            raise TypeError(
                f"plugins got the class {plugin.__name__}; pass an instance, for example {plugin.__name__}()"
            )
    if autoload is None:
        autoload = not env_flag("TBHOOKS_DISABLE_PLUGIN_AUTOLOAD")
    blocked = [*disable, *env_list("TBHOOKS_DISABLE_PLUGINS")]

    user_names = [plugin_name(p) for p in plugins]
    # Reading every installed distribution's entry points costs milliseconds per run:
    # done only to autoload, or to check a blocked name that is neither built in nor
    # passed.  Installed entry points count as known even with autoload off, so a
    # shared TBHOOKS_DISABLE_PLUGINS setting stays valid for runs that do not autoload.
    local = {*BUILTIN_PLUGINS, *user_names}
    needs_scan = autoload or any(name not in local for name in blocked)
    installed = list(entry_points(group=NAME)) if needs_scan else []
    eps = installed if autoload else []
    known = sorted({*local, *(ep.name for ep in installed)})
    unknown = [name for name in blocked if name not in known]
    if unknown:
        raise ValueError(
            f"disable names unknown plugin(s) {', '.join(map(repr, unknown))}; known plugins: {', '.join(known)}"
        )

    pm = _PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    sources: dict[str, PluginSource] = {}

    if builtins:
        for name, spec in BUILTIN_PLUGINS.items():
            if name in blocked or name in user_names:
                continue
            pm.register(_load_builtin(spec), name=name)
            sources[name] = PluginSource("builtin", NAME, _tbhooks_version())

    for ep in eps:
        if ep.name in blocked or ep.name in user_names:
            continue
        if pm.has_plugin(ep.name):
            raise ValueError(
                f"entry point {ep.name!r} ({ep.value}) uses a name that is already registered; "
                f"rename the entry point or disable one of them"
            )
        loaded = ep.load()
        if isinstance(loaded, type):
            raise TypeError(
                f"entry point {ep.name!r} = {ep.value!r} points at a class; point it at a module, "
                f"an instance, or a function that returns a new instance (pluggy registers what it loads)"
            )
        if inspect.isfunction(loaded):
            # A factory: called once per run, so two runs in one process never share plugin state.
            loaded = loaded()
        pm.register(loaded, name=ep.name)
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
        if name in blocked:
            continue
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
            f"known hooks: {', '.join(sorted(spec_names()))}",
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


_GUARD_SOURCE = """\
def make(fn, name, hook_name, faults, fault):
    def guarded({params}):
        if name in faults:
            return None
        try:
            return fn({params})
        except Exception as exc:
            fault(name, hook_name, exc)
            return None
    return guarded
"""


@functools.cache
def _guard_maker(arity: int) -> Callable[..., Callable[..., Any]]:
    """A maker of guards that take exactly ``arity`` positional arguments, as pluggy passes them.

    Why generated: a guard's own cost is most of what tbhooks adds to a hook
    call.  One with fixed parameters costs about a quarter of one that packs
    ``*args, **kwargs`` and unpacks them again (75 against 270 ns a call
    here), and an event goes through one guard per implementation.  The
    source is :data:`_GUARD_SOURCE` (a traceback through a guard names the
    file ``<tbhooks guard>``).
    """
    params = ", ".join(f"a{index}" for index in range(arity))
    namespace: dict[str, Any] = {"__name__": __name__}  # warnings raised through a guard name this module
    exec(compile(_GUARD_SOURCE.format(params=params), "<tbhooks guard>", "exec"), namespace)
    maker: Callable[..., Callable[..., Any]] = namespace["make"]
    return maker


class PluginHost:
    """The run's plugin manager, with every hook implementation guarded.

    Guarding replaces each ``HookImpl.function`` by a small closure: pluggy
    still selects and orders implementations, and the closure adds one
    Python call per implementation, with the implementation's own
    parameters (:func:`_guard_maker`).  With ``strict`` nothing is wrapped and
    a plugin's exception propagates (for plugin development).  With
    ``measure`` the closure also adds the time each plugin spends to
    :attr:`overhead`.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        sources: dict[str, PluginSource],
        *,
        strict: bool,
        measure: bool,
        trace: bool,
    ) -> None:
        self.pm = pm
        self.hook = pm.hook
        self.sources = sources
        self.strict = strict
        self.faults: dict[str, Fault] = {}
        self.overhead: dict[str, float] = {}
        self._undo_trace: Callable[[], None] | None = None
        # Names by object, kept after a plugin is unregistered: late errors of its
        # background work are still attributed to it (and not reported twice).
        self._names = {id(plugin): name for name, plugin in pm.list_name_plugin() if plugin is not None}
        if not strict or measure:
            for name, plugin in list(pm.list_name_plugin()):
                if plugin is not None:
                    self._guard_plugin(name, plugin, measure=measure)
        if trace:
            self._undo_trace = pm.add_hookcall_monitoring(*self._tracer())

    def _guard_plugin(self, name: str, plugin: object, *, measure: bool) -> None:
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    # HookImpl.function is Final for type checkers only; replacing it is
                    # the least intrusive way to isolate one plugin without re-implementing
                    # pluggy's argument selection.
                    # pluggy passes the arguments an implementation names positionally, those
                    # with defaults (kwargnames) by keyword: without those, a guard of the same arity.
                    arity = None if getattr(impl, "kwargnames", ()) else len(impl.argnames)
                    impl.function = self._wrap(name, caller.name, impl.function, measure, arity)  # type: ignore[misc]

    def _wrap(
        self, name: str, hook_name: str, fn: Callable[..., Any], measure: bool, arity: int | None = None
    ) -> Callable[..., Any]:
        faults = self.faults
        strict = self.strict
        fault = self.fault
        if not measure and arity is not None:
            return _guard_maker(arity)(fn, name, hook_name, faults, fault)

        if measure:
            overhead = self.overhead
            overhead.setdefault(name, 0.0)
            clock = time.perf_counter

            def timed(*args: Any, **kwargs: Any) -> Any:
                if name in faults:
                    return None
                start = clock()
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if strict:
                        raise
                    fault(name, hook_name, exc)
                    return None
                finally:
                    overhead[name] += clock() - start

            return timed

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if name in faults:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                fault(name, hook_name, exc)
                return None

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

    def owner_of(self, fn: Callable[..., Any]) -> str | None:
        """The registered name of the plugin a bound method ``fn`` belongs to."""
        owner = getattr(fn, "__self__", None)
        return self._names.get(id(owner)) if owner is not None else None

    def fault_summary(self) -> str:
        """One line per disabled plugin, for the end of a fit ('' when none)."""
        return "\n".join(f"  {f.plugin}: {f.hook}: {type(f.error).__name__}: {f.error}" for f in self.faults.values())

    def _tracer(self) -> tuple[Callable[..., None], Callable[..., None]]:
        starts: list[float] = []

        def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            starts.append(time.perf_counter())

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            elapsed = time.perf_counter() - starts.pop()
            step = kwargs.get("step", "")
            names = ",".join(impl.plugin_name for impl in hook_impls)
            print(
                f"tbhooks trace: {hook_name} step={step} {elapsed * 1e6:.1f}us [{names}]",
                file=sys.stderr,
            )

        return before, after

    def close(self) -> None:
        """Stop tracing; the manager itself is dropped with the run."""
        if self._undo_trace is not None:
            self._undo_trace()
            self._undo_trace = None
