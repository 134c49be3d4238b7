"""Every kind under every filter op, on DuckDB and PostgreSQL, against pandas on the same rows; and a
query of more groups than disclosure control lays out, refused without the store sending them all."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from query_helpers import (
    MANY_GROUPS_COLUMNS,
    MANY_GROUPS_SIDE,
    TABLE,
    admitted,
    obligations,
    reference_mask,
    rows_fetched,
    write_postgres,
)

from gateway.decision.models import Obligations
from gateway.query import (
    ExecutionError,
    PopulationCache,
    QueryOutcome,
    ValueMismatch,
    compile_query,
    execute,
    parse_query_spec,
    quantile_name,
    store_engine,
)
from gateway.release import protect
from pseudonymize.disclosure import MAX_GRID_CELLS, TableTooLarge
from pseudonymize.pseudonym import pseudonym

FILTERS: dict[str, dict[str, Any]] = {
    "=": {"column": "sex", "op": "=", "value": "F"},
    "!=": {"column": "smoking", "op": "!=", "value": "never"},
    "<": {"column": "bmi", "op": "<", "value": 27.5},
    "<=": {"column": "systolic_bp", "op": "<=", "value": 140},
    ">": {"column": "admission_date", "op": ">", "value": "2018-01-01"},
    ">=": {"column": "icd10", "op": ">=", "value": "E11"},
    "in": {"column": "icd10", "op": "in", "value": ["I10", "E11.9", "C18.9", "J44.9", "nothing"]},
    "between": {"column": "survival_days", "op": "between", "value": [100, 2000]},
    "is_null": {"column": "hba1c", "op": "is_null"},
    "is_not_null": {"column": "hba1c", "op": "is_null", "value": False},
    "tree": {
        "and": [
            {
                "not": {
                    "or": [
                        {"column": "sex", "op": "=", "value": "M"},
                        {"column": "bmi", "op": ">", "value": 30},
                    ]
                }
            },
            {"not": {"column": "event", "op": "=", "value": True}},
        ]
    },
}
KINDS: dict[str, dict[str, Any]] = {
    "count": {"group_by": []},
    "crosstab": {"group_by": ["sex", "smoking"]},
    "summary": {"group_by": ["outcome"], "params": {"column": "bmi"}},
    "histogram": {"group_by": ["sex"], "params": {"column": "bmi", "edges": [20, 25, 30, 35]}},
    "quantiles": {"group_by": ["event"], "params": {"column": "systolic_bp", "probs": [0.25, 0.5, 0.9]}},
}


def spec_for(kind: str, node: dict[str, Any] | None) -> Any:
    return parse_query_spec(
        {
            "dataset": "mixed",
            "agreement": "DSA-2026-014",
            "purpose": {"duo": ["DUO:0000042"]},
            "kind": kind,
            "filters": node,
            **KINDS[kind],
        }
    )


def run(
    url: str, spec: Any, columns: list[tuple[str, str]], populations: PopulationCache | None = None
) -> QueryOutcome:
    engine = store_engine(url)
    try:
        allowed = tuple(name for name, _ in columns)
        compiled = compile_query(spec, TABLE, columns, obligations(allowed), engine.dialect.name)
        return execute(engine, compiled, populations=populations)
    finally:
        engine.dispose()


def run_both_ways(url: str, spec: Any, columns: list[tuple[str, str]]) -> list[QueryOutcome]:
    """Without a population cache, then with one (cold, then warm): all three must agree with pandas."""
    cache = PopulationCache()
    outcomes = [run(url, spec, columns), run(url, spec, columns, cache), run(url, spec, columns, cache)]
    assert len(cache) == 1
    return outcomes


def _key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            out.append(None)
        else:
            out.append(v.item() if isinstance(v, np.generic) else v)
    return tuple(out)


def reference(frame: pd.DataFrame, kind: str, node: dict[str, Any] | None) -> tuple[dict[Any, Any], int, int]:
    """Expected cells keyed by group values (and bin), plus selected and population, from pandas (for a
    statistic, of the rows with its column present)."""
    consented = frame[admitted(frame)]
    chosen = consented[reference_mask(consented, node)] if node is not None else consented
    groups = KINDS[kind]["group_by"]
    params = KINDS[kind].get("params", {})
    rows = chosen
    if "column" in params:
        rows = chosen[chosen[params["column"]].notna()].copy()
    if kind == "histogram":
        # Bins close on the right, (e(i-1), e(i)]: a value on an edge is in the bin that edge ends.
        rows["bin"] = np.searchsorted(np.asarray(params["edges"], float), rows["bmi"].to_numpy(float), "left")
        groups = [*groups, "bin"]
    cells: dict[Any, Any] = {}
    parts = rows.groupby(groups, dropna=False) if groups else [((), rows)]
    for key, part in parts:
        key = _key(key if isinstance(key, tuple) else (key,))
        x = part[params["column"]].astype(float) if "column" in params else None
        if kind == "summary":
            assert x is not None
            cells[key] = (len(part), x.sum(), (x * x).sum())
        elif kind == "quantiles":
            assert x is not None
            cells[key] = (len(part), *(x.quantile(p) for p in params["probs"]))
        else:
            cells[key] = (len(part),)
    if not groups:
        cells.setdefault((), (0,))
    if "column" in params:
        # A statistic's query set and population are the rows with its column present.
        present = consented[params["column"]].notna()
        return cells, len(rows), int(present.sum())
    return cells, len(chosen), len(consented)


def observed(outcome: QueryOutcome, kind: str) -> dict[Any, Any]:
    frame = outcome.frame
    groups = list(KINDS[kind]["group_by"]) + (["bin"] if kind == "histogram" else [])
    stats = ["n"]
    if kind == "summary":
        stats = ["n", "sum", "sum_sq"]
    if kind == "quantiles":
        stats = ["n", *(quantile_name(p) for p in KINDS[kind]["params"]["probs"])]
    return {
        _key(tuple(row[g] for g in groups)): tuple(row[s] for s in stats)
        for row in frame.astype(object).to_dict("records")
    }


def check(outcome: QueryOutcome, frame: pd.DataFrame, kind: str, node: dict[str, Any] | None) -> None:
    cells, selected, population = reference(frame, kind, node)
    got = observed(outcome, kind)
    assert set(got) == set(cells)
    for key, want in cells.items():
        assert got[key][0] == want[0], key
        assert np.allclose(got[key][1:], want[1:], rtol=1e-9, atol=1e-9), key
    assert (outcome.selected, outcome.population) == (selected, population)


CASES = [(kind, op) for kind in KINDS for op in [*FILTERS, "none"]]


@pytest.mark.parametrize(("kind", "op"), CASES)
def test_duckdb_matches_pandas(
    duck_url: str, mixed_columns: list[tuple[str, str]], mixed_frame: pd.DataFrame, kind: str, op: str
) -> None:
    node = FILTERS.get(op)
    for outcome in run_both_ways(duck_url, spec_for(kind, node), mixed_columns):
        check(outcome, mixed_frame, kind, node)


@pytest.mark.postgres
@pytest.mark.parametrize(("kind", "op"), CASES)
def test_postgres_matches_pandas(
    pg_mixed_url: str, mixed_columns: list[tuple[str, str]], mixed_frame: pd.DataFrame, kind: str, op: str
) -> None:
    node = FILTERS.get(op)
    for outcome in run_both_ways(pg_mixed_url, spec_for(kind, node), mixed_columns):
        check(outcome, mixed_frame, kind, node)


def test_result_frame_has_typed_columns(duck_url: str, mixed_columns: list[tuple[str, str]]) -> None:
    crosstab = run(duck_url, spec_for("crosstab", None), mixed_columns).frame
    assert list(crosstab.columns) == ["sex", "smoking", "n"]
    assert str(crosstab["sex"].dtype) == "string" and crosstab["n"].dtype == np.int64
    assert crosstab["sex"].isna().any(), "missing values form their own group"
    hist = run(duck_url, spec_for("histogram", None), mixed_columns).frame
    assert list(hist.columns) == ["sex", "bin", "lower", "upper", "n"]
    edges = KINDS["histogram"]["params"]["edges"]
    first, last = hist[hist["bin"] == 0].iloc[0], hist[hist["bin"] == len(edges)].iloc[0]
    assert math.isnan(first["lower"]) and first["upper"] == edges[0]
    assert last["lower"] == edges[-1] and math.isnan(last["upper"])
    quant = run(duck_url, spec_for("quantiles", None), mixed_columns).frame
    assert list(quant.columns) == ["event", "n", "q0.25", "q0.5", "q0.9"]
    assert str(quant["event"].dtype) == "boolean"
    grouped_by_date = parse_query_spec(
        {**spec_for("count", None).model_dump(by_alias=True), "group_by": ["admission_date"]}
    )
    dated = run(duck_url, grouped_by_date, mixed_columns).frame
    assert str(dated["admission_date"].dtype).startswith("datetime64")


def test_withdrawn_patient_is_excluded_and_withdrawal_applies_to_the_next_query(
    duck_url: str, mixed_columns: list[tuple[str, str]], mixed_frame: pd.DataFrame, pg_url: str
) -> None:
    ok = admitted(mixed_frame)
    withdrawn = mixed_frame[mixed_frame["consent_withdrawn"]]["patient_id"].iloc[0]
    present = mixed_frame[ok]["patient_id"].iloc[0]

    def count_of(url: str, patient: str) -> QueryOutcome:
        node = {"column": "patient_id", "op": "=", "value": patient}
        return run(url, spec_for("count", node), mixed_columns)

    assert count_of(duck_url, withdrawn).frame["n"].tolist() == [0]
    assert count_of(duck_url, present).frame["n"].tolist() == [1]

    write_postgres(pg_url, pa.Table.from_pandas(mixed_frame, preserve_index=False))
    before = count_of(pg_url, present)
    assert before.frame["n"].tolist() == [1]
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f'UPDATE "{TABLE}" SET consent_withdrawn = TRUE WHERE patient_id = :p'), {"p": present}
        )
    engine.dispose()
    after = count_of(pg_url, present)
    assert after.frame["n"].tolist() == [0]
    assert after.population == before.population - 1


def test_duckdb_store_is_opened_read_only(duck_url: str) -> None:
    engine = store_engine(duck_url)
    try:
        with pytest.raises(sa.exc.DBAPIError), engine.connect() as conn:
            conn.exec_driver_sql(f'DELETE FROM "{TABLE}"')
    finally:
        engine.dispose()


def test_postgres_store_is_opened_read_only(pg_mixed_url: str) -> None:
    engine = store_engine(pg_mixed_url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="read-only"), engine.connect() as conn:
            conn.exec_driver_sql(f'DELETE FROM "{TABLE}"')
    finally:
        engine.dispose()


def test_database_errors_become_execution_errors_without_values(
    duck_url: str, pg_mixed_url: str, mixed_columns: list[tuple[str, str]]
) -> None:
    node = {"column": "icd10", "op": "=", "value": "SECRET-VALUE-42"}
    spec = spec_for("count", node)
    allowed = tuple(name for name, _ in mixed_columns)
    for url in (duck_url, pg_mixed_url):
        engine = store_engine(url)
        try:
            compiled = compile_query(
                spec, "ds_missing__v9", mixed_columns, obligations(allowed), engine.dialect.name
            )
            with pytest.raises(ExecutionError) as caught:
                execute(engine, compiled)
        finally:
            engine.dispose()
        assert "SECRET-VALUE-42" not in str(caught.value)
        assert "ds_missing" not in str(caught.value)


def test_unreachable_store_is_an_execution_error(tmp_path: Any, mixed_columns: list[tuple[str, str]]) -> None:
    engine = store_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", hold_open=False)
    allowed = tuple(name for name, _ in mixed_columns)
    compiled = compile_query(
        spec_for("count", None), TABLE, mixed_columns, obligations(allowed), "postgresql"
    )
    with pytest.raises(ExecutionError, match="store unavailable"):
        execute(engine, compiled)


def test_duckdb_file_held_by_a_writer_is_unavailable(
    tmp_path: Any, mixed_columns: list[tuple[str, str]], duck_url: str
) -> None:

    path = tmp_path / "busy.duckdb"
    writer = duckdb.connect(str(path))  # as an ingest in this process would hold it
    try:
        writer.execute(f'CREATE TABLE "{TABLE}" (x INTEGER)').fetchall()
        engine = store_engine(f"duckdb:///{path}", hold_open=False)
        allowed = tuple(name for name, _ in mixed_columns)
        spec = spec_for("count", None)
        compiled = compile_query(spec, TABLE, mixed_columns, obligations(allowed), "duckdb")
        with pytest.raises(ExecutionError, match="store unavailable") as caught:
            execute(engine, compiled)
        assert str(path) not in str(caught.value)
    finally:
        writer.close()


@pytest.mark.parametrize("store", ["duck_url", "pg_mixed_url"])
def test_withdrawals_recorded_after_ingest_are_excluded(
    store: str,
    request: pytest.FixtureRequest,
    mixed_columns: list[tuple[str, str]],
    mixed_frame: pd.DataFrame,
) -> None:
    url = request.getfixturevalue(store)
    admitted_ids = mixed_frame[admitted(mixed_frame)]["patient_id"].tolist()
    gone = admitted_ids[:3]
    tokens = [*gone, *(f"unknown-{i}" for i in range(2000))]
    allowed = tuple(name for name, _ in mixed_columns)
    spec = spec_for("crosstab", None)
    cache = PopulationCache()  # a withdrawal must not reuse the population counted before it
    engine = store_engine(url)
    try:
        first = compile_query(spec, TABLE, mixed_columns, obligations(allowed), engine.dialect.name)
        base = execute(engine, first, populations=cache)
        compiled = compile_query(
            spec,
            TABLE,
            mixed_columns,
            obligations(allowed),
            engine.dialect.name,
            patient_column="patient_id",
            withdrawn=tokens,
        )
        after = execute(engine, compiled, populations=cache)
    finally:
        engine.dispose()
    assert after.population == base.population - 3
    assert after.selected == base.selected - 3
    assert int(after.frame["n"].sum()) == int(base.frame["n"].sum()) - 3
    assert "unknown-7" not in str(compiled.main.compile())


@pytest.mark.parametrize("stored", ["uuid", "grouped-text", "plain-hex-text"])
def test_a_withdrawal_matches_the_token_in_every_spelling_a_store_holds(
    stored: str, tmp_path: Any, mixed_table: pa.Table, mixed_columns: list[tuple[str, str]]
) -> None:
    # Ingest stores tokens as DuckDB UUID values; PostgreSQL stores hold their grouped text, and DuckDB
    # tables written before then hold 32 plain hex digits. A withdrawal is recorded as `pseudonym` spells
    # it, and must exclude the patient from all three.
    tokens = [pseudonym(bytes(32), str(i)) for i in range(mixed_table.num_rows)]
    column: pa.Array = pa.array(
        tokens if stored != "plain-hex-text" else [t.replace("-", "") for t in tokens]
    )
    table = mixed_table.set_column(mixed_table.schema.get_field_index("patient_id"), "patient_id", column)
    path = tmp_path / "tokens.duckdb"
    con = duckdb.connect(str(path))
    con.register("src", table)
    replace = " REPLACE (CAST(patient_id AS UUID) AS patient_id)" if stored == "uuid" else ""
    con.execute(f'CREATE TABLE "{TABLE}" AS SELECT *{replace} FROM src').fetchall()
    con.close()
    admitted_rows = [i for i, ok in enumerate(admitted(mixed_table.to_pandas())) if ok]
    # As the steward's tools may spell them: Python's uuid reads these, DuckDB's cast alone would not.
    gone = [f"urn:uuid:{tokens[admitted_rows[0]]}", "{" + tokens[admitted_rows[1]].upper() + "}"]
    allowed = tuple(name for name, _ in mixed_columns)
    spec = spec_for("count", None)
    engine = store_engine(f"duckdb:///{path}")
    try:
        base = execute(engine, compile_query(spec, TABLE, mixed_columns, obligations(allowed), "duckdb"))
        compiled = compile_query(
            spec,
            TABLE,
            mixed_columns,
            obligations(allowed),
            "duckdb",
            patient_column="patient_id",
            withdrawn=gone,
        )
        after = execute(engine, compiled)
    finally:
        engine.dispose()
    assert after.population == base.population - 2


def test_a_filter_value_a_uuid_column_cannot_hold_is_the_request_s_fault(
    token_store: tuple[sa.Engine, list[str]], mixed_columns: list[tuple[str, str]]
) -> None:
    # Token columns hold UUID values; the catalog calls them text, so 'abc' passes compilation and only
    # the store finds it is no value of the column. That is a bad request, not an unavailable store.
    engine, tokens = token_store
    allowed = tuple(name for name, _ in mixed_columns)
    spec = spec_for("count", {"column": "patient_id", "op": "=", "value": "abc"})
    with pytest.raises(ValueMismatch) as caught:
        execute(engine, compile_query(spec, TABLE, mixed_columns, obligations(allowed), "duckdb"))
    assert caught.value.field == "filters" and "abc" not in str(caught.value)
    spec = spec_for("count", {"column": "patient_id", "op": "=", "value": tokens[0]})
    found = execute(engine, compile_query(spec, TABLE, mixed_columns, obligations(allowed), "duckdb"))
    assert found.selected <= 1


# -- more groups than a table may have ---------------------------------------------------------------------

GROUPED: dict[str, dict[str, Any]] = {
    "count": {"group_by": ["a", "b"]},
    "crosstab": {"group_by": ["a", "b"]},
    "summary": {"group_by": ["a", "b"], "params": {"column": "v"}},
    # Each (a, b) is one row, in one bin: as many rows from the store as groups.
    "histogram": {"group_by": ["a", "b"], "params": {"column": "v", "edges": [0.5, 1.5]}},
    "quantiles": {"group_by": ["a", "b"], "params": {"column": "v", "probs": [0.5]}},
}
MANY_STORES = ["many_groups_duck_url", pytest.param("many_groups_pg_url", marks=pytest.mark.postgres)]
GRID_REFUSAL = str(TableTooLarge(MAX_GRID_CELLS, to_hide=False))
"""Disclosure control's refusal of a grid of more than MAX_GRID_CELLS cells."""


def many_groups_query(
    url: str,
    kind: str,
    levels_of_a: int,
    *,
    min_cell_count: int = 10,
    populations: PopulationCache | None = None,
) -> tuple[Any, Obligations, QueryOutcome, list[int]]:
    """`kind` grouped by a and b on the rows whose a is below `levels_of_a` (400 groups per level): its spec,
    its obligations, its outcome and the number of rows each statement fetched."""
    spec = parse_query_spec(
        {"dataset": "many", "agreement": "DSA-2026-014", "purpose": {"duo": ["DUO:0000042"]}, "kind": kind,
         "filters": {"column": "a", "op": "<", "value": levels_of_a}, **GROUPED[kind]}
    )  # fmt: skip
    duties = obligations(tuple(name for name, _ in MANY_GROUPS_COLUMNS), min_cell_count=min_cell_count)
    engine = store_engine(url)
    try:
        compiled = compile_query(spec, TABLE, MANY_GROUPS_COLUMNS, duties, engine.dialect.name)
        with rows_fetched(engine) as fetched:
            outcome = execute(engine, compiled, populations=populations)
    finally:
        engine.dispose()
    return spec, duties, outcome, fetched


@pytest.mark.parametrize("store", MANY_STORES)
@pytest.mark.parametrize("kind", GROUPED)
def test_more_groups_than_a_table_may_have_are_refused_without_fetching_them(
    store: str, kind: str, request: pytest.FixtureRequest
) -> None:
    # Grouped by continuous columns, a query has about as many groups as rows: the store sends one more
    # than the grid may hold, and disclosure control refuses the query as it refused the whole table.
    url = request.getfixturevalue(store)
    everything = MANY_GROUPS_SIDE**2
    populations = PopulationCache()
    # Without a population cache; with one that learns it; with one that knows it (a count then takes
    # its query set from its own cells, which the store did not all send).
    caches = (None, populations, populations) if kind in ("count", "crosstab") else (None,)
    for cache in caches:
        spec, duties, outcome, fetched = many_groups_query(url, kind, MANY_GROUPS_SIDE, populations=cache)
        assert max(fetched) == MAX_GRID_CELLS + 1
        assert outcome.plain is None
        assert (outcome.selected, outcome.population) == (everything, everything)
        with pytest.raises(TableTooLarge) as refused:
            protect(spec, outcome, duties)
        assert str(refused.value) == GRID_REFUSAL


@pytest.mark.parametrize("store", MANY_STORES)
# One limit for every kind (compile._selects): the Python rows of a count, a frame, a histogram's bins.
@pytest.mark.parametrize("kind", ["count", "summary", "histogram"])
def test_exactly_as_many_groups_as_a_table_may_have_answer_whole(
    store: str, kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(store)
    at_limit = MAX_GRID_CELLS // MANY_GROUPS_SIDE
    # A threshold of 1 leaves nothing to hide, so the whole grid is released.
    spec, duties, outcome, fetched = many_groups_query(url, kind, at_limit, min_cell_count=1)
    assert max(fetched) == MAX_GRID_CELLS
    assert len(outcome.frame) == MAX_GRID_CELLS and outcome.selected == MAX_GRID_CELLS
    assert sorted(set(outcome.frame["a"])) == list(range(at_limit))
    if kind == "histogram":
        # Its grid is the groups times the bins, refused as it always was.
        with pytest.raises(TableTooLarge, match="more than disclosure control lays out"):
            protect(spec, outcome, duties)
    else:
        released = protect(spec, outcome, duties)
        assert released.suppressed == 0 and released.cells >= MAX_GRID_CELLS
    # One more level of a is 400 groups more.
    spec, duties, outcome, fetched = many_groups_query(url, kind, at_limit + 1, min_cell_count=1)
    assert max(fetched) == MAX_GRID_CELLS + 1
    with pytest.raises(TableTooLarge) as refused:
        protect(spec, outcome, duties)
    assert str(refused.value) == GRID_REFUSAL
