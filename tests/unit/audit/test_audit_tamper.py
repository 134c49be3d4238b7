"""Tampering with an export: every change is detected, with the first bad index and the right reason."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_helpers import ORIGIN, append_samples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import export_format
from audit.checkpoint import Checkpoint, cosign_checkpoint, parse_checkpoint_body, sign_checkpoint
from audit.errors import AuditIntegrityError, NoteError
from audit.log import AuditLog
from audit.merkle import leaf_hash, root_of
from audit.notes import ALG_COSIGNATURE_V1, b64, parse_note, verifier_key_text
from audit.verify import find_fork, verify_export

N = 40
WITNESS = "witness.example/w1"


@dataclass
class Export:
    entries: list[bytes]
    note: str
    log_key: str
    witness_key: str
    early_note: str  # the signed checkpoint at size 30, which an auditor kept

    def write(self, path: Path, entries: list[bytes] | None = None, note: str | None = None,
              size: int | None = None) -> Path:  # fmt: skip
        entries = self.entries if entries is None else entries
        body = export_format.header(ORIGIN, len(entries) if size is None else size)
        body += b"".join(e + b"\n" for e in entries) + (self.note if note is None else note).encode()
        path.write_bytes(body)
        return path


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    tmp = tmp_path_factory.mktemp("tamper")
    key, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{tmp / 'a.db'}", ORIGIN, key, checkpoint_interval_s=None) as log:
        append_samples(log, 30)
        early = log.checkpoint()
        append_samples(log, N - 30)
        note = log.checkpoint()
        cp = parse_checkpoint_body(parse_note(note).text)
        witness_key = verifier_key_text(WITNESS, wkey.public_key(), ALG_COSIGNATURE_V1)
        log.add_cosignature(N, cosign_checkpoint(cp, WITNESS, wkey, int(time.time())), witness_key)
        entries = [e.data for e in log.entries(0, N)]
        return Export(entries, log.checkpoint_note(N) or "", log.verifier_key(), witness_key, early)


def failure(path: Path, ex: Export, **kwargs: object) -> AuditIntegrityError:
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(path, ex.log_key, **kwargs)  # type: ignore[arg-type]
    return err.value


def test_the_untouched_export_verifies(export: Export, tmp_path: Path) -> None:
    path = export.write(tmp_path / "ok")
    summary = verify_export(path, export.log_key, [export.witness_key], 1, export.early_note)
    assert (summary.size, summary.witnesses, summary.since_size) == (N, (WITNESS,), 30)
    assert summary.root == root_of([leaf_hash(e) for e in export.entries])


def _edit_payload(entry: bytes) -> bytes:
    # Change one hex digit of a digest in the payload: still valid JSON, same shape.
    pos = entry.index(b'"query_hash":"sha256:') + len(b'"query_hash":"sha256:')
    return entry[:pos] + (b"1" if entry[pos : pos + 1] != b"1" else b"2") + entry[pos + 1 :]


@pytest.mark.parametrize("k", [0, 1, 17, 29, 30, N - 2])
def test_one_changed_byte_names_the_entry(export: Export, tmp_path: Path, k: int) -> None:
    entries = list(export.entries)
    entries[k] = _edit_payload(entries[k])
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index) == ("altered", k)
    assert err.expected == json.loads(export.entries[k + 1])["prev"]
    assert err.found == b64(leaf_hash(entries[k]))


def test_a_changed_last_entry_breaks_the_signed_root(export: Export, tmp_path: Path) -> None:
    entries = list(export.entries)
    entries[-1] = _edit_payload(entries[-1])
    err = failure(export.write(tmp_path / "x", entries), export)
    assert err.reason == "root_mismatch"
    assert err.expected == parse_checkpoint_body(parse_note(export.note).text).root.hex()


def test_random_bit_flips_anywhere_in_any_entry_are_caught_at_that_entry(
    export: Export, tmp_path: Path
) -> None:
    rng = random.Random(7)
    for _ in range(150):
        k = rng.randrange(N)
        entries = list(export.entries)
        pos = rng.randrange(len(entries[k]))
        entries[k] = (
            entries[k][:pos] + bytes([entries[k][pos] ^ (1 << rng.randrange(8))]) + entries[k][pos + 1 :]
        )
        err = failure(export.write(tmp_path / "x", entries), export)
        if k < N - 1:
            assert err.index == k, (k, pos, err)


def test_a_changed_prev_field_names_that_entry(export: Export, tmp_path: Path) -> None:
    entries = list(export.entries)
    obj = json.loads(entries[12])
    entries[12] = entries[12].replace(obj["prev"].encode(), b64(b"\x09" * 32).encode())
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index) == ("altered", 12)


def test_a_deleted_entry(export: Export, tmp_path: Path) -> None:
    entries = export.entries[:17] + export.entries[18:]
    for size in (N - 1, N):  # header fixed up, or left as it was
        err = failure(export.write(tmp_path / "x", entries, size=size), export)
        assert (err.reason, err.index, err.expected, err.found) == ("missing", 17, "17", "18")


def test_two_reordered_entries(export: Export, tmp_path: Path) -> None:
    entries = list(export.entries)
    entries[20], entries[21] = entries[21], entries[20]
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index) == ("reordered", 20)


def test_a_duplicated_entry(export: Export, tmp_path: Path) -> None:
    entries = [*export.entries[:9], export.entries[8], *export.entries[9:]]
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index, err.found) == ("duplicate", 9, "8")


def test_an_inserted_entry(export: Export, tmp_path: Path) -> None:
    # A forged entry claiming index 10, well formed and linked to entry 9.
    forged = json.loads(export.entries[10])
    forged["payload"]["query_hash"] = "sha256:" + "00" * 32
    data = json.dumps(forged, separators=(",", ":"), sort_keys=True).encode()
    entries = [*export.entries[:10], data, *export.entries[10:]]
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index) == ("inserted", 10)


def test_an_entry_appended_beyond_the_checkpoint(export: Export, tmp_path: Path) -> None:
    extra = json.loads(export.entries[-1])
    extra["index"], extra["prev"] = N, b64(leaf_hash(export.entries[-1]))
    entries = [*export.entries, json.dumps(extra, separators=(",", ":"), sort_keys=True).encode()]
    err = failure(export.write(tmp_path / "x", entries), export)
    assert (err.reason, err.index) == ("size_mismatch", N)


def test_truncated_below_the_signed_checkpoint(export: Export, tmp_path: Path) -> None:
    err = failure(export.write(tmp_path / "x", export.entries[:35]), export)
    assert (err.reason, err.index, err.expected, err.found) == ("truncated", 35, str(N), "35")
    err = failure(export.write(tmp_path / "y", export.entries[:35], size=N), export)
    assert (err.reason, err.index) == ("truncated", 35)


def test_rolled_back_below_a_kept_checkpoint(export: Export, tmp_path: Path) -> None:
    # The site hands out its older, honestly signed state: valid on its own, but not after what we kept.
    old = export.write(tmp_path / "old", export.entries[:30], note=export.early_note)
    assert verify_export(old, export.log_key).size == 30
    err = failure(old, export, since=export.note)
    assert (err.reason, err.index, err.found) == ("rollback", 30, "30")


def test_rewritten_history_with_every_hash_recomputed_fails_on_the_signature(
    export: Export, tmp_path: Path
) -> None:
    entries = list(export.entries)
    prev = leaf_hash(entries[9])
    for k in range(10, N):
        obj = json.loads(entries[k])
        if k == 10:
            obj["payload"]["query_hash"] = "sha256:" + "00" * 32
        obj["prev"] = b64(prev)
        entries[k] = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
        prev = leaf_hash(entries[k])
    # Kept as it was, the signed checkpoint no longer matches the recomputed root...
    assert failure(export.write(tmp_path / "x", entries), export).reason == "root_mismatch"
    # ...and writing the new root into the checkpoint breaks the log's signature.
    new_root = root_of([leaf_hash(e) for e in entries])
    old_root_b64 = export.note.split("\n")[2]
    forged = export.note.replace(old_root_b64, b64(new_root))
    err = failure(export.write(tmp_path / "y", entries, note=forged), export)
    assert err.reason == "checkpoint_signature"
    assert "does not verify" in err.message


def test_two_checkpoints_of_one_size_with_different_roots_are_fork_evidence(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    notes, paths = [], []
    for name, reason in (("a", "expired"), ("b", "revoked")):
        with AuditLog.open(f"sqlite:///{tmp_path / name}.db", ORIGIN, key, checkpoint_interval_s=None) as log:
            append_samples(log, 5)
            log.append("auth.failed", payload={"reason": reason})
            notes.append(log.checkpoint())
            log.export(tmp_path / f"{name}.export")
            paths.append(tmp_path / f"{name}.export")
            vkey = log.verifier_key()
    evidence = find_fork(notes[0], notes[1], vkey)
    assert evidence is not None and evidence.first == notes[0] and evidence.second == notes[1]
    assert find_fork(notes[0], notes[0], vkey) is None
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(paths[1], vkey, since=notes[0])
    assert err.value.reason == "fork" and err.value.fork is not None
    assert {err.value.fork.first, err.value.fork.second} == {notes[0], notes[1]}


def test_a_fork_below_a_larger_export(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(f"sqlite:///{tmp_path}/a.db", ORIGIN, key, checkpoint_interval_s=None) as a:
        append_samples(a, 8)
        kept = a.checkpoint()
    with AuditLog.open(f"sqlite:///{tmp_path}/b.db", ORIGIN, key, checkpoint_interval_s=None) as b:
        append_samples(b, 3)
        b.append("auth.failed", payload={"reason": "other-history"})
        append_samples(b, 10)
        b.checkpoint()
        b.export(tmp_path / "b.export")
        vkey = b.verifier_key()
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(tmp_path / "b.export", vkey, since=kept)
    assert err.value.reason == "fork" and err.value.fork is not None


def test_checkpoint_signed_by_another_key(export: Export, tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    cp = parse_checkpoint_body(parse_note(export.note).text)
    note = sign_checkpoint(cp, other)
    err = failure(export.write(tmp_path / "x", note=note), export)
    assert err.reason == "checkpoint_signature" and "no signature by a known key" in err.message
    err = failure(
        export.write(tmp_path / "y"), export, since=sign_checkpoint(Checkpoint(ORIGIN, 3, cp.root), other)
    )
    assert err.reason == "since_checkpoint_signature"


def test_witness_quorum_and_bad_cosignatures(export: Export, tmp_path: Path) -> None:
    path = export.write(tmp_path / "x")
    err = failure(path, export, witness_keys=[export.witness_key], min_witnesses=2)
    assert (err.reason, err.expected, err.found) == ("witnesses", "2", "1")
    stranger = verifier_key_text("w9.example", Ed25519PrivateKey.generate().public_key(), ALG_COSIGNATURE_V1)
    assert failure(path, export, witness_keys=[stranger], min_witnesses=1).reason == "witnesses"
    # A known witness whose cosignature line was altered rejects the export.
    line = export.note.rstrip("\n").split("\n")[-1]
    name, sig = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    bad_note = export.note.replace(line, f"{name} {b64(bytes(raw))}")
    err = failure(export.write(tmp_path / "y", note=bad_note), export, witness_keys=[export.witness_key])
    assert err.reason == "cosignature"


@pytest.mark.parametrize("ahead", [86_400, 2**63 - 1 - int(time.time())])
def test_cosignatures_dated_in_the_future_are_not_counted(export: Export, tmp_path: Path, ahead: int) -> None:
    w = Ed25519PrivateKey.generate()
    wkey = verifier_key_text("w2.example", w.public_key(), ALG_COSIGNATURE_V1)
    cp = parse_checkpoint_body(parse_note(export.note).text)
    note = export.note + cosign_checkpoint(cp, "w2.example", w, int(time.time()) + ahead)
    path = export.write(tmp_path / "x", note=note)
    err = failure(path, export, witness_keys=[wkey], min_witnesses=1)
    assert (err.reason, err.found) == ("witnesses", "0")
    assert "w2.example: dated" in err.message and "in the future" in err.message
    # The log is intact all the same: it verifies without a quorum, and the other witness still counts.
    for keys, needed in (([wkey], 0), ([wkey, export.witness_key], 1)):
        summary = verify_export(path, export.log_key, keys, needed)
        assert summary.witnesses == ((WITNESS,) if needed else ())
        assert len(summary.skipped) == 1 and summary.skipped[0].startswith("w2.example: dated")
    # Within the allowed clock skew, it counts.
    near = export.note + cosign_checkpoint(cp, "w2.example", w, int(time.time()) + 60)
    summary = verify_export(export.write(tmp_path / "y", note=near), export.log_key, [wkey], 1)
    assert summary.witnesses == ("w2.example",) and summary.skipped == ()


@pytest.mark.parametrize("same_key", [False, True])
def test_the_logs_own_witness_never_counts_for_it(export: Export, tmp_path: Path, same_key: bool) -> None:
    # An operator who rewrote history cosigns the forged checkpoint with the site's own witness key
    # (named `<origin>/witness` by `fedgate witness keygen`), or with any name over the log key itself.
    own = Ed25519PrivateKey.generate()
    name = ORIGIN + "/witness" if not same_key else "witness.example/friend"
    if same_key:
        log_key = Ed25519PrivateKey.generate()
        cp = parse_checkpoint_body(parse_note(export.note).text)
        note = sign_checkpoint(cp, log_key)
        own, log_text = log_key, verifier_key_text(ORIGIN, log_key.public_key())
    else:
        note, log_text = export.note, export.log_key
        cp = parse_checkpoint_body(parse_note(note).text)
    own_key = verifier_key_text(name, own.public_key(), ALG_COSIGNATURE_V1)
    note += cosign_checkpoint(cp, name, own, int(time.time()))
    path = export.write(tmp_path / "x", note=note)
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(path, log_text, [own_key], 1)
    assert (err.value.reason, err.value.found) == ("witnesses", "0")
    assert f"{name}: the log's own witness" in err.value.message
    summary = verify_export(path, log_text, [own_key], 0)
    assert summary.witnesses == () and summary.skipped == (
        f"{name}: the log's own witness (a site never witnesses its own log)",
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b"fedgate-audit-export/v1", b"fedgate-audit-export/v9", 1),
        lambda b: b.replace(b"\nsize ", b"\nsizes ", 1),
        lambda b: b[: b.index("\u2014".encode())],
        lambda b: b.replace(b"origin ", b"origin fedgate.example/other", 1),
    ],
)
def test_malformed_exports_are_not_intact(export: Export, tmp_path: Path, mangle: object) -> None:
    path = export.write(tmp_path / "x")
    path.write_bytes(mangle(path.read_bytes()))  # type: ignore[operator]
    failure(path, export)


def test_the_verifier_never_reserializes(export: Export, tmp_path: Path) -> None:
    # Same JSON value, different bytes (a space): the hash changes, so the entry counts as altered.
    entries = list(export.entries)
    entries[5] = entries[5].replace(b'"index":5', b'"index": 5')
    assert json.loads(entries[5]) == json.loads(export.entries[5])
    assert hashlib.sha256(entries[5]).digest() != hashlib.sha256(export.entries[5]).digest()
    assert failure(export.write(tmp_path / "x", entries), export).index == 5


def test_an_extra_entry_where_the_checkpoint_begins(export: Export, tmp_path: Path) -> None:
    # The header still says N, and an (N+1)th entry line sits where the checkpoint should start.
    extra = json.loads(export.entries[-1])
    extra["index"], extra["prev"] = N, b64(leaf_hash(export.entries[-1]))
    entries = [*export.entries, json.dumps(extra, separators=(",", ":"), sort_keys=True).encode()]
    err = failure(export.write(tmp_path / "x", entries, size=N), export)
    assert (err.reason, err.index) == ("size_mismatch", N)
    assert (err.expected, err.found) == ("the checkpoint", f"entry {N}")


def test_an_export_cut_inside_an_entry(export: Export, tmp_path: Path) -> None:
    # A copy that stopped part-way through a line: no newline, no checkpoint after it.
    body = export.write(tmp_path / "whole").read_bytes()
    cut = body.index(export.entries[25]) + len(export.entries[25]) // 2
    (tmp_path / "x").write_bytes(body[:cut])
    err = failure(tmp_path / "x", export)
    assert (err.reason, err.index) == ("truncated", 25)
    assert "ends inside entry 25" in str(err)


def test_one_key_trusted_under_two_names_counts_as_one_witness(export: Export, tmp_path: Path) -> None:
    # cosignature/v1 does not commit to the witness's name: one cosignature, relabelled, would pass as two.
    w = Ed25519PrivateKey.generate()
    names = ("witness.example/a", "witness.example/b")
    keys = [verifier_key_text(n, w.public_key(), ALG_COSIGNATURE_V1) for n in names]
    cp = parse_checkpoint_body(parse_note(export.note).text)
    now = int(time.time())
    note = export.note + "".join(cosign_checkpoint(cp, n, w, now) for n in names)
    path = export.write(tmp_path / "x", note=note)
    with pytest.raises(AuditIntegrityError) as err:
        verify_export(path, export.log_key, keys, 2)
    assert (err.value.reason, err.value.found) == ("witnesses", "1")
    assert "witness.example/b: the same key as witness.example/a" in err.value.message
    summary = verify_export(path, export.log_key, [*keys, export.witness_key], 2)
    assert summary.witnesses == ("witness.example/a", WITNESS)


def test_a_log_key_given_as_a_witness_key_is_refused(export: Export, tmp_path: Path) -> None:
    with pytest.raises(NoteError, match="not a witness's cosignature/v1"):
        verify_export(export.write(tmp_path / "x"), export.log_key, [export.log_key], 0)
