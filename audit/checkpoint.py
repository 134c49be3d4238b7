"""C2SP tlog-checkpoint bodies (origin, size, root) and their signing, opening and cosigning (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.errors import NoteError
from audit.export_format import parse_tree_size
from audit.merkle import HASH_SIZE
from audit.notes import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Note,
    VerifiedNote,
    VerifierKey,
    b64,
    b64decode_strict,
    cosign_note,
    parse_note,
    sign_note,
    verify_note,
)


@dataclass(frozen=True)
class Checkpoint:
    """A log's commitment to its first `size` entries: the Merkle `root` under the log name `origin`."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The note text: three lines, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{b64(self.root)}\n"


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint whose note verified against the log's key, with the verified note it came from."""

    checkpoint: Checkpoint
    note: VerifiedNote

    @property
    def text(self) -> str:
        return self.note.note.render()


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse the three-line checkpoint body; extension lines are not used by fedgate and are rejected."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint body does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != 3:
        raise NoteError(f"checkpoint body has {len(lines)} lines, expected 3 (origin, size, root)")
    origin, size_text, root_text = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    size = parse_tree_size(size_text)
    if size is None:
        raise NoteError(
            f"checkpoint size {size_text[:40]!r} is not a decimal without leading zeroes of at most 2**53 - 1"
        )
    root = b64decode_strict(root_text, "checkpoint root")
    if len(root) != HASH_SIZE:
        raise NoteError(f"checkpoint root has {len(root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, size, root)


def sign_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> str:
    """The signed note of a checkpoint, signed with the log key named after the origin."""
    body = checkpoint.body()
    return Note(body, (sign_note(body, checkpoint.origin, key),)).render()


def open_checkpoint(
    message: str | bytes | Note, log_keys: Sequence[VerifierKey], origin: str | None = None
) -> OpenedCheckpoint:
    """Verify a checkpoint note with the log's key(s) only (cosignatures are ignored here) and parse it."""
    note = message if isinstance(message, Note) else parse_note(message)
    verified = verify_note(note, [k for k in log_keys if k.alg == ALG_ED25519])
    checkpoint = parse_checkpoint_body(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return OpenedCheckpoint(checkpoint, verified)


def cosign_checkpoint(
    checkpoint: Checkpoint, witness_name: str, key: Ed25519PrivateKey, timestamp: int
) -> str:
    """A witness's cosignature/v1 line (with its final newline) for the checkpoint."""
    return cosign_note(checkpoint.body(), witness_name, key, timestamp).line()


def verify_cosignatures(
    message: str | bytes | Note, witness_keys: Sequence[VerifierKey]
) -> tuple[VerifierKey, ...]:
    """The witness keys whose cosignatures verify on the note; a failing known witness rejects the note.

    Returns an empty tuple when no known witness cosigned (the quorum check is the caller's). A key that is
    not a cosignature/v1 key (a log's Ed25519 key, say) could never verify a cosignature: NoteError.
    """
    note = message if isinstance(message, Note) else parse_note(message)
    keys = require_witness_keys(witness_keys)
    names = {(k.name, k.key_id) for k in keys}
    if not any((s.name, s.key_id) in names for s in note.signatures):
        return ()
    return verify_note(note, keys).verified


def require_witness_keys(keys: Sequence[VerifierKey]) -> list[VerifierKey]:
    """The keys, when each is a witness's cosignature/v1 (0x04) key; else NoteError naming the first not."""
    for key in keys:
        if key.alg != ALG_COSIGNATURE_V1:
            raise NoteError(
                f"{key.name}+{key.key_id.hex()} is a log's Ed25519 (type 0x{key.alg:02x}) verifier key, "
                f"not a witness's cosignature/v1 (type 0x{ALG_COSIGNATURE_V1:02x}) verifier key"
            )
    return list(keys)
