"""The one name tbhooks is known by, and the two pluggy markers made from it.

``NAME`` is the marker project name, the ``PluginManager`` name and the
entry-point group, so a plugin found through an entry point and a plugin
passed by object are validated against the same specs.
"""

from __future__ import annotations

import pluggy

NAME = "tbhooks"
"""Project name of the markers, name of the plugin manager, entry-point group."""

hookspec = pluggy.HookspecMarker(NAME)
"""Marks a function in :mod:`tbhooks.hookspecs` as an event of the contract."""

hookimpl = pluggy.HookimplMarker(NAME)
"""Marks a plugin's function or method as the implementation of an event.

This is the one import a plugin author needs: ``from tbhooks import hookimpl``.
"""
