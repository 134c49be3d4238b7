"""Where a served small query's time goes under load: each step it waits for, timed inside the workers.

    python bench/query_waits.py [--rate R] [--seconds S] [--workers W] [--rows N] [--clients C]

Builds bench/query.py's site and serves it with `fedgate serve` over real HTTP, as bench/query.py does, with
W workers (default one per core, at least two: the hooks are installed in the workers of a multi-worker
server, bench/waits/sitecustomize.py). bench/query.py's clients send its small query (a count by one column
on 20,000 rows) at R requests/s (default 250) for 3 s to warm the gateway up, then for S seconds (default
10), which are measured. Each answered query is timed at every step it passes, in the worker that served
it:

- `decide`: received to decided, on the event loop (the received entry, the policy, the decided entry);
- `wait_pool`: decided to the start of the pool pass that took its release (gateway.releases);
- `pass`: that pass up to its answer queued for the audit log (the count, the compile, the DuckDB run the
  pass's queries share, disclosure control, the entries), including the members taken before it;
- `run`: the DuckDB statement alone (part of `pass`); `count`: the query's count against its agreement's
  limit in the state database, a write every worker makes (part of `pass`);
- `wait_commit`: queued to the audit log's commit of its trail;
- `to_loop`: the commit to the event loop taking the answer, and `resume`: to the request's end;
- `total`: received to answered, inside the worker.

Each commit of the audit log is timed too: `commit_start`, how long the oldest entry awaited in it had been
queued when the commit started (the committer's group-commit window and its wake-up); `commit`, the commit
itself (the writers' lock, shared by every worker, and the transaction); `lock_wait` and `lock_hold`, its
wait for that lock and its hold of it. `client` is the client's own latency, counted from when each
request was due, as in bench/query.py. Garbage collections in the workers are counted, the longest timed,
in the warm-up and in the measured seconds.

Prints a table of p50/p90/p99 in ms, then one JSON object as the last line: {"offered_rps", "answered"
(requests of the measured seconds counted in `client`: answered, or given up on as bench/query.py does),
"failed_requests" (of the measured seconds), "taken_mean", "commits_per_s", "entries_per_commit",
"full_collections", "longest_collection_ms", "warmup_full_collections", "warmup_longest_collection_ms", and
for each figure above "<name>_p50_ms" and "<name>_p99_ms"}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/audit.py would shadow the `audit` package for a script run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "bench/waits"
STEPS = ("decide", "wait_pool", "pass", "run", "wait_commit", "to_loop", "resume", "total")
"""The steps of an answered query, from its record ("q"), in order."""


def _bench_query() -> Any:
    """bench/query.py, for its site, its load and its figures."""
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench/query.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def steps_of(record: list[Any]) -> dict[str, float]:
    """One query's record from the hooks as its steps, in seconds."""
    received, decided, started, queued, committed, on_loop, answered, run_ms, _taken = record[1:]
    return {
        "decide": decided - received,
        "wait_pool": started - decided,
        "pass": queued - started,
        "run": run_ms / 1000,
        "wait_commit": committed - queued,
        "to_loop": on_loop - committed,
        "resume": answered - on_loop,
        "total": answered - received,
    }


def read_records(folder: Path) -> dict[str, list[list[Any]]]:
    """Every worker's records by kind (bench/waits/sitecustomize.py): "q", "partial", "commit", "count" and
    "gc"."""
    kinds: dict[str, list[list[Any]]] = {"q": [], "partial": [], "commit": [], "count": [], "gc": []}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            kinds[record[0]].append(record)
    return kinds


def within(records: list[list[Any]], start: float, end: float) -> list[list[Any]]:
    """The records that began between `start` and `end` (perf_counter seconds: one monotonic clock for
    every process of the machine)."""
    return [r for r in records if start <= r[1] <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=250.0, help="requests/s offered")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the big table (not queried here)")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, os.cpu_count() or 1),
        help="uvicorn workers (default: one per core, at least two)",
    )
    args = parser.parse_args()
    if args.workers < 2:
        parser.error(
            "--workers must be 2 or more: the hooks are installed in the workers of a multi-worker server"
        )
    bench = _bench_query()
    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-waits-"))
    try:
        records = work / "waits"
        records.mkdir()
        port = bench.free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HOOKS), str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "FEDGATE_BENCH_WAITS": str(records),
        }
        with UnsafeLocalIdentityProvider(audience=bench.AUDIENCE) as idp:
            config = bench.build_site(work, args.rows, idp.issuer_url, port, args.workers)
            server, url = bench.serve(config, port, env)
            try:
                tokens = bench.researcher_tokens(idp, args.clients)
                # Warm up at the same rate: every token checked by each worker, every statement parsed, the
                # caches filled, and the store's connection pools grown (on the shared 2-core development
                # machine a new connection's first query took 100-130 ms: it attaches the store anew).
                bench.run_load(bench.fixed_rate(url, tokens, 3.0, args.clients, args.rate))
                time.sleep(0.5)
                bench.FAILED.clear()
                start = time.perf_counter()
                client = bench.run_load(bench.fixed_rate(url, tokens, args.seconds, args.clients, args.rate))
                end = time.perf_counter()
            finally:
                stderr = bench.stop(server).decode(errors="replace")
        kinds = read_records(records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "Traceback" in stderr or "exited with code" in stderr:
        raise SystemExit(f"the gateway failed while timed: {stderr[-2000:]}")
    queries = within(kinds["q"], start, end)
    partial = within(kinds["partial"], start, end)
    if partial:
        missed = sorted({step for record in partial for step in record[2]})
        print(f"{len(partial)} queries were not timed at every step (not seen: {', '.join(missed)})")
    figures: dict[str, list[float]] = {step: [] for step in STEPS}
    for record in queries:
        for step, seconds in steps_of(record).items():
            figures[step].append(seconds)
    commits = within(kinds["commit"], start, end)
    figures["count"] = [r[2] for r in within(kinds["count"], start, end)]
    figures["commit_start"] = [r[2] for r in commits]
    figures["commit"] = [r[3] for r in commits]
    figures["lock_wait"] = [r[5] for r in commits]
    figures["lock_hold"] = [r[6] for r in commits]
    figures["client"] = client
    collections = within(kinds["gc"], start, end)
    warmup_collections = [r for r in kinds["gc"] if r[1] < start]
    result: dict[str, Any] = {
        "offered_rps": args.rate,
        "answered": len(client),
        "failed_requests": len(bench.FAILED),
        "taken_mean": round(sum(r[-1] for r in queries) / len(queries), 2) if queries else None,
        "commits_per_s": round(len(commits) / (end - start), 1),
        "entries_per_commit": round(sum(r[4] for r in commits) / len(commits), 2) if commits else None,
        "full_collections": sum(1 for r in collections if r[3] == 2),
        "longest_collection_ms": round(max((r[2] for r in collections), default=0.0) * 1000, 2),
        "warmup_full_collections": sum(1 for r in warmup_collections if r[3] == 2),
        "warmup_longest_collection_ms": round(max((r[2] for r in warmup_collections), default=0.0) * 1000, 2),
    }
    print(f"{args.clients} clients at {args.rate:.0f} requests/s for {args.seconds:.0f} s, "
          f"{len(queries)} queries timed in the workers (ms):")  # fmt: skip
    print(f"{'':12} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, values in figures.items():
        if not values:
            raise SystemExit(f"nothing was timed for {name}: a hooked function of the gateway changed")
        p50, p90, p99 = (bench.percentile(values, p) * 1000 for p in (50, 90, 99))
        print(f"{name:12} {p50:8.1f} {p90:8.1f} {p99:8.1f}")
        result[f"{name}_p50_ms"] = round(p50, 2)
        result[f"{name}_p99_ms"] = round(p99, 2)
    print(f"audit commits: {result['commits_per_s']}/s, {result['entries_per_commit']} entries each")
    print(
        f"garbage collections: {len(collections)}, {result['full_collections']} of them full, the longest "
        f"{result['longest_collection_ms']:.1f} ms; in the warm-up {len(warmup_collections)}, "
        f"{result['warmup_full_collections']} full, the longest "
        f"{result['warmup_longest_collection_ms']:.1f} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
