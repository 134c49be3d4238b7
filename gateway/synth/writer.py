"""Write a synthetic federation to disk: one folder per site holding `patients.parquet` (or `.csv`).

Each site is written chunk by chunk (one Parquet row group per chunk), so memory stays bounded by a chunk
whatever the row count, and into a hidden partial file that is renamed only once complete: an interrupted
run never leaves a truncated cohort under the final name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gateway.synth.cohort import CHUNK_ROWS, MAX_SITE_ROWS, SCHEMA, CaseMix, site_batches
from gateway.synth.errors import InvalidSynthArgument, OutputNotWritable
from gateway.synth.sites import Site, site_for_index, split_rows

Format = Literal["parquet", "csv"]
FORMATS: tuple[str, ...] = get_args(Format)
FILE_STEM = "patients"
# A guard against a typo creating a million folders; far above any federation the demo or benchmarks need.
MAX_SITES = 1_000


@dataclass(frozen=True)
class SiteCohort:
    """One written site: where its file is, how many rows it has and what its case mix came out as."""

    site_id: str
    country: str
    path: Path
    rows: int
    case_mix: CaseMix


class SynthProgress(Protocol):
    """Told after every chunk: which site, how many of its rows are written so far, and its total."""

    def __call__(self, site: Site, written: int, site_rows: int) -> None: ...


def write_site_parquet(
    out: Path, rows: int, seed: int, *, site_index: int = 0, columns: Sequence[str] | None = None
) -> None:
    """One site's cohort as a single Parquet file, chunk by chunk (optionally only `columns`): the
    source the benchmarks ingest."""
    writer: pq.ParquetWriter | None = None
    try:
        for table, _ in site_batches(site_for_index(site_index), rows, seed):
            table = table.select(list(columns)) if columns is not None else table
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table, row_group_size=CHUNK_ROWS)
    finally:
        if writer is not None:
            writer.close()


def check_arguments(sites: int, rows: int, seed: int, fmt: str) -> list[int]:
    """Validate the arguments of a run and return the rows each site gets."""
    if not 1 <= sites <= MAX_SITES:
        raise InvalidSynthArgument("sites", sites, f"must be between 1 and {MAX_SITES:,}")
    if rows < 1:
        raise InvalidSynthArgument("rows", rows, "must be at least 1")
    if rows < sites:
        raise InvalidSynthArgument("rows", rows, f"must be at least the number of sites ({sites})")
    if seed < 0:
        raise InvalidSynthArgument("seed", seed, "must be 0 or more")
    if fmt not in FORMATS:
        raise InvalidSynthArgument("format", fmt, f"must be one of {', '.join(FORMATS)}")
    per_site = split_rows(rows, sites)
    if max(per_site) > MAX_SITE_ROWS:
        raise InvalidSynthArgument(
            "rows", rows, f"gives a site more than {MAX_SITE_ROWS:,} rows, the MRN space; add sites"
        )
    return per_site


def check_output(out: Path) -> None:
    """Refuse an output location that exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise OutputNotWritable(out, "exists and is not a folder")


def write_cohorts(
    out: Path,
    sites: int,
    rows: int,
    seed: int,
    fmt: str = "parquet",
    progress: SynthProgress | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> list[SiteCohort]:
    """Write `sites` cohorts sharing `rows` rows into `out`/<site-id>/patients.<fmt>; same arguments, same
    bytes. `chunk_rows` is part of the seed's meaning: change it and the rows change."""
    per_site = check_arguments(sites, rows, seed, fmt)
    if chunk_rows < 1:
        raise InvalidSynthArgument("chunk_rows", chunk_rows, "must be at least 1")
    check_output(out)
    written = []
    for index, site_rows in enumerate(per_site):
        site = site_for_index(index)
        target = out / site.site_id / f"{FILE_STEM}.{fmt}"
        case_mix = CaseMix()
        with _partial_file(target) as partial, _table_writer(partial, fmt) as write:
            for table, counts in site_batches(site, site_rows, seed, chunk_rows):
                write(table)
                case_mix.add(counts)
                if progress is not None:
                    progress(site, case_mix.rows, site_rows)
        written.append(SiteCohort(site.site_id, site.country, target, site_rows, case_mix))
    return written


@contextlib.contextmanager
def _partial_file(target: Path) -> Iterator[Path]:
    """A hidden sibling of `target` to write into; renamed to `target` on success, removed on failure."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(target.parent, exc.strerror or str(exc)) from exc
    try:
        yield partial
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputNotWritable(target, exc.strerror or str(exc)) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class _Write(Protocol):
    def __call__(self, table: pa.Table) -> None: ...


@contextlib.contextmanager
def _table_writer(path: Path, fmt: str) -> Iterator[_Write]:
    if fmt == "csv":
        with pacsv.CSVWriter(str(path), SCHEMA) as csv_writer:
            yield csv_writer.write_table
    else:
        with pq.ParquetWriter(str(path), SCHEMA, compression="zstd") as parquet_writer:
            yield parquet_writer.write_table
