"""Tamper-evident audit log: hash chain, RFC 9162 Merkle tree, signed checkpoints, witnesses, verifier.

Public API (import from `audit`):

- writing: `AuditLog.open(url, origin, signing_key)`, `.append(event_type, actor=, request_id=, payload=)`,
  `.append_many([Event(...)])`, `.checkpoint()`, `.latest_checkpoint()`, `.entries(start, end)`,
  `.inclusion_proof(index, size)`, `.consistency_proof(old, new)`, `.root(size)`,
  `.add_cosignature(size, line, witness_key)`, `.export(path)`, `.verifier_key()`, `.close()`
- keys: `generate_log_key(path)`, `load_log_key(path)`, `verifier_key_text(name, public_key)`
- witnesses: `Witness(store_url, name, signing_key, {origin: log verifier key}).add_checkpoint(old, proof,
  checkpoint)` and `.add_checkpoint_request(body)`; `format_add_checkpoint_body(...)`
- verifying: `verify_export(path, log_key, witness_keys, min_witnesses, since)` → `VerificationSummary`,
  raising `AuditIntegrityError`; `verify_inclusion`, `verify_consistency`
- events: `Actor`, `register(EventType(...))`, `REGISTRY`

Every name is imported on first use: `import audit.verify` never loads the writer or SQLAlchemy, and the
verifier's worker processes start without loading what they do not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint, sign_checkpoint
    from audit.entry import Actor
    from audit.errors import (
        AuditError,
        AuditIntegrityError,
        BadConsistencyProof,
        BadLogSignature,
        EntryError,
        ForkEvidence,
        LogKeyError,
        MalformedRequest,
        MissingLogSignature,
        NonEmptyProofFromZero,
        NoteError,
        OldSizeMismatch,
        OldSizeTooLarge,
        PayloadError,
        ProofError,
        ProofRejected,
        RootMismatchAtEqualSize,
        SignatureError,
        StorageError,
        UnknownOrigin,
        UntrustedCheckpoint,
        WitnessError,
    )
    from audit.events import REGISTRY, EventType, register
    from audit.keys import generate_log_key, load_log_key
    from audit.log import AppendReceipt, AuditLog, Event, StoredEntry
    from audit.merkle import leaf_hash, node_hash, verify_consistency, verify_inclusion
    from audit.notes import parse_verifier_key, verifier_key_text
    from audit.verify import VerificationSummary, find_fork, verify_export
    from audit.witness import Witness, format_add_checkpoint_body, parse_add_checkpoint_body

_LAZY = {
    "Checkpoint": "audit.checkpoint",
    "cosign_checkpoint": "audit.checkpoint",
    "open_checkpoint": "audit.checkpoint",
    "sign_checkpoint": "audit.checkpoint",
    "Actor": "audit.entry",
    "AuditError": "audit.errors",
    "AuditIntegrityError": "audit.errors",
    "BadConsistencyProof": "audit.errors",
    "BadLogSignature": "audit.errors",
    "EntryError": "audit.errors",
    "ForkEvidence": "audit.errors",
    "LogKeyError": "audit.errors",
    "MalformedRequest": "audit.errors",
    "MissingLogSignature": "audit.errors",
    "NonEmptyProofFromZero": "audit.errors",
    "NoteError": "audit.errors",
    "OldSizeMismatch": "audit.errors",
    "OldSizeTooLarge": "audit.errors",
    "PayloadError": "audit.errors",
    "ProofError": "audit.errors",
    "ProofRejected": "audit.errors",
    "RootMismatchAtEqualSize": "audit.errors",
    "SignatureError": "audit.errors",
    "StorageError": "audit.errors",
    "UnknownOrigin": "audit.errors",
    "UntrustedCheckpoint": "audit.errors",
    "WitnessError": "audit.errors",
    "REGISTRY": "audit.events",
    "EventType": "audit.events",
    "register": "audit.events",
    "leaf_hash": "audit.merkle",
    "node_hash": "audit.merkle",
    "verify_consistency": "audit.merkle",
    "verify_inclusion": "audit.merkle",
    "parse_verifier_key": "audit.notes",
    "verifier_key_text": "audit.notes",
    "AuditLog": "audit.log",
    "AppendReceipt": "audit.log",
    "Event": "audit.log",
    "StoredEntry": "audit.log",
    "generate_log_key": "audit.keys",
    "load_log_key": "audit.keys",
    "Witness": "audit.witness",
    "format_add_checkpoint_body": "audit.witness",
    "parse_add_checkpoint_body": "audit.witness",
    "verify_export": "audit.verify",
    "find_fork": "audit.verify",
    "VerificationSummary": "audit.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "REGISTRY",
    "Actor",
    "AppendReceipt",
    "AuditError",
    "AuditIntegrityError",
    "AuditLog",
    "BadConsistencyProof",
    "BadLogSignature",
    "Checkpoint",
    "EntryError",
    "Event",
    "EventType",
    "ForkEvidence",
    "LogKeyError",
    "MalformedRequest",
    "MissingLogSignature",
    "NonEmptyProofFromZero",
    "NoteError",
    "OldSizeMismatch",
    "OldSizeTooLarge",
    "PayloadError",
    "ProofError",
    "ProofRejected",
    "RootMismatchAtEqualSize",
    "SignatureError",
    "StorageError",
    "StoredEntry",
    "UnknownOrigin",
    "UntrustedCheckpoint",
    "VerificationSummary",
    "Witness",
    "WitnessError",
    "cosign_checkpoint",
    "find_fork",
    "format_add_checkpoint_body",
    "generate_log_key",
    "leaf_hash",
    "load_log_key",
    "node_hash",
    "open_checkpoint",
    "parse_add_checkpoint_body",
    "parse_verifier_key",
    "register",
    "sign_checkpoint",
    "verifier_key_text",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
]
