"""Errors of the audit package; each carries the evidence a caller or an auditor needs.

Exception tree::

    AuditError
    ├── EntryError                  an entry cannot be written (NaN, ±inf, int beyond 2^53−1, bad key)
    │   └── PayloadError            unknown event type, unknown/missing field, identifier-like value
    ├── LogKeyError                 the log key file is missing, unreadable, too open, or already exists
    ├── StorageError                the log store is unusable (wrong origin, corrupt head, no signing key)
    ├── NoteError                   a signed note or verifier key is malformed
    │   └── SignatureError          no trusted signature verifies, or a known key's signature fails
    ├── ProofError                  an inclusion or consistency proof does not verify
    ├── AuditIntegrityError         the verifier found the log not intact (index, expected, found, reason)
    └── WitnessError                a witness refuses a checkpoint (C2SP tlog-witness rules)
        ├── UnknownOrigin               the checkpoint's origin is not a log this witness knows   (HTTP 404)
        ├── UntrustedCheckpoint         signature rules of signed-note                          (HTTP 403)
        │   ├── MissingLogSignature         no signature by a known key of the log
        │   └── BadLogSignature             a known key's signature does not verify
        ├── MalformedRequest            the add-checkpoint body cannot be parsed               (HTTP 400)
        ├── OldSizeTooLarge             old size > checkpoint size                             (HTTP 400)
        ├── OldSizeMismatch             old size ≠ the size last cosigned (carries `.size`)    (HTTP 409)
        └── ProofRejected               the new checkpoint does not extend the old one         (HTTP 422)
            ├── NonEmptyProofFromZero       old size 0 came with a non-empty proof
            ├── RootMismatchAtEqualSize     equal sizes, different roots
            │   └── ForkRefused             both signed by the log's key: kept as evidence
            └── BadConsistencyProof         the consistency proof fails

The HTTP statuses are what C2SP tlog-witness prescribes; the gateway maps these classes to them.
"""

from __future__ import annotations

from dataclasses import dataclass


class AuditError(Exception):
    """Base of every error the audit package raises."""


class EntryError(AuditError):
    """An entry cannot be serialized to canonical JSON (RFC 8785 domain) or breaks the entry schema."""


class PayloadError(EntryError):
    """An event's payload does not match its registered declaration."""

    def __init__(self, event_type: str, field: str | None, message: str) -> None:
        self.event_type = event_type
        self.field = field
        where = f"{event_type}.{field}" if field else event_type
        super().__init__(f"{where}: {message}")


class LogKeyError(AuditError):
    """The site's Ed25519 log key file cannot be used."""


class StorageError(AuditError):
    """The audit store cannot serve the request as asked."""


class NoteError(AuditError):
    """A signed note, checkpoint body or verifier key is malformed."""


class SignatureError(NoteError):
    """A note carries no verifying signature by a trusted key, or a trusted key's signature fails."""


class ProofError(AuditError):
    """An inclusion or consistency proof does not verify; the message says which check failed."""


@dataclass(frozen=True)
class ForkEvidence:
    """Two checkpoints, both validly signed by the log, that no consistency proof can join."""

    first: str
    second: str


class AuditIntegrityError(AuditError):
    """The verifier found the log not intact; carries the first bad index and what was expected."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        index: int | None = None,
        expected: str | None = None,
        found: str | None = None,
        fork: ForkEvidence | None = None,
    ) -> None:
        self.reason = reason
        self.message = message
        self.index = index
        self.expected = expected
        self.found = found
        self.fork = fork
        parts = [message]
        if expected is not None or found is not None:
            parts.append(f"(expected {expected}, found {found})")
        super().__init__(" ".join(parts))


class WitnessError(AuditError):
    """A witness refuses to cosign a checkpoint."""


class UnknownOrigin(WitnessError):
    """The checkpoint names a log this witness does not know."""


class UntrustedCheckpoint(WitnessError):
    """The checkpoint fails the signed-note signature rules for its log."""


class MissingLogSignature(UntrustedCheckpoint):
    """No signature by a known key of the log is present."""


class BadLogSignature(UntrustedCheckpoint):
    """A signature by a known key of the log does not verify."""


class MalformedRequest(WitnessError):
    """The add-checkpoint request body is not in the tlog-witness format."""


class OldSizeTooLarge(WitnessError):
    """The claimed old size is larger than the new checkpoint's size."""


class OldSizeMismatch(WitnessError):
    """The claimed old size is not the size this witness last cosigned; `.size` is the witness's size."""

    def __init__(self, size: int, claimed: int) -> None:
        self.size = size
        self.claimed = claimed
        super().__init__(f"old size {claimed} does not match the witness's last cosigned size {size}")


class ProofRejected(WitnessError):
    """The new checkpoint is not shown to extend the one this witness last cosigned."""


class NonEmptyProofFromZero(ProofRejected):
    """A consistency proof from size 0 must be empty."""


class RootMismatchAtEqualSize(ProofRejected):
    """Same size as the cosigned checkpoint but a different root: fork evidence."""


class BadConsistencyProof(ProofRejected):
    """The consistency proof between the cosigned and the new checkpoint fails."""
