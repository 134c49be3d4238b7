"""k-anonymity: classes are measured in distinct patients, whichever way the count is taken."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import duckdb
import pytest

from pseudonymize.risk import k_anonymity

QUASI = ["sex", "area"]
#: 60 rows in six classes of ten (row i in class i % 6); p0 holds rows 0 and 54, both in the first class
_twice = [f"p{i}" if i != 54 else "p0" for i in range(60)]


def _table(patients: Sequence[str | None]) -> duckdb.DuckDBPyConnection:
    """One row per entry: the patient's token (or NULL), in classes by sex and area as rows cycle."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (pid UUID, sex VARCHAR, area VARCHAR)")
    rows = [
        (None if p is None else uuid.uuid5(uuid.NAMESPACE_OID, p), "FM"[i % 2], "ABC"[i % 3])
        for i, p in enumerate(patients)
    ]
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    return con


def _by_distinct_patients(con: duckdb.DuckDBPyConnection, k: int) -> tuple[int, int, int]:
    row = con.execute(
        "SELECT count(*), min(c), coalesce(sum(r) FILTER (WHERE c < ?), 0) "
        "FROM (SELECT count(DISTINCT pid) AS c, count(*) AS r FROM t GROUP BY sex, area)",
        [k],
    ).fetchall()[0]
    return int(row[0]), int(row[1]), int(row[2])


@pytest.mark.parametrize(
    "patients",
    [
        pytest.param([f"p{i}" for i in range(60)], id="one-row-per-patient"),
        pytest.param(_twice, id="one-patient-twice-in-one-class"),
        pytest.param([f"p{i // 6}" for i in range(60)], id="every-patient-six-times"),
        pytest.param([f"p{i}" for i in range(59)] + [None], id="one-row-without-a-patient"),
    ],
)
def test_classes_count_distinct_patients(patients: list[str | None]) -> None:
    con = _table(patients)
    report = k_anonymity(con, "t", QUASI, 11, patient_column="pid")
    assert (report.classes, report.smallest_class, report.records_below_k) == _by_distinct_patients(con, 11)
    assert report.records == len(patients)


def test_a_repeated_patient_shrinks_the_class_below_k() -> None:
    unique = k_anonymity(_table([f"p{i}" for i in range(60)]), "t", QUASI, 10, patient_column="pid")
    repeated = k_anonymity(_table(_twice), "t", QUASI, 10, patient_column="pid")
    assert unique.passes and unique.smallest_class == 10
    assert not repeated.passes and repeated.smallest_class == 9
    # Small by its 9 patients, the class holds 10 records: records and their share count rows alike.
    assert repeated.records_below_k == 10 and repeated.share_below_k == 10 / 60
