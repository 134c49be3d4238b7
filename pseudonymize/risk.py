"""Re-identification risk at ingest: k-anonymity over the spec's quasi-identifiers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import numpy as np

from pseudonymize.generalize import quote_ident

#: below this share of the rows, the estimated distinct patients say that patients repeat without a check.
#: DuckDB's estimate misses by more than a tenth on large tables (8.85M for 10M distinct tokens in 2.0):
#: a tighter bound sends unique tokens to the per-class distinct count, 1.5 s more per 10M rows.
_REPEATS_BELOW = 0.5


#: the verdicts a report gives (`RiskReport.verdict`)
PASSES, BELOW_THRESHOLD, NOT_MEASURED = "passes", "below threshold", "not measured"


@dataclass(frozen=True)
class RiskReport:
    """The equivalence classes over the quasi-identifiers: the smallest, and how many records fall below k.

    Without quasi-identifiers nothing is measured: the report has no classes, counts every record as not
    shown to sit in a class of k, and neither passes nor fails ("not measured"). One class of every row
    would pass a table whose rows are all unique."""

    quasi_identifiers: list[str]
    k_threshold: int
    records: int
    classes: int
    smallest_class: int
    records_below_k: int
    share_below_k: float

    @property
    def measured(self) -> bool:
        """True when the spec names quasi-identifiers to measure the classes over."""
        return bool(self.quasi_identifiers)

    @property
    def passes(self) -> bool:
        """True when the classes were measured and every record sits in a class of at least k patients."""
        return self.measured and self.records_below_k == 0

    @property
    def verdict(self) -> str:
        """PASSES, BELOW_THRESHOLD or NOT_MEASURED."""
        if not self.measured:
            return NOT_MEASURED
        return PASSES if self.passes else BELOW_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with its verdict."""
        return {**asdict(self), "passes": self.passes, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskReport:
        """The report `to_dict` gave (or an older one, without the verdict): the verdict is derived again."""
        return cls(**{k: v for k, v in data.items() if k not in ("passes", "verdict")})


def k_anonymity(
    con: duckdb.DuckDBPyConnection,
    table: str,
    quasi_identifiers: list[str],
    k: int,
    *,
    patient_column: str | None = None,
) -> RiskReport:
    """Group the table by its quasi-identifiers and measure the classes below k.

    With `patient_column` (pseudonym tokens, as `pseudonym.pseudonym` writes them), a class is as large
    as the distinct patients in it, not its rows: five admissions of one patient are still one person.
    The ingest passes it whenever the spec names a patient key: the published pseudonym column, or, when
    the spec drops the key, a staging column of the key's tokens that is dropped before publication.
    """
    n = int(con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchall()[0][0])
    if not quasi_identifiers:
        return RiskReport([], k, n, 0, 0, n, 1.0 if n else 0.0)
    if n == 0:
        return RiskReport(list(quasi_identifiers), k, 0, 0, 0, 0, 0.0)
    cols = ", ".join(quote_ident(c) for c in quasi_identifiers)
    size = "count(*)"
    if patient_column and not _one_row_per_patient(con, table, patient_column, n):
        # Tokens are 16-byte UUID values: the per-class sets of distinct patients hold fixed-width keys.
        size = f"count(DISTINCT {quote_ident(patient_column)})"
    # A class is small by its patients (c); the records below k are its rows (r), as `records` are.
    row = con.execute(
        f"SELECT count(*), min(c), coalesce(sum(r) FILTER (WHERE c < ?), 0) "
        f"FROM (SELECT {size} AS c, count(*) AS r FROM {quote_ident(table)} GROUP BY {cols})",
        [k],
    ).fetchall()[0]
    classes, smallest, below = int(row[0]), int(row[1]), int(row[2])
    return RiskReport(list(quasi_identifiers), k, n, classes, smallest, below, below / n)


def _one_row_per_patient(con: duckdb.DuckDBPyConnection, table: str, column: str, rows: int) -> bool:
    """True when every row holds a patient token and no two the same: a class's patients are then its rows.

    Counting rows per class spares DuckDB the per-class sets of distinct tokens, a hash table as large as
    the table. The check sorts the tokens' 64-bit hashes: tokens sharing a hash (a repeated patient, or a
    collision) answer False, and the caller counts distinct tokens. An estimate of the distinct tokens
    below half the rows answers False without sorting. Either answer gives the same report: False only
    chooses the slower count.
    """
    t, c = quote_ident(table), quote_ident(column)
    present, estimate = con.execute(f"SELECT count({c}), approx_count_distinct({c}) FROM {t}").fetchall()[0]
    if int(present) < rows or int(estimate) < _REPEATS_BELOW * rows:
        return False
    hashes = np.asarray(con.execute(f"SELECT hash({c}) AS h FROM {t}").fetchnumpy()["h"])
    hashes.sort()
    return not bool(np.any(hashes[1:] == hashes[:-1]))
