"""Placeholder for the embeddings plugin (being written)."""

from __future__ import annotations


class Embeddings:
    name = "embeddings"
