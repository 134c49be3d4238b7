"""Errors of the pseudonymization package; none of them ever carries a key or a raw source value.

PseudonymizeError
├── KeyMaterialError      master or linkage key missing, unreadable, too short or too openly readable
├── SpecError             a pseudonymization spec that cannot be used (names the file, field and line)
├── RiskThresholdError    k-anonymity below the spec's threshold and no override (carries the report)
├── StoreError            the pseudonymized store cannot be opened, read or written
├── IngestError           an ingest failed; nothing was published, the previous version stays
└── DisclosureError       output disclosure control refused (tree in pseudonymize/disclosure/errors.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pseudonymize.risk import RiskReport


class PseudonymizeError(Exception):
    """Base of every error raised by `pseudonymize`."""

    @property
    def audit_reason(self) -> str:
        """A reason fit for the audit log: no path, no value, no key; subclasses say more."""
        return type(self).__name__


class KeyMaterialError(PseudonymizeError):
    """A key is missing, unreadable, too short, or stored where others can read it."""


class SpecError(PseudonymizeError):
    """A pseudonymization spec is invalid; `path`, `field` and `line` say where."""

    def __init__(self, path: Path | str, field: str | None, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.field = field
        self.line = line
        self.message = message
        where = str(path) + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    @property
    def audit_reason(self) -> str:
        return f"spec {self.field or 'file'}: {self.message}"


class RiskThresholdError(PseudonymizeError):
    """The dataset's k-anonymity is below the spec's threshold; publishing needs an explicit override."""

    def __init__(self, report: RiskReport) -> None:
        self.report = report
        super().__init__(
            f"k-anonymity {report.smallest_class} is below the threshold k={report.k_threshold} over "
            f"{', '.join(report.quasi_identifiers)}: {report.records_below_k} records "
            f"({report.share_below_k:.2%}) are in smaller classes; generalize further or pass the override"
        )

    @property
    def audit_reason(self) -> str:
        return str(self)


class StoreError(PseudonymizeError):
    """The pseudonymized store cannot be opened, read or written."""


class IngestError(PseudonymizeError):
    """An ingest failed before publishing; the previously published version is unchanged."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {detail}")

    @property
    def audit_reason(self) -> str:
        return self.detail
