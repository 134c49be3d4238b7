"""Synthetic clinical cohorts for the demo, the tests and the benchmarks (`fedgate synth`).

Public API: `generate_site` for one site's table in memory, `site_batches` for the same rows as a stream
of chunks, `write_cohorts` for a federation on disk, `site_for_index` for which site sits at a position,
`SCHEMA` for the exact columns and types.
"""

from __future__ import annotations

import pyarrow as pa

from gateway.synth.cohort import CHUNK_ROWS, MAX_SITE_ROWS, SCHEMA, CaseMix, site_batches
from gateway.synth.errors import InvalidSynthArgument, OutputNotWritable, SynthError
from gateway.synth.sites import COUNTRY_ORDER, Site, SiteProfile, site_for_index, split_rows
from gateway.synth.vocab import CONSENTS, DIAGNOSIS_CODES, DUO_TERMS
from gateway.synth.writer import (
    FORMATS,
    SiteCohort,
    SynthProgress,
    check_arguments,
    check_output,
    write_cohorts,
    write_site_parquet,
)

__all__ = [
    "CHUNK_ROWS",
    "CONSENTS",
    "COUNTRY_ORDER",
    "DIAGNOSIS_CODES",
    "DUO_TERMS",
    "FORMATS",
    "MAX_SITE_ROWS",
    "SCHEMA",
    "CaseMix",
    "InvalidSynthArgument",
    "OutputNotWritable",
    "Site",
    "SiteCohort",
    "SiteProfile",
    "SynthError",
    "SynthProgress",
    "check_arguments",
    "check_output",
    "generate_site",
    "site_batches",
    "site_for_index",
    "split_rows",
    "write_cohorts",
    "write_site_parquet",
]


def generate_site(site_index: int, rows: int, seed: int, *, chunk_rows: int = CHUNK_ROWS) -> pa.Table:
    """The cohort of the site at `site_index` with `rows` rows, in memory: the same rows `write_cohorts`
    writes for that site when it gets `rows` rows under `seed`."""
    if site_index < 0:
        raise InvalidSynthArgument("site_index", site_index, "must be 0 or more")
    if not 1 <= rows <= MAX_SITE_ROWS:
        raise InvalidSynthArgument("rows", rows, f"must be between 1 and {MAX_SITE_ROWS:,}")
    if seed < 0:
        raise InvalidSynthArgument("seed", seed, "must be 0 or more")
    if chunk_rows < 1:
        raise InvalidSynthArgument("chunk_rows", chunk_rows, "must be at least 1")
    site = site_for_index(site_index)
    return pa.concat_tables(table for table, _ in site_batches(site, rows, seed, chunk_rows))
