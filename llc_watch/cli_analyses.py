"""Subcommands that analyse an existing run folder (filled in as the analyses land)."""
from __future__ import annotations


def add_subcommands(sub) -> None:
    return None
