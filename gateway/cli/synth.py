"""`fedgate synth`: write synthetic clinical cohorts for demos, tests and benchmarks."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.synth import (
    InvalidSynthArgument,
    OutputNotWritable,
    Site,
    SiteCohort,
    check_arguments,
    check_output,
    write_cohorts,
)


class OutputFormat(StrEnum):
    """File format of the written cohorts."""

    parquet = "parquet"
    csv = "csv"


def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write one sub-folder per site into.")],
    sites: Annotated[int, typer.Option("--sites", help="Number of sites (hospitals).")] = 3,
    rows: Annotated[int, typer.Option("--rows", help="Rows over all sites; bigger sites get more.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed and arguments, same bytes.")] = 0,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="File format.")] = OutputFormat.parquet,
) -> None:
    """Write synthetic patient cohorts, one per site: OUT/<site-id>/patients.parquet (or .csv)."""
    console = Console()
    errors = Console(stderr=True)
    started = time.perf_counter()
    try:
        # Check before the progress bar starts, so a refusal prints only the error.
        check_arguments(sites, rows, seed, fmt.value)
        check_output(out)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("generating", total=rows)
            done: dict[str, int] = {}

            def report(site: Site, written: int, site_rows: int) -> None:
                progress.update(
                    task,
                    advance=written - done.get(site.site_id, 0),
                    description=f"{site.site_id} ({written:,}/{site_rows:,})",
                )
                done[site.site_id] = written

            cohorts = write_cohorts(out, sites, rows, seed, fmt.value, progress=report)
    except InvalidSynthArgument as exc:
        errors.print(f"[red]error:[/red] {escape(f'--{exc}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OutputNotWritable as exc:
        errors.print(f"[red]error:[/red] {escape(f'--out {exc}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    console.print(_summary(cohorts))
    elapsed = time.perf_counter() - started
    files = f"{out}/<site>/{cohorts[0].path.name}"
    # soft_wrap: a path broken over two lines cannot be copied; markup off: a path may hold "[...]".
    message = f"{rows:,} rows for {sites} site(s) in {elapsed:.1f} s: {files}"
    console.print(message, highlight=False, soft_wrap=True, markup=False)


def _summary(cohorts: list[SiteCohort]) -> Table:
    # Two-line headers and no vertical rules keep the table inside an 80-column terminal.
    table = Table(
        title="Synthetic cohorts", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), collapse_padding=True
    )
    table.add_column("site")
    for header in ("rows", "women", "mean\nage", "diabetes", "current\nsmokers", "deaths"):
        table.add_column(header, justify="right")
    for header in ("narrow\nconsent", "with-\ndrawn"):
        table.add_column(header, justify="right")
    for cohort in cohorts:
        mix = cohort.case_mix
        table.add_row(
            cohort.site_id,
            f"{cohort.rows:,}",
            f"{mix.share(mix.female):.1%}",
            f"{mix.mean_age:.1f}",
            f"{mix.share(mix.diabetes):.1%}",
            f"{mix.share(mix.current_smokers):.1%}",
            f"{mix.share(mix.deaths):.1%}",
            f"{mix.share(mix.narrow_consent):.1%}",
            f"{mix.share(mix.withdrawn):.1%}",
        )
    return table
