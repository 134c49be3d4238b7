"""Crash safety: a writer killed with SIGKILL at random points loses no acknowledged entry."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.keys import generate_log_key
from audit.log import AuditLog
from audit.notes import verifier_key_text
from audit.verify import verify_export

ORIGIN = "fedgate.example/crash"
TRIALS = 20

# The writer: 4 threads append as fast as they can, printing each receipt only after append returned;
# a checkpoint thread signs every 50 ms, so kills also land while a checkpoint is being signed.
WRITER = """
import sys, threading
from audit.keys import load_log_key
from audit.log import AuditLog
url, key_file, origin = sys.argv[1:4]
log = AuditLog.open(url, origin, load_log_key(key_file), checkpoint_interval_s=0.05)
out = threading.Lock()
def work(t):
    i = 0
    while True:
        r = log.append("auth.failed", request_id=f"t{t}-{i}", payload={"reason": "expired"})
        with out:
            sys.stdout.write(f"{r.index} {r.leaf_hash.hex()}\\n")
            sys.stdout.flush()
        i += 1
threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _acked(path: Path) -> dict[int, str]:
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line cut by the kill was never acknowledged
    return {int(i): h for i, h in (line.split() for line in complete.splitlines())}


@pytest.mark.slow
def test_sigkill_during_appends_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    key_file = tmp_path / "log.pem"
    key = generate_log_key(key_file)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    rng = random.Random(20)
    acked: dict[int, str] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for trial in range(TRIALS):
        out = tmp_path / f"acks-{trial}.txt"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, url, str(key_file), ORIGIN], stdout=sink, env=env
            )
            deadline = time.monotonic() + 20
            while out.stat().st_size == 0:  # wait for the first acknowledged append
                assert proc.poll() is None, "writer died on its own"
                assert time.monotonic() < deadline, "writer never acknowledged an append"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        new = _acked(out)
        assert new, "the writer acknowledged nothing before the kill"
        acked.update(new)
        with AuditLog.open(url, ORIGIN, checkpoint_interval_s=None) as log:
            size = log.size
            assert size >= max(acked) + 1
            stored = {e.index: e.leaf_hash.hex() for e in log.entries(0, size)}
            lost = [i for i, h in acked.items() if stored.get(i) != h]
            assert not lost, f"trial {trial}: acknowledged entries lost or changed: {lost[:5]}"
    # The log that survived 20 kills still verifies, and a new checkpoint is consistent with every
    # checkpoint the killed writers signed.
    with AuditLog.open(url, ORIGIN, key, checkpoint_interval_s=None) as log:
        log.append("auth.failed", payload={"reason": "after-crashes"})
        log.checkpoint()
        log.export(tmp_path / "log.export")
        size = log.size
    summary = verify_export(tmp_path / "log.export", verifier_key_text(ORIGIN, key.public_key()))
    assert summary.size == size
