"""Ingest throughput: synthetic rows from Parquet through a 10-column spec into the DuckDB store.

    python bench/ingest.py [--rows N] [--keep DIR]

The source is generated first in a child process, so the peak memory reported is the ingest's own.
Prints progress lines, then one JSON object as the last line: {"rows", "rows_per_s", "cpu_s",
"peak_rss_mb", "peak_tree_rss_mb", ...}; the CPU and tree figures add the pseudonym worker processes the
ingest starts. On a shared machine the CPU seconds move less with other work than the wall clock does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SPEC = """\
dataset: bench
agreement: DSA-BENCH
patient_key: patient_id
duo: [DUO:0000042]
k_anonymity: {k: 5}
columns:
  patient_id: {action: pseudonym, identifier: direct}
  name: {action: drop, identifier: direct}
  birth_date: {action: generalize, method: age, at: admission_date, band: 10, bottom: 40, top: 80,
               as: age_band, identifier: quasi}
  sex: {action: keep, identifier: quasi}
  postcode: {action: generalize, method: postcode, keep: 1, min_count: 200, identifier: quasi}
  admission_date: date_shift
  discharge_date: date_shift
  icd10: keep
  bmi: keep
  smoking: keep
"""
COLUMNS = ["patient_id", "name", "birth_date", "sex", "postcode", "admission_date", "discharge_date",
           "icd10", "bmi", "smoking"]  # fmt: skip

GENERATE = (
    "import sys; from gateway.synth import write_site_parquet; "
    "write_site_parquet(sys.argv[2], int(sys.argv[1]), 2026, columns=sys.argv[3].split(','))"
)


def _rss_kb(pid: str) -> int:
    try:
        with Path(f"/proc/{pid}/status").open() as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _TreeMemory:
    """Samples the resident memory of this process plus its children (the ingest's workers)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            children: set[str] = set()
            for task in Path("/proc/self/task").iterdir():
                with contextlib.suppress(OSError):
                    children.update((task / "children").read_text().split())
            total = _rss_kb("self") + sum(_rss_kb(pid) for pid in children)
            self.peak_mb = max(self.peak_mb, total / 1024)

    def __enter__(self) -> _TreeMemory:
        if Path("/proc/self/task").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _cpu_seconds() -> float:
    """User and system time of this process and of its children that have ended (the ingest's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="keep the work folder here instead of a temporary one")
    args = parser.parse_args()

    from connectors import ParquetConnector
    from pseudonymize.ingest import ingest
    from pseudonymize.keys import SecretKey
    from pseudonymize.spec import load_spec
    from pseudonymize.store import Store

    work = args.keep or Path(tempfile.mkdtemp(prefix="fedgate-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "source.parquet"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", GENERATE, str(args.rows), str(source), ",".join(COLUMNS)], check=True
    )
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s -> {source}", flush=True)

    spec_path = work / "bench.spec.yaml"
    spec_path.write_text(SPEC)
    master = SecretKey(base64.b64decode(base64.b64encode(os.urandom(32))))
    store_file = work / "store.duckdb"
    store_file.unlink(missing_ok=True)
    tree = _TreeMemory()
    with Store(f"duckdb:///{store_file}") as store, tree:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = ingest(
            ParquetConnector(source), load_spec(spec_path), str(spec_path), master, store, jurisdiction="DE",
            override_k=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        cpu_seconds = _cpu_seconds() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    entry = result.entry
    print(
        f"ingested {entry.row_count:,} rows in {seconds:.2f}s; k={entry.risk_report['smallest_class']}",
        flush=True,
    )
    figures = {
        "rows": entry.row_count,
        "seconds": round(seconds, 3),
        "rows_per_s": round(entry.row_count / seconds),
        "cpu_s": round(cpu_seconds, 1),
        "peak_rss_mb": round(peak_mb, 1),
        # this process and its pseudonym workers together, sampled every 50 ms
        "peak_tree_rss_mb": round(max(tree.peak_mb, peak_mb), 1),
        "cpus": os.cpu_count(),
    }
    if args.keep is None:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
