"""Placeholder for the histograms plugin (being written)."""

from __future__ import annotations


class Histograms:
    name = "histograms"
