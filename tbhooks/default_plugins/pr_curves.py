"""Placeholder for the pr_curves plugin (being written)."""

from __future__ import annotations


class PRCurves:
    name = "pr_curves"
