"""The demo's one error type: a problem the user can fix, reported as one line."""

from __future__ import annotations


class DemoError(Exception):
    """A problem the user can fix (missing data, a missing package, a bad option).

    ``tbhooks demo`` prints it as one line on stderr, without a traceback, and exits with status 2.
    """


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its type name when it has none), for a :class:`DemoError`."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
