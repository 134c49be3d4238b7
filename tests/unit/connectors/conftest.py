"""Shared checks for connector tests: an error names its source, line, row and column and hides values."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from connectors import Connector, ConnectorError

NamedCheck = Callable[..., None]


@pytest.fixture
def assert_named() -> NamedCheck:
    """Assert an error's fields and that its message says them; `secret` must not appear anywhere in it."""

    def check(
        error: ConnectorError,
        *,
        source: str,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
        secret: str | None = None,
    ) -> None:
        text = str(error)
        assert error.source == source
        assert text.startswith(source)
        if line is not None:
            assert error.line == line
            assert f"line {line}" in text
        if row is not None:
            assert error.row == row
            assert f"row {row}" in text
        if column is not None:
            assert error.column == column
            assert repr(column) in text
        if secret is not None:
            assert secret not in text
            assert secret not in repr(error.args)

    return check


def read_all(connector: Connector, batch_rows: int) -> pa.Table:
    """Drain a connector, checking every batch is bounded and carries the announced schema."""
    schema = connector.schema()
    batches = list(connector.batches(batch_rows))
    for batch in batches:
        assert batch.num_rows <= batch_rows
        assert batch.schema == schema
    return pa.Table.from_batches(batches, schema=schema)


@pytest.fixture
def drain() -> Callable[[Connector, int], pa.Table]:
    """`read_all` as a fixture, since test folders are not packages."""
    return read_all
