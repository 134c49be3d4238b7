"""Audit log benchmark: durable appends/s with 8 writers on SQLite, checkpoint latency under that load,
verification speed of an N-entry export, and inclusion-proof time at N entries.

    .venv/bin/python bench/audit.py [--entries 1000000] [--writers 8] [--seconds 5]

Progress goes to stderr; the last line on stdout is the JSON result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on the import path, and this file is named like the
# package it measures: drop the folder so that `audit` is the package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import parse_checkpoint_body
from audit.entry import Actor
from audit.log import AuditLog, Event
from audit.merkle import verify_inclusion
from audit.notes import parse_note
from audit.verify import verify_export

ORIGIN = "fedgate.example/bench"
ACTOR = Actor("researcher-17", "uni-example")
_BATCH = 20_000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def digest(i: int, salt: str) -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


def event(i: int) -> tuple[str, dict[str, Any]]:
    """A realistic mix: every query is received, decided, executed and released."""
    q = digest(i // 4, "q")
    kind = i % 4
    if kind == 0:
        return "query.received", {
            "query_hash": q,
            "kind": "count",
            "dataset": "diabetes-2024",
            "dsa": "DSA-7",
        }
    if kind == 1:
        return "query.decided", {"query_hash": q, "decision": "allow", "policy_bundle": digest(0, "b"),
                                 "reasons": ["DSA-7 allows aggregate counts for DUO:0000007"]}  # fmt: skip
    if kind == 2:
        return "query.executed", {"query_hash": q, "dataset_digest": digest(0, "d"), "rows": 1000 + i % 977}
    return "query.released", {
        "query_hash": q,
        "result_hash": digest(i, "r"),
        "cells": 12,
        "suppressed": i % 3,
    }


def _covered(log: AuditLog) -> int:
    note = log.latest_checkpoint()
    return -1 if note is None else parse_checkpoint_body(parse_note(note).text).size


def bench_appends(workdir: Path, writers: int, seconds: float) -> tuple[float, float]:
    """Durable appends/s with `writers` threads, and the worst append→signed-checkpoint latency."""
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{workdir / 'appends.db'}", ORIGIN, key, checkpoint_interval_s=0.25) as log:
        stop = threading.Event()
        counts = [0] * writers

        def writer(w: int) -> None:
            i = w
            while not stop.is_set():
                name, payload = event(i)
                log.append(name, actor=ACTOR, request_id=f"w{w}-{i}", payload=payload)
                counts[w] += 1
                i += writers

        latencies: list[float] = []

        def sampler() -> None:
            while not stop.is_set():
                receipt = log.append("auth.failed", payload={"reason": "bench-sample"})
                acked = time.monotonic()
                while _covered(log) <= receipt.index and not stop.is_set():
                    time.sleep(0.005)
                if not stop.is_set():
                    latencies.append(time.monotonic() - acked)
                time.sleep(0.1)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        probe = threading.Thread(target=sampler)
        start = time.monotonic()
        for t in [*threads, probe]:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in [*threads, probe]:
            t.join()
        elapsed = time.monotonic() - start
    rate = sum(counts) / elapsed
    say(f"appends: {sum(counts)} durable appends by {writers} writers in {elapsed:.1f}s = {rate:,.0f}/s")
    worst, median = max(latencies), statistics.median(latencies)
    say(
        f"checkpoint latency under load: max {worst:.3f}s, median {median:.3f}s over {len(latencies)} samples"
    )
    return rate, worst


def build_log(workdir: Path, entries: int) -> tuple[AuditLog, Path]:
    """An N-entry log written through the real writer (batched transactions), exported."""
    key = Ed25519PrivateKey.generate()
    log = AuditLog.open(f"sqlite:///{workdir / 'big.db'}", ORIGIN, key, checkpoint_interval_s=None)
    start = time.monotonic()
    for base in range(0, entries, _BATCH):
        batch = []
        for i in range(base, min(entries, base + _BATCH)):
            name, payload = event(i)
            batch.append(Event(name, payload, ACTOR, f"req-{i // 4}"))
        log.append_many(batch)
        if base and base % (10 * _BATCH) == 0:
            say(f"  built {base:,} entries ({time.monotonic() - start:.0f}s)")
    log.checkpoint()
    say(f"built a {entries:,}-entry log in {time.monotonic() - start:.1f}s")
    start = time.monotonic()
    path = workdir / "big.export"
    log.export(path)
    say(f"exported {path.stat().st_size / 1e6:.0f} MB in {time.monotonic() - start:.1f}s")
    return log, path


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_verify(log: AuditLog, path: Path) -> float:
    load = os.getloadavg()[0]
    cpu, start = _cpu_seconds(), time.monotonic()
    summary = verify_export(path, log.verifier_key(), workers=0)  # idle cores, as `fedgate audit verify`
    elapsed, cpu = time.monotonic() - start, _cpu_seconds() - cpu
    rate = summary.size / elapsed
    per_cpu = summary.size / cpu
    say(f"verify: {summary.size:,} entries in {elapsed:.2f}s = {rate:,.0f} entries/s")
    cores = os.cpu_count()
    say(
        f"  {cpu:.2f} CPU-s = {per_cpu:,.0f} entries per CPU-second; load average {load:.1f} on {cores} cores"
    )
    return rate


def bench_inclusion(log: AuditLog, samples: int = 1000) -> float:
    size = log.size
    root = log.root(size)
    rng = random.Random(1)
    indices = [rng.randrange(size) for _ in range(samples)]
    leaves = {e.index: e.leaf_hash for i in indices[:20] for e in log.entries(i, i + 1)}
    start = time.perf_counter()
    proofs = [log.inclusion_proof(i, size) for i in indices]
    elapsed = time.perf_counter() - start
    for i in indices[:20]:
        verify_inclusion(i, size, leaves[i], proofs[indices.index(i)], root)
    ms = elapsed / samples * 1000
    say(f"inclusion proof at {size:,} entries: {ms:.3f} ms each (mean of {samples}, from the store)")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="size of the log to verify and prove")
    parser.add_argument("--writers", type=int, default=8, help="concurrent appending threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to measure appends")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to put the databases (default: tmp)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        appends, latency = bench_appends(workdir, args.writers, args.seconds)
        log, path = build_log(workdir, args.entries)
        try:
            verify_rate = bench_verify(log, path)
            inclusion_ms = bench_inclusion(log)
        finally:
            log.close()
    result = {
        "appends_per_s": round(appends),
        "checkpoint_latency_s": round(latency, 3),
        "verify_entries_per_s": round(verify_rate),
        "inclusion_proof_ms": round(inclusion_ms, 3),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
