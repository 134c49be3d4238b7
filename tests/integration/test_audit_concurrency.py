"""Several writer processes on one database produce one linear history (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import storage
from audit.checkpoint import parse_checkpoint_body
from audit.errors import OldSizeMismatch
from audit.keys import generate_log_key
from audit.log import AuditLog
from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from audit.notes import b64, parse_note
from audit.verify import verify_export
from audit.witness import Witness

ORIGIN = "fedgate.example/concurrent"

# One writer process: several threads (like a uvicorn worker's thread pool) append `per_thread` each;
# its checkpoint thread signs while the others write.
WRITER = """
import sys, threading
from audit.keys import load_log_key
from audit.log import AuditLog
url, key_file, origin, name = sys.argv[1:5]
threads, per_thread = int(sys.argv[5]), int(sys.argv[6])
log = AuditLog.open(url, origin, load_log_key(key_file), checkpoint_interval_s=0.1)
def work(t):
    for i in range(per_thread):
        log.append("auth.failed", request_id=f"{name}-{t}-{i}", payload={"reason": "expired"})
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
log.close()
"""


def run_writers(url: str, key_file: Path, processes: int, threads: int, per_thread: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(key_file), ORIGIN, f"p{p}", str(threads), str(per_thread)]
        )
        for p in range(processes)
    ]
    for proc in procs:
        assert proc.wait(timeout=240) == 0


def check_one_linear_history(url: str, key: Ed25519PrivateKey, expected: int, tmp_path: Path) -> None:
    with AuditLog.open(url, ORIGIN, key, checkpoint_interval_s=None) as log:
        assert log.size == expected
        entries = log.entries(0, expected)
        objs = [json.loads(e.data) for e in entries]
        assert [o["index"] for o in objs] == list(range(expected))  # no gap, no duplicate index
        rids = [o["request_id"] for o in objs]
        assert len(set(rids)) == expected  # every append landed exactly once
        for a, b in zip(entries, objs[1:], strict=False):  # no fork: each entry links to its predecessor
            assert b["prev"] == b64(leaf_hash(a.data))
        # Every checkpoint the concurrent writers signed is a root of this one history.
        with log._engines.reader.connect() as conn:
            notes = [str(n) for n in conn.execute(sa.select(storage.checkpoints.c.note)).scalars()]
        assert notes, "the writers' checkpoint threads signed nothing"
        for note in notes:
            cp = parse_checkpoint_body(parse_note(note).text)
            assert cp.root == log.root(cp.size)
        # Proofs come from the stored nodes the concurrent writers left behind.
        root = log.root(expected)
        for index in (0, expected // 3, expected - 1):
            verify_inclusion(
                index, expected, entries[index].leaf_hash, log.inclusion_proof(index, expected), root
            )
        old = expected // 2 + 1
        verify_consistency(old, expected, log.consistency_proof(old, expected), log.root(old), root)
        log.checkpoint()
        log.export(tmp_path / "log.export")
        vkey = log.verifier_key()
    assert verify_export(tmp_path / "log.export", vkey).size == expected


@pytest.mark.slow
def test_four_sqlite_processes_times_two_thousand_appends(tmp_path: Path) -> None:
    key_file = tmp_path / "log.pem"
    key = generate_log_key(key_file)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    run_writers(url, key_file, processes=4, threads=4, per_thread=500)
    check_one_linear_history(url, key, 8000, tmp_path)


@pytest.mark.postgres
def test_postgres_processes_append_one_linear_history(pg_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "log.pem"
    key = generate_log_key(key_file)
    run_writers(pg_url, key_file, processes=4, threads=2, per_thread=150)
    check_one_linear_history(pg_url, key, 1200, tmp_path)


@pytest.mark.postgres
def test_postgres_witness_cannot_be_rolled_back(pg_url: str, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{tmp_path / 'log.db'}", ORIGIN, key, checkpoint_interval_s=None) as log:
        notes = {}
        for size in range(1, 9):
            log.append("auth.failed", payload={"reason": "expired"})
            notes[size] = log.checkpoint()
        proofs = {(a, b): log.consistency_proof(a, b) for a in range(1, 9) for b in range(a, 9)}
        vkey = log.verifier_key()
    wkey = Ed25519PrivateKey.generate()
    Witness(pg_url, "witness.example/pg", wkey, {ORIGIN: vkey}).close()
    accepted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def submit(seed: int) -> None:
        w = Witness(pg_url, "witness.example/pg", wkey, {ORIGIN: vkey})
        try:
            for step in range(20):
                old = w.cosigned(ORIGIN)[0]
                new = min(8, old + 1 + (seed + step) % 2)
                try:
                    w.add_checkpoint(old, proofs[(old, new)] if old else [], notes[new])
                except OldSizeMismatch:
                    continue
                with lock:
                    accepted.append((old, new))
        finally:
            w.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    forward = sorted((o, n) for o, n in accepted if o != n)
    sizes = [0]
    for old, new in forward:
        assert old == sizes[-1], f"step {old}->{new} did not start at the cosigned size {sizes[-1]}"
        sizes.append(new)
    assert sizes[-1] == 8
