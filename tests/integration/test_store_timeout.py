"""A query that keeps the store at work past the site's `[server] store_timeout_s` is stopped: the DuckDB
statement is interrupted, the researcher gets an audited 503 saying so, and the worker's thread and the
store's connection serve the next query."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gateway_site import Site, audit_size, bearer, entries_since, running_gateway
from oidc_issuer import LoopbackTestIssuer

from gateway.query import duckdb_dialect

COUNT = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
    "kind": "count", "group_by": ["sex"],
}  # fmt: skip
ENDLESS = "SELECT count(*) FROM range(3000000000) a WHERE a % 7 = 3"
"""A statement DuckDB takes 20 s or more over here: far past the budget the tests set."""


@pytest.fixture
def endless_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The next query's statement keeps DuckDB at work until it is interrupted; later ones run as usual."""
    run = duckdb_dialect.run
    outcomes: list[str] = []

    def slow_first(conn: Any, *args: Any, **kwargs: Any) -> Any:
        if not outcomes:
            try:
                conn.connection.driver_connection.execute(ENDLESS).fetchall()
            except Exception as exc:
                outcomes.append(type(exc).__name__)
                raise
            outcomes.append("finished")
        return run(conn, *args, **kwargs)

    monkeypatch.setattr(duckdb_dialect, "run", slow_first)
    yield outcomes


def test_a_query_past_the_store_budget_is_stopped_refused_and_audited(
    tmp_site: Site, idp: LoopbackTestIssuer, endless_once: list[str]
) -> None:
    server = tmp_site.settings.server.model_copy(update={"store_timeout_s": 0.5})
    settings = tmp_site.settings.model_copy(update={"server": server})
    researcher = bearer(idp, "researcher", sub="patient-researcher")
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        start = audit_size(http, idp)
        stopped = http.post("/v1/queries", json=COUNT, headers=researcher)
        answered = http.post("/v1/queries", json=COUNT, headers=researcher)
        entries = entries_since(http, idp, start)
    assert endless_once == ["InterruptException"]
    assert stopped.status_code == 503, stopped.text
    problem = stopped.json()
    assert problem["title"] == "The store could not answer"
    assert any("time limit" in reason for reason in problem["reasons"])
    assert "range(" not in stopped.text and "SELECT" not in stopped.text
    refused = [
        e for e in entries if e["type"] == "query.refused" and e["request_id"] == problem["request_id"]
    ]
    assert len(refused) == 1 and refused[0]["payload"]["stage"] == "execute"
    # The interrupt ended that statement only: the same connection answers the next query.
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "released"


GLM_SESSION = {
    "dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
    "model": {"outcome": "bmi", "family": "gaussian", "numeric": ["hba1c"]},
}  # fmt: skip


def test_a_glm_session_whose_rows_take_past_the_budget_is_refused_naming_the_limit(
    tmp_site: Site, idp: LoopbackTestIssuer
) -> None:
    server = tmp_site.settings.server.model_copy(update={"store_timeout_s": 0.5})
    settings = tmp_site.settings.model_copy(update={"server": server})
    outcomes: list[str] = []

    def endless_first(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        """Before the session's rows are read (through SQLAlchemy's execution), the connection is kept at
        work by a statement of its own, once."""
        if not outcomes and "hba1c" in statement:
            try:
                cursor.execute(ENDLESS)
                cursor.fetchall()
            except Exception as exc:
                outcomes.append(type(exc).__name__)
                raise
            outcomes.append("finished")

    researcher = bearer(idp, "researcher", sub="glm-researcher")
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", endless_first)
    try:
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            stopped = http.post("/v1/glm/sessions", json=GLM_SESSION, headers=researcher)
            opened = http.post("/v1/glm/sessions", json=GLM_SESSION, headers=researcher)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", endless_first)
    assert outcomes == ["InterruptException"]
    assert stopped.status_code == 503, stopped.text
    assert any("time limit" in reason for reason in stopped.json()["reasons"])
    assert opened.status_code == 200, opened.text
