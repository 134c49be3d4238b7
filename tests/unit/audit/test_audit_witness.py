"""The witness: each C2SP tlog-witness rule is its own typed error; state only moves forward."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_helpers import ORIGIN, append_samples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import Checkpoint, parse_checkpoint_body, sign_checkpoint
from audit.errors import (
    BadConsistencyProof,
    BadLogSignature,
    MalformedRequest,
    MissingLogSignature,
    NonEmptyProofFromZero,
    OldSizeMismatch,
    OldSizeTooLarge,
    RootMismatchAtEqualSize,
    UnknownOrigin,
    WitnessError,
)
from audit.log import AuditLog
from audit.merkle import EMPTY_ROOT
from audit.notes import ALG_COSIGNATURE_V1, Note, b64, parse_note, parse_verifier_key, sign_note, verify_note
from audit.verify import find_fork
from audit.witness import (
    MAX_EVIDENCE_PER_ORIGIN,
    ForkRefused,
    Witness,
    format_add_checkpoint_body,
    note_digest,
    parse_add_checkpoint_body,
    read_fork_evidence,
)

WITNESS = "witness.example/w1"


@pytest.fixture
def site(tmp_path: Path, log_key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    with AuditLog.open(
        f"sqlite:///{tmp_path / 'log.db'}", ORIGIN, log_key, checkpoint_interval_s=None
    ) as log:
        yield log


@pytest.fixture
def witness(tmp_path: Path, site: AuditLog) -> Iterator[Witness]:
    w = Witness(f"sqlite:///{tmp_path / 'witness.db'}", WITNESS, Ed25519PrivateKey.generate(),
                {ORIGIN: site.verifier_key()})  # fmt: skip
    yield w
    w.close()


def grow(site: AuditLog, n: int) -> str:
    append_samples(site, n)
    return site.checkpoint()


def test_first_checkpoint_then_growth_is_cosigned(site: AuditLog, witness: Witness) -> None:
    note = grow(site, 5)
    line = witness.add_checkpoint(0, [], note)
    cp = parse_checkpoint_body(parse_note(note).text)
    wkey = parse_verifier_key(witness.verifier_key)
    assert wkey.alg == ALG_COSIGNATURE_V1
    verified = verify_note(note + line, [wkey])
    assert abs(verified.timestamps[WITNESS] - time.time()) < 5
    assert witness.cosigned(ORIGIN) == (5, cp.root)
    note2 = grow(site, 7)
    witness.add_checkpoint(5, site.consistency_proof(5, 12), note2)
    assert witness.cosigned(ORIGIN)[0] == 12
    # Re-submitting the same checkpoint is fine (equal sizes, equal roots, empty proof).
    witness.add_checkpoint(12, [], note2)


def test_unknown_origin(site: AuditLog, witness: Witness) -> None:
    other = sign_checkpoint(
        Checkpoint("fedgate.example/unknown", 1, EMPTY_ROOT), Ed25519PrivateKey.generate()
    )
    with pytest.raises(UnknownOrigin):
        witness.add_checkpoint(0, [], other)


def test_missing_and_bad_log_signatures(site: AuditLog, witness: Witness) -> None:
    note = grow(site, 3)
    cp = parse_checkpoint_body(parse_note(note).text)
    with pytest.raises(MissingLogSignature):
        witness.add_checkpoint(0, [], sign_checkpoint(cp, Ed25519PrivateKey.generate()))
    forged = sign_checkpoint(Checkpoint(ORIGIN, 3, b"\x01" * 32), Ed25519PrivateKey.generate())
    bad = Note(parse_note(forged).text, parse_note(note).signatures).render()  # real key ID, other text
    with pytest.raises(BadLogSignature):
        witness.add_checkpoint(0, [], bad)
    assert witness.cosigned(ORIGIN)[0] == 0


def test_old_size_larger_than_the_checkpoint(site: AuditLog, witness: Witness) -> None:
    with pytest.raises(OldSizeTooLarge):
        witness.add_checkpoint(4, [], grow(site, 3))


def test_old_size_must_be_the_cosigned_size(site: AuditLog, witness: Witness) -> None:
    witness.add_checkpoint(0, [], grow(site, 3))
    note = grow(site, 3)
    with pytest.raises(OldSizeMismatch) as err:
        witness.add_checkpoint(2, site.consistency_proof(2, 6), note)
    assert (err.value.size, err.value.claimed) == (3, 2)


def test_non_empty_proof_from_size_zero(site: AuditLog, witness: Witness) -> None:
    with pytest.raises(NonEmptyProofFromZero):
        witness.add_checkpoint(0, [b"\x00" * 32], grow(site, 3))


def test_bad_consistency_proof(site: AuditLog, witness: Witness) -> None:
    witness.add_checkpoint(0, [], grow(site, 3))
    note = grow(site, 5)
    proof = site.consistency_proof(3, 8)
    with pytest.raises(BadConsistencyProof):
        witness.add_checkpoint(3, [b"\x00" * 32, *proof[1:]], note)
    with pytest.raises(BadConsistencyProof):
        witness.add_checkpoint(3, [], note)
    assert witness.cosigned(ORIGIN)[0] == 3


def test_equal_sizes_with_different_roots(
    site: AuditLog, witness: Witness, log_key: Ed25519PrivateKey
) -> None:
    witness.add_checkpoint(0, [], grow(site, 3))
    fork = sign_checkpoint(Checkpoint(ORIGIN, 3, b"\x02" * 32), log_key)  # the log equivocates
    with pytest.raises(RootMismatchAtEqualSize):
        witness.add_checkpoint(3, [], fork)


def test_state_survives_a_restart(tmp_path: Path, site: AuditLog, witness: Witness) -> None:
    witness.add_checkpoint(0, [], grow(site, 4))
    store = f"sqlite:///{tmp_path / 'witness.db'}"
    with Witness(store, WITNESS, Ed25519PrivateKey.generate(), {ORIGIN: site.verifier_key()}) as again:
        assert again.cosigned(ORIGIN)[0] == 4


def test_request_body_round_trip_and_malformed_bodies(site: AuditLog, witness: Witness) -> None:
    witness.add_checkpoint(0, [], grow(site, 3))
    note = grow(site, 4)
    body = format_add_checkpoint_body(3, site.consistency_proof(3, 7), note)
    req = parse_add_checkpoint_body(body)
    assert req.old_size == 3 and req.checkpoint == note
    assert witness.add_checkpoint_request(body).startswith("\u2014 " + WITNESS + " ")
    text = note.encode()
    too_long = b"".join([b"A" * 43 + b"=\n"] * 64)
    bads = [b"old x\n\n" + text, b"old 3\n" + text, b"new 3\n\n" + text, b"old 03\n\n" + text,
            "old ²\n\n".encode() + text, "old ٣\n\n".encode() + text,
            b"old 3\nnot base64!\n\n" + text, b"old 3\nAAAA\n\n" + text, b"old 3\n" + too_long + b"\n" + text,
            b"\xff"]  # fmt: skip
    for bad in bads:
        with pytest.raises(MalformedRequest):
            witness.add_checkpoint_request(bad)


def test_concurrent_submissions_cannot_roll_the_witness_back(
    tmp_path: Path, site: AuditLog, witness: Witness
) -> None:
    notes = {0: ""}
    for size in range(1, 13):
        notes[size] = grow(site, 1)
    witness.add_checkpoint(0, [], notes[1])
    accepted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def submit(seed: int) -> None:
        # Each thread keeps a private handle (its own connections), like separate worker processes.
        w = Witness(f"sqlite:///{tmp_path / 'witness.db'}", WITNESS, Ed25519PrivateKey.generate(),
                    {ORIGIN: site.verifier_key()})  # fmt: skip
        try:
            for step in range(40):
                old = w.cosigned(ORIGIN)[0]
                new = min(12, old + 1 + (seed + step) % 3)
                try:
                    w.add_checkpoint(old, site.consistency_proof(old, new) if old else [], notes[new])
                except OldSizeMismatch:
                    continue
                except WitnessError as exc:  # pragma: no cover - would be a bug
                    raise AssertionError(exc) from exc
                with lock:
                    accepted.append((old, new))
        finally:
            w.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every accepted step started where the previous one ended: one forward chain, never backwards.
    chain = sorted(accepted, key=lambda step: (step[0], step[1]))
    sizes = [1]
    for old, new in chain:
        if new == old:
            continue
        assert old == sizes[-1], f"step {old}->{new} did not start at the cosigned size {sizes[-1]}"
        sizes.append(new)
    assert witness.cosigned(ORIGIN)[0] == sizes[-1] == 12


def _non_canonical(text: str) -> str:
    """The same bytes in base64 with a non-zero bit before the padding."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    head, pad = text.rstrip("="), "=" * (len(text) - len(text.rstrip("=")))
    assert pad, "only a padded encoding has spare bits"
    return head[:-1] + alphabet[alphabet.index(head[-1]) ^ 1] + pad


def test_a_fork_is_kept_with_the_cosigned_checkpoint_it_conflicts_with(
    tmp_path: Path, site: AuditLog, witness: Witness, log_key: Ed25519PrivateKey
) -> None:
    genuine = grow(site, 3)
    witness.add_checkpoint(0, [], genuine)
    fork = sign_checkpoint(Checkpoint(ORIGIN, 3, b"\x02" * 32), log_key)
    with pytest.raises(ForkRefused) as err:
        witness.add_checkpoint(3, [], fork)
    assert isinstance(err.value, RootMismatchAtEqualSize) and err.value.evidence_digest == note_digest(fork)
    # Replayed, even with another signature line, it is the same fork: kept once.
    extra = sign_checkpoint(Checkpoint(ORIGIN, 3, b"\x02" * 32), Ed25519PrivateKey.generate())
    with pytest.raises(ForkRefused) as again:
        witness.add_checkpoint(3, [], fork + extra.split("\n\n", 1)[1])
    assert again.value.evidence_digest == note_digest(fork)
    # The witness moves on; the evidence still holds both notes as the log's key signed them.
    later = grow(site, 2)
    witness.add_checkpoint(3, site.consistency_proof(3, 5), later)
    [kept] = witness.fork_evidence(ORIGIN)
    assert kept.note == fork and kept.cosigned_note == genuine and kept.digest == note_digest(fork)
    assert (kept.size, kept.cosigned_size, kept.root) == (3, 3, (b"\x02" * 32).hex())
    evidence = find_fork(kept.cosigned_note, kept.note, site.verifier_key())
    assert evidence is not None and evidence.second == fork
    assert read_fork_evidence(f"sqlite:///{tmp_path / 'witness.db'}") == [kept]
    assert read_fork_evidence(f"sqlite:///{tmp_path / 'witness.db'}", "fedgate.example/other") == []


def test_fork_evidence_is_bounded_per_log(
    site: AuditLog, witness: Witness, log_key: Ed25519PrivateKey
) -> None:
    witness.add_checkpoint(0, [], grow(site, 2))
    for i in range(MAX_EVIDENCE_PER_ORIGIN + 3):
        fork = sign_checkpoint(Checkpoint(ORIGIN, 2, bytes([i + 1]) * 32), log_key)
        with pytest.raises(ForkRefused) as err:
            witness.add_checkpoint(2, [], fork)
        assert (err.value.evidence_digest is None) == (i >= MAX_EVIDENCE_PER_ORIGIN)
    kept = witness.fork_evidence()
    assert [k.root for k in kept] == [(bytes([i + 1]) * 32).hex() for i in range(MAX_EVIDENCE_PER_ORIGIN)]
    assert witness.cosigned(ORIGIN)[0] == 2


def test_size_zero_checkpoints_must_carry_the_empty_tree_root(
    site: AuditLog, witness: Witness, log_key: Ed25519PrivateKey
) -> None:
    bogus = sign_checkpoint(Checkpoint(ORIGIN, 0, b"\x01" * 32), log_key)
    with pytest.raises(RootMismatchAtEqualSize):
        witness.add_checkpoint(0, [], bogus)
    assert witness.cosigned(ORIGIN) == (0, EMPTY_ROOT)
    witness.add_checkpoint(0, [], sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), log_key))
    with pytest.raises(RootMismatchAtEqualSize):
        witness.add_checkpoint(0, [], sign_checkpoint(Checkpoint(ORIGIN, 0, b"\x02" * 32), log_key))
    [first, second] = witness.fork_evidence(ORIGIN)
    assert first.cosigned_note == "" and second.cosigned_note.startswith(f"{ORIGIN}\n0\n")


def test_non_canonical_base64_is_refused_and_the_note_cosigned_is_the_one_received(
    site: AuditLog, witness: Witness, log_key: Ed25519PrivateKey
) -> None:
    note = grow(site, 4)
    cp = parse_checkpoint_body(parse_note(note).text)
    root = b64(cp.root)
    body = f"{ORIGIN}\n4\n{_non_canonical(root)}\n"
    bent = Note(body, (sign_note(body, ORIGIN, log_key),)).render()
    with pytest.raises(MalformedRequest, match="canonical"):
        witness.add_checkpoint(0, [], bent)
    sig = note.rstrip("\n").rsplit(" ", 1)[1]
    with pytest.raises(MalformedRequest, match="canonical"):
        witness.add_checkpoint(0, [], note.replace(sig, _non_canonical(sig)))
    witness.add_checkpoint(0, [], note)
    later = grow(site, 3)
    proof = [b64(h) for h in site.consistency_proof(4, 7)]
    raw = format_add_checkpoint_body(4, site.consistency_proof(4, 7), later).decode()
    with pytest.raises(MalformedRequest, match="canonical"):
        witness.add_checkpoint_request(raw.replace(proof[0], _non_canonical(proof[0]), 1).encode())
    line = witness.add_checkpoint_request(raw.encode())
    assert verify_note(later + line, [parse_verifier_key(witness.verifier_key)]).timestamps
