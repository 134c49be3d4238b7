"""`make demo`: one site end to end — synthetic data, pseudonymized ingest, catalog, a policy decision, and an
audit log verified offline. Each step prints the command a steward would type."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
console = Console()


def fedgate(*args: str, stdout: Path | None = None) -> None:
    """Run one `fedgate` command as a steward would, showing it first; stop the demo if it fails."""
    console.print(f"[bold cyan]$ fedgate {shlex.join(args)}{f' > {stdout.name}' if stdout else ''}[/]")
    with stdout.open("w") if stdout else open("/dev/null", "w") as sink:  # noqa: PTH123 - a sink for text
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=OUT,
            stdout=sink if stdout else None,
            # Rich wraps at 80 columns when it does not write to a terminal; the tables need more.
            env={**os.environ, "COLUMNS": os.environ.get("COLUMNS", "120")},
            check=False,
        )
    if result.returncode != 0:
        console.print(f"[bold red]demo stopped: the command above exited with {result.returncode}[/]")
        raise SystemExit(result.returncode)


def step(title: str, why: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))
    console.print(why, style="dim")


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    shutil.copytree(ROOT / "examples", OUT / "examples")
    config = "examples/site-de/site.toml"
    site_toml = OUT / config
    site_toml.write_text(site_toml.read_text().replace("../../policies", str(ROOT / "policies")))

    step("1. Synthetic data", "A realistic cohort for one hospital, with names, MRNs and dates of birth.")
    fedgate("synth", "--sites", "1", "--rows", "20000", "--seed", "7", "--out", "demo-data")

    step("2. Keys", "The master key derives pseudonym keys; the log key signs audit checkpoints.")
    fedgate("keygen", "--config", config)
    fedgate("audit", "keygen", "--config", config, stdout=OUT / "site-de.vkey")

    step(
        "3. Pseudonymized ingest",
        "Every column has a rule: MRNs become keyed pseudonyms, names are dropped, birth dates become age "
        "bands, postcodes areas, admission dates shift per patient. Ingest refuses a dataset whose "
        "k-anonymity is below the spec's threshold.",
    )
    fedgate(
        "ingest", "--config", config, "--dataset", "cohort", "--spec", "examples/cohort.spec.yaml",
        "--source", "demo-data/site-de/patients.parquet",
    )  # fmt: skip

    step("4. Catalog", "What the store holds: versions, digests, key fingerprints, risk reports.")
    fedgate("catalog", "--config", config)

    step("5. A policy decision", "Why a request would be refused, in the words of the agreement.")
    fedgate("policy", "explain", "--config", config, "--input", "examples/request.json")

    step("6. Audit", "An auditor verifies the site's log offline with nothing but the export and the key.")
    fedgate("audit", "export", "--config", config, "--out", "site-de.audit")
    fedgate("audit", "verify", "site-de.audit", "--key", "site-de.vkey")

    console.print()
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.1f}s[/]; files are in {OUT}")


if __name__ == "__main__":
    main()
