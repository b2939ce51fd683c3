"""Placeholder for the hparams plugin (being written)."""

from __future__ import annotations


class HParams:
    name = "hparams"
