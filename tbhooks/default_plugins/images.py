"""Placeholder for the images plugin (being written)."""

from __future__ import annotations


class Images:
    name = "images"
