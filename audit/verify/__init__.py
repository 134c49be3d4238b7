"""The offline verifier: a library over an export and public keys; imports nothing from the log writer."""

from audit.errors import AuditIntegrityError, ForkEvidence
from audit.verify.verifier import VerificationSummary, find_fork, verify_export

__all__ = ["AuditIntegrityError", "ForkEvidence", "VerificationSummary", "find_fork", "verify_export"]
