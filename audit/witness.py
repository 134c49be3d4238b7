"""A C2SP tlog-witness: checks that each new checkpoint of a known log extends the last one it cosigned.

The check and the update of the stored checkpoint happen in one transaction under a row lock (SQLite:
BEGIN IMMEDIATE), so two concurrent submissions cannot both pass against the same old state and roll the
witness back. The HTTP endpoint (`POST <prefix>/add-checkpoint`) lives in the gateway; it feeds the body to
`Witness.add_checkpoint_request` and maps the typed errors of `audit.errors` to the statuses listed there.

A checkpoint the log's key signed for the size this witness cosigned, with another root, shows that the log
signed two histories. The witness keeps that evidence: the refused note and the cosigned note it conflicts
with, both as they were signed, in `witness_evidence` (the first `MAX_EVIDENCE_PER_ORIGIN` forks of each
log), written in the transaction that refused the checkpoint. `read_fork_evidence` reads them back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from audit import storage
from audit.checkpoint import Checkpoint, parse_checkpoint_body
from audit.errors import (
    BadConsistencyProof,
    BadLogSignature,
    MalformedRequest,
    MissingLogSignature,
    NonEmptyProofFromZero,
    NoteError,
    OldSizeMismatch,
    OldSizeTooLarge,
    ProofError,
    RootMismatchAtEqualSize,
    SignatureError,
    UnknownOrigin,
)
from audit.export_format import parse_tree_size
from audit.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from audit.notes import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Note,
    VerifierKey,
    b64,
    b64decode_strict,
    cosign_note,
    parse_note,
    parse_verifier_key,
    verifier_key_text,
    verify_note,
)

MAX_PROOF_LINES = 63
MAX_EVIDENCE_PER_ORIGIN = 32
"""Forks kept per log: the first ones. One proves the log signed two histories; more only cost space."""

witness_metadata = sa.MetaData()
witness_state = sa.Table(
    "witness_state",
    witness_metadata,
    sa.Column("origin", sa.String(255), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
witness_evidence = sa.Table(
    "witness_evidence",
    witness_metadata,
    sa.Column("digest", sa.String(71), primary_key=True),  # sha256:<hex> of the refused note
    sa.Column("origin", sa.String(255), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),  # the refused signed note, as received
    sa.Column("cosigned_size", sa.BigInteger, nullable=False),
    sa.Column("cosigned_root", sa.LargeBinary(32), nullable=False),
    sa.Column("cosigned_note", sa.Text, nullable=False),  # empty when nothing was cosigned yet
    sa.Column("recorded_at", sa.Float, nullable=False),
)


class ForkRefused(RootMismatchAtEqualSize):
    """A checkpoint signed by the log's key for the size this witness cosigned, with another root.

    `evidence_digest` names the `witness_evidence` row that keeps both notes (`sha256:<hex>` of the refused
    note as kept), or is None when the log's evidence rows are full."""

    def __init__(self, message: str, evidence_digest: str | None) -> None:
        self.evidence_digest = evidence_digest
        super().__init__(message)


@dataclass(frozen=True)
class KeptFork:
    """Two checkpoints of one log, both signed by its key, that no consistency proof can join: `note` was
    refused, `cosigned_note` had been cosigned (empty when the witness had cosigned nothing; a size-0
    checkpoint whose root is not the empty tree's is then evidence on its own)."""

    digest: str
    origin: str
    size: int
    root: str  # hex
    note: str
    cosigned_size: int
    cosigned_root: str  # hex
    cosigned_note: str
    recorded_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def note_digest(note: str) -> str:
    """`sha256:<hex>` of a signed note's text: how an audit entry cites a kept note."""
    return "sha256:" + hashlib.sha256(note.encode()).hexdigest()


def read_fork_evidence(store_url: str, origin: str | None = None) -> list[KeptFork]:
    """The forks a witness kept in its store, oldest first (all logs, or `origin`'s); none when the store
    has no evidence table yet."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(witness_evidence.name):
                return []
            t = witness_evidence
            query = sa.select(t).order_by(t.c.recorded_at, t.c.digest)
            if origin is not None:
                query = query.where(t.c.origin == origin)
            return [_kept(row) for row in conn.execute(query)]
    finally:
        engine.dispose()


def _kept(row: Any) -> KeptFork:
    return KeptFork(
        digest=str(row.digest), origin=str(row.origin), size=int(row.size), root=bytes(row.root).hex(),
        note=str(row.note), cosigned_size=int(row.cosigned_size),
        cosigned_root=bytes(row.cosigned_root).hex(), cosigned_note=str(row.cosigned_note),
        recorded_at=float(row.recorded_at),
    )  # fmt: skip


@dataclass(frozen=True)
class AddCheckpointRequest:
    """The parsed body of an add-checkpoint request."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: str


def format_add_checkpoint_body(old_size: int, proof: Sequence[bytes], checkpoint: str) -> bytes:
    """The request body a log sends to a witness."""
    lines = [f"old {old_size}\n", *(b64(h) + "\n" for h in proof), "\n", checkpoint]
    return "".join(lines).encode()


def parse_add_checkpoint_body(body: bytes) -> AddCheckpointRequest:
    """Parse `old <size>`, up to 63 base64 proof lines, an empty line, then the signed checkpoint."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("body is not UTF-8") from None
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise MalformedRequest("body has no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0].split(" ")
    old = parse_tree_size(first[1]) if len(first) == 2 and first[0] == "old" else None
    if old is None:
        raise MalformedRequest("first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedRequest(f"more than {MAX_PROOF_LINES} proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            h = b64decode_strict(line, "proof line")
        except NoteError as exc:
            raise MalformedRequest(str(exc)) from None
        if len(h) != HASH_SIZE:
            raise MalformedRequest("proof line is not a 32-byte hash")
        proof.append(h)
    return AddCheckpointRequest(old, tuple(proof), checkpoint)


class Witness:
    """A witness for a fixed set of logs, with its own Ed25519 key and a store of what it cosigned."""

    def __init__(
        self,
        store_url: str,
        name: str,
        signing_key: Ed25519PrivateKey,
        known_logs: Mapping[str, str | VerifierKey | Sequence[str | VerifierKey]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._key = signing_key
        self._clock = clock
        self._logs: dict[str, list[VerifierKey]] = {}
        for origin, keys in known_logs.items():
            items = [keys] if isinstance(keys, str | VerifierKey) else list(keys)
            parsed = [parse_verifier_key(k) if isinstance(k, str) else k for k in items]
            self._logs[origin] = [k for k in parsed if k.alg == ALG_ED25519]
        self.verifier_key = verifier_key_text(name, signing_key.public_key(), ALG_COSIGNATURE_V1)
        self._engines = storage.make_engines(store_url)
        storage.create_schema(self._engines.writer, witness_metadata, self._initialize)

    def _initialize(self, conn: Connection) -> None:
        known = set(conn.execute(sa.select(witness_state.c.origin)).scalars())
        for origin in self._logs:
            if origin not in known:
                conn.execute(
                    witness_state.insert().values(
                        origin=origin, size=0, root=EMPTY_ROOT, note="", updated_at=self._clock()
                    )
                )

    def close(self) -> None:
        self._engines.dispose()

    def __enter__(self) -> Witness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cosigned(self, origin: str) -> tuple[int, bytes]:
        """The size and root this witness last cosigned for `origin` (0 and the empty root at first)."""
        if origin not in self._logs:
            raise UnknownOrigin(f"unknown log origin {origin!r}")
        with self._engines.reader.connect() as conn:
            row = conn.execute(
                sa.select(witness_state.c.size, witness_state.c.root).where(witness_state.c.origin == origin)
            ).one()
            return int(row.size), bytes(row.root)

    def add_checkpoint_request(self, body: bytes) -> str:
        """Handle an add-checkpoint body; returns the cosignature line(s) for the 200 response."""
        req = parse_add_checkpoint_body(body)
        return self.add_checkpoint(req.old_size, req.proof, req.checkpoint)

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], checkpoint: str | bytes) -> str:
        """Apply every tlog-witness rule, persist the checkpoint, return this witness's cosignature line.

        The cosignature is over the note text exactly as received. A checkpoint of the cosigned size with
        another root is refused with `ForkRefused`, after both notes are kept as evidence."""
        try:
            note = parse_note(checkpoint)
            cp = parse_checkpoint_body(note.text)
        except NoteError as exc:
            raise MalformedRequest(f"checkpoint is malformed: {exc}") from None
        keys = self._logs.get(cp.origin)
        if keys is None:
            raise UnknownOrigin(f"unknown log origin {cp.origin!r}")
        self._check_signature(note, keys)
        if old_size > cp.size:
            raise OldSizeTooLarge(f"old size {old_size} is larger than the checkpoint size {cp.size}")
        received = note.render()  # the note as sent: its base64 is canonical, so it renders to itself
        fork: ForkRefused | None = None
        with self._engines.exclusive(), self._engines.writer.begin() as conn:
            row = conn.execute(
                sa.select(witness_state.c.size, witness_state.c.root, witness_state.c.note)
                .where(witness_state.c.origin == cp.origin)
                .with_for_update()
            ).one()
            size, root = int(row.size), bytes(row.root)
            if old_size != size:
                raise OldSizeMismatch(size, old_size)
            try:
                _check_extends(size, root, cp, proof)
            except RootMismatchAtEqualSize as exc:
                # Kept in this transaction, which then commits: the refusal changes nothing else.
                digest = self._keep_evidence(conn, cp, received, size, root, str(row.note))
                fork = ForkRefused(str(exc), digest)
            else:
                conn.execute(
                    witness_state.update()
                    .where(witness_state.c.origin == cp.origin)
                    .values(size=cp.size, root=cp.root, note=received, updated_at=self._clock())
                )
        if fork is not None:
            raise fork
        return cosign_note(note.text, self.name, self._key, int(self._clock())).line()

    def _keep_evidence(
        self, conn: Connection, cp: Checkpoint, note: str, size: int, root: bytes, cosigned: str
    ) -> str | None:
        """Store a fork once (the same two roots again, under other signature lines even, is no news) and
        at most `MAX_EVIDENCE_PER_ORIGIN` per log; the digest of the row that holds it, or None."""
        t = witness_evidence
        digest = note_digest(note)
        same_fork = sa.and_(
            t.c.origin == cp.origin, t.c.size == cp.size, t.c.root == cp.root, t.c.cosigned_root == root
        )
        same = conn.execute(sa.select(t.c.digest).where(sa.or_(t.c.digest == digest, same_fork))).first()
        if same is not None:
            return str(same.digest)
        kept = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.origin == cp.origin)).scalar()
        if int(kept or 0) >= MAX_EVIDENCE_PER_ORIGIN:
            return None
        row = {"digest": digest, "origin": cp.origin, "size": cp.size, "root": cp.root, "note": note,
               "cosigned_size": size, "cosigned_root": root, "cosigned_note": cosigned,
               "recorded_at": self._clock()}  # fmt: skip
        conn.execute(t.insert().values(**row))
        return digest

    def fork_evidence(self, origin: str | None = None) -> list[KeptFork]:
        """The forks this witness kept, oldest first (see `read_fork_evidence`)."""
        t = witness_evidence
        query = sa.select(t).order_by(t.c.recorded_at, t.c.digest)
        if origin is not None:
            query = query.where(t.c.origin == origin)
        with self._engines.reader.connect() as conn:
            return [_kept(row) for row in conn.execute(query)]

    @staticmethod
    def _check_signature(note: Note, keys: list[VerifierKey]) -> None:
        try:
            verify_note(note, keys)
        except SignatureError as exc:
            known = {(k.name, k.key_id) for k in keys}
            if any((s.name, s.key_id) in known for s in note.signatures):
                raise BadLogSignature(str(exc)) from None
            raise MissingLogSignature(str(exc)) from None


def _check_extends(size: int, root: bytes, cp: Checkpoint, proof: Sequence[bytes]) -> None:
    if cp.size == 0 and cp.root != EMPTY_ROOT:
        raise RootMismatchAtEqualSize(
            f"checkpoint of size 0 has root {cp.root.hex()}, not the empty tree's {EMPTY_ROOT.hex()}"
        )
    if size == cp.size and root != cp.root:
        raise RootMismatchAtEqualSize(
            f"checkpoint of size {size} has root {cp.root.hex()}, but {root.hex()} was cosigned"
        )
    if size == 0:
        if proof:
            raise NonEmptyProofFromZero("a consistency proof from size 0 must be empty")
        return
    try:
        verify_consistency(size, cp.size, proof, root, cp.root)
    except ProofError as exc:
        raise BadConsistencyProof(str(exc)) from None
