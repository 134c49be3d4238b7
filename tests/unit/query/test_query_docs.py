"""The examples of docs/queries.md parse, compile and run on the synthetic cohort's store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from query_helpers import obligations

from gateway.query import (
    catalog_columns,
    compile_query,
    execute,
    latest_entry,
    parse_query_spec,
    store_engine,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "queries.md"
EXAMPLES = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]


def test_there_is_one_example_per_kind() -> None:
    assert sorted(e["kind"] for e in EXAMPLES) == sorted(
        ["count", "crosstab", "summary", "histogram", "quantiles"]
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["kind"])
def test_example_runs_on_the_ingested_cohort(cohort_store: tuple[str, Any], example: dict[str, Any]) -> None:
    url, _ = cohort_store
    engine = store_engine(url)
    try:
        entry = latest_entry(engine, "cohort")
        assert entry is not None and latest_entry(engine, "absent") is None
        columns = catalog_columns(entry)
        allowed = tuple(n for n, _ in columns if n != "patient_id")
        spec = parse_query_spec(example)
        outcome = execute(
            engine, compile_query(spec, entry.table_name, columns, obligations(allowed), engine.dialect.name)
        )
    finally:
        engine.dispose()
    assert 0 < outcome.selected <= outcome.population < entry.row_count
    assert int(outcome.frame["n"].sum()) <= outcome.selected
    assert len(outcome.frame) > 0
