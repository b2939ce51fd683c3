"""Placeholder for the graph plugin (being written)."""

from __future__ import annotations


class Graph:
    name = "graph"
