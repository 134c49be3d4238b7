"""`fedgate ingest` and `fedgate catalog`: the steward's ingest path, from a source to the store."""

from __future__ import annotations


def ingest() -> None:
    """Pseudonymize a source into the site's store."""


def catalog() -> None:
    """List the datasets in the site's store."""
