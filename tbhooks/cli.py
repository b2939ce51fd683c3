"""The ``tbhooks`` command: ``tbhooks plugins`` and ``tbhooks demo``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def list_plugins(autoload: bool = True) -> list[tuple[str, str, str, str, list[str]]]:
    """``(name, origin, distribution, version, hooks)`` for every plugin a run would register."""
    from tbhooks.manager import make_plugin_manager

    pm, sources = make_plugin_manager(autoload=autoload)
    rows = []
    for name, plugin in pm.list_name_plugin():
        source = sources.get(name)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        if source is not None:
            rows.append((name, source.origin, source.distribution, source.version, hooks))
    return rows


def _plugins(args: argparse.Namespace) -> int:
    rows = list_plugins()
    width = max(len(r[0]) for r in rows) if rows else 4
    for name, origin, dist, version, hooks in rows:
        print(f"{name:<{width}}  {origin:<10}  {dist} {version}".rstrip())
        print(f"{'':<{width}}  hooks: {', '.join(hooks)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tbhooks.demo import main as demo_main

    return demo_main(args.demo_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tbhooks`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tbhooks", description="Pluggable TensorBoard logging for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list the plugins a run registers, with distribution, version and hooks")
    plugins.set_defaults(func=_plugins)
    demo = sub.add_parser(
        "demo", help="train the PyTorch TensorBoard tutorial's network with every plugin", add_help=False
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=_demo)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # REMAINDER in a subparser refuses a first argument that starts with "--"
        # ("unrecognized arguments: --logdir"), so the demo's arguments bypass it.
        return int(_demo(argparse.Namespace(demo_args=argv[1:])))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
