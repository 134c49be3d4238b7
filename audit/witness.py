"""A C2SP tlog-witness: checks that each new checkpoint of a known log extends the last one it cosigned.

The check and the update of the stored checkpoint happen in one transaction under a row lock (SQLite:
BEGIN IMMEDIATE), so two concurrent submissions cannot both pass against the same old state and roll the
witness back. The HTTP endpoint (`POST <prefix>/add-checkpoint`) lives in the gateway; it feeds the body to
`Witness.add_checkpoint_request` and maps the typed errors of `audit.errors` to the statuses listed there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from audit import storage
from audit.checkpoint import Checkpoint, cosign_checkpoint, parse_checkpoint_body
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
    parse_note,
    parse_verifier_key,
    verifier_key_text,
    verify_note,
)

MAX_PROOF_LINES = 63

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
        """Apply every tlog-witness rule, persist the checkpoint, return this witness's cosignature line."""
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
        with self._engines.exclusive(), self._engines.writer.begin() as conn:
            row = conn.execute(
                sa.select(witness_state.c.size, witness_state.c.root)
                .where(witness_state.c.origin == cp.origin)
                .with_for_update()
            ).one()
            size, root = int(row.size), bytes(row.root)
            if old_size != size:
                raise OldSizeMismatch(size, old_size)
            _check_extends(size, root, cp, proof)
            conn.execute(
                witness_state.update()
                .where(witness_state.c.origin == cp.origin)
                .values(size=cp.size, root=cp.root, note=note.render(), updated_at=self._clock())
            )
        return cosign_checkpoint(cp, self.name, self._key, int(self._clock()))

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
    if size == 0:
        if proof:
            raise NonEmptyProofFromZero("a consistency proof from size 0 must be empty")
        return
    if size == cp.size and root != cp.root:
        raise RootMismatchAtEqualSize(
            f"checkpoint of size {size} has root {cp.root.hex()}, but {root.hex()} was cosigned"
        )
    try:
        verify_consistency(size, cp.size, proof, root, cp.root)
    except ProofError as exc:
        raise BadConsistencyProof(str(exc)) from None
