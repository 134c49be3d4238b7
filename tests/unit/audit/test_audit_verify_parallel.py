"""Chunked and multi-process verification finds the same first bad entry as the sequential path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_helpers import ORIGIN, append_samples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import export_format
from audit.entry import canonical
from audit.errors import AuditIntegrityError
from audit.log import AuditLog
from audit.merkle import leaf_hash, root_of
from audit.notes import b64
from audit.verify import reader as export_reader
from audit.verify import verify_export

N = 45  # not a multiple of the chunk size: the last chunk is partial


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], str, str]:
    tmp = tmp_path_factory.mktemp("parallel")
    with AuditLog.open(f"sqlite:///{tmp / 'a.db'}", ORIGIN, Ed25519PrivateKey.generate(),
                       checkpoint_interval_s=None) as log:  # fmt: skip
        append_samples(log, 20)
        kept = log.checkpoint()
        append_samples(log, N - 20)
        note = log.checkpoint()
        return [e.data for e in log.entries(0, N)], note, log.verifier_key() + "\n" + kept


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_reader, "CHUNK", 8)


def write(path: Path, entries: list[bytes], note: str) -> Path:
    path.write_bytes(
        export_format.header(ORIGIN, len(entries)) + b"".join(e + b"\n" for e in entries) + note.encode()
    )
    return path


def edit(entry: bytes) -> bytes:
    obj = json.loads(entry)
    return entry.replace(obj["payload"]["query_hash"].encode(), b"sha256:" + b"0" * 64)


@pytest.mark.parametrize("workers", [1, 2])
def test_chunked_verification(exported: tuple[list[bytes], str, str], tmp_path: Path, workers: int) -> None:
    entries, note, keys = exported
    vkey, kept = keys.split("\n", 1)
    summary = verify_export(write(tmp_path / "ok", entries, note), vkey, since=kept, workers=workers)
    assert summary.root == root_of([leaf_hash(e) for e in entries]) and summary.since_size == 20
    cases: list[tuple[list[bytes], str, int]] = []
    for k in (6, 7, 8, 15, 16, 40):  # around chunk boundaries
        changed = list(entries)
        changed[k] = edit(changed[k])
        cases.append((changed, "altered", k))
    cases.append(([*entries[:16], *entries[17:]], "missing", 16))
    swapped = list(entries)
    swapped[15], swapped[16] = swapped[16], swapped[15]
    cases.append((swapped, "reordered", 15))
    cases.append(([*entries[:8], entries[7], *entries[8:]], "duplicate", 8))
    cases.append((entries[:30], "truncated", 30))
    # A line of JSON nested past the parser's depth (1,000 bytes do it) is a malformed entry, no traceback.
    cases.append(([*entries[:9], b"[" * 5000 + b"]" * 5000, *entries[10:]], "malformed_entry", 9))
    for i, (bad, reason, index) in enumerate(cases):
        with pytest.raises(AuditIntegrityError) as err:
            verify_export(write(tmp_path / f"bad{i}", bad, note), vkey, workers=workers)
        assert (err.value.reason, err.value.index) == (reason, index)
    # A copy cut inside entry 13, before a chunk boundary: the file ends there, with no checkpoint.
    cut = write(tmp_path / "cut", entries, note)
    body = cut.read_bytes()
    cut.write_bytes(body[: body.index(entries[13]) + 20])
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(cut, vkey, workers=workers)
    assert (err.value.reason, err.value.index) == ("truncated", 13)
    # One entry more than the header announces, where the checkpoint should begin.
    extra = json.loads(entries[-1])
    extra["index"], extra["prev"] = N, b64(leaf_hash(entries[-1]))
    longer = write(tmp_path / "longer", [*entries, canonical(extra)], note)
    longer.write_bytes(longer.read_bytes().replace(f"size {N + 1}\n".encode(), f"size {N}\n".encode(), 1))
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(longer, vkey, workers=workers)
    assert (err.value.reason, err.value.index) == ("size_mismatch", N)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_is_reported_per_chunk(
    exported: tuple[list[bytes], str, str], tmp_path: Path, workers: int
) -> None:
    entries, note, keys = exported
    seen: list[tuple[int, int]] = []
    verify_export(write(tmp_path / "ok", entries, note), keys.split("\n", 1)[0], workers=workers,
                  progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(min(k, N), N) for k in range(8, N + 8, 8)]
