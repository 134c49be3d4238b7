"""The offline verifier: a library over an export and public keys; imports nothing from the log writer.

Names are imported on first use, so that the verifier's worker processes (which import
`audit.verify.parallel`) start without loading signatures and checkpoints they never touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.errors import AuditIntegrityError, ForkEvidence
    from audit.verify.releases import ReleaseSummary, check_releases
    from audit.verify.verifier import VerificationSummary, find_fork, verify_export

_LAZY = {
    "AuditIntegrityError": "audit.errors",
    "ForkEvidence": "audit.errors",
    "ReleaseSummary": "audit.verify.releases",
    "check_releases": "audit.verify.releases",
    "VerificationSummary": "audit.verify.verifier",
    "find_fork": "audit.verify.verifier",
    "verify_export": "audit.verify.verifier",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audit.verify' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["AuditIntegrityError", "ForkEvidence", "ReleaseSummary", "VerificationSummary",
           "check_releases", "find_fork", "verify_export"]  # fmt: skip
