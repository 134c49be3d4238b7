"""`fedgate synth`: write synthetic clinical cohorts for demos, tests and benchmarks."""

from __future__ import annotations


def synth() -> None:
    """Write synthetic cohorts."""
