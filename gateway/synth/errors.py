"""Errors of the synthetic-data generator; each names the argument or path that was wrong.

SynthError
├── InvalidSynthArgument   a count, seed or format outside what the generator accepts (.argument, .value)
└── OutputNotWritable      the output folder is a file, or a site file cannot be written (.path)
"""

from __future__ import annotations

from pathlib import Path


class SynthError(Exception):
    """Synthetic cohorts cannot be generated as asked."""


class InvalidSynthArgument(SynthError):
    """An argument is outside what the generator accepts; `argument` is its name, as the CLI spells it."""

    def __init__(self, argument: str, value: object, requirement: str) -> None:
        self.argument = argument
        self.value = value
        super().__init__(f"{argument} {requirement} (got {value!r})")


class OutputNotWritable(SynthError):
    """The output location cannot hold the cohorts; `path` is where it failed."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")
