"""The one interface every source implements: a schema and a stream of Arrow record batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import pyarrow as pa

DEFAULT_BATCH_ROWS = 256_000


class Connector(ABC):
    """A readable source of one table. Implementations stream; none loads a whole source into memory.

    `schema()` may open the source to read its header; `batches()` yields record batches whose schema equals
    `schema()`. Both raise `connectors.errors.ConnectorError` subclasses that name the source, the line or
    row and the column.
    """

    #: a human-readable name of the source for errors and the catalog (a path, or a URL without password)
    source: str

    @abstractmethod
    def schema(self) -> pa.Schema:
        """The columns and Arrow types of the table."""

    @abstractmethod
    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the table as record batches of at most `batch_rows` rows."""

    def batches_of(
        self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Stream only `columns` (names of `schema()`, in this order). Sources that can skip reading
        the other columns override this; the others read everything and select."""
        for batch in self.batches(batch_rows):
            yield batch.select(list(columns))
