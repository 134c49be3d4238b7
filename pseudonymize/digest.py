"""The content digest of a stored table: SHA-256 over its columns in a canonical, batch-independent form.

For every column, in table order, three running SHA-256 streams take, batch after batch in stored row
order: one validity byte per row; each value's length as int64 little-endian (strings and binaries only);
the value bytes (strings and binaries) or the values' fixed-width little-endian bytes with nulls as zeros
(fixed-size binaries, such as the 16-byte UUID tokens an extension type stores, likewise).
A column's digest is SHA-256 over the three stream digests; the table digest is SHA-256 over
`name ‖ 0x00 ‖ type ‖ 0x00 ‖ column digest` for every column. Batch sizes and
buffer layouts do not change it; any changed value, row or column does.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ContentDigest:
    """Accumulates record batches of one schema and yields the table digest.

    With `threads` > 1 the columns of a batch are hashed concurrently (hashlib and the Arrow kernels
    release the GIL) while the caller fetches the next batch; each column's streams still take the
    batches one after another, so the digest is the same.
    """

    def __init__(self, schema: pa.Schema, *, threads: int = 1) -> None:
        self._schema = schema
        self._columns = [_ColumnHash() for _ in schema]
        self.rows = 0
        self._pool = ThreadPoolExecutor(threads, "fedgate-digest") if threads > 1 else None
        self._pending: list[Future[None]] = []

    def update(self, batch: pa.RecordBatch) -> None:
        """Add the next batch of rows, in stored order."""
        self._wait()
        pairs = zip(self._columns, batch.columns, strict=True)
        if self._pool is None:
            for h, column in pairs:
                _hash_array(h, column)
        else:
            self._pending = [self._pool.submit(_hash_array, h, column) for h, column in pairs]
        self.rows += batch.num_rows

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Finish the work in flight and release the threads."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()

    def __enter__(self) -> ContentDigest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hexdigest(self) -> str:
        """The table digest, as 64 hex digits."""
        return table_digest(self._schema, self.column_digests())

    def column_digests(self) -> dict[str, bytes]:
        """Each column's digest, by name: columns hashed apart combine with `table_digest`."""
        self._wait()
        return {f.name: h.digest() for f, h in zip(self._schema, self._columns, strict=True)}


def table_digest(schema: pa.Schema, column_digests: dict[str, bytes]) -> str:
    """The table digest from its stored schema and every column's digest, as 64 hex digits."""
    top = hashlib.sha256()
    for f in schema:
        top.update(f.name.encode() + b"\x00" + str(f.type).encode() + b"\x00" + column_digests[f.name])
    return top.hexdigest()


class _ColumnHash:
    def __init__(self) -> None:
        self.valid = hashlib.sha256()
        self.lengths = hashlib.sha256()
        self.values = hashlib.sha256()

    def digest(self) -> bytes:
        return hashlib.sha256(self.valid.digest() + self.lengths.digest() + self.values.digest()).digest()


def _hash_array(h: _ColumnHash, arr: pa.Array) -> None:
    if isinstance(arr, pa.ExtensionArray):  # UUID tokens: their 16-byte storage
        arr = arr.storage
    if arr.null_count:
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        h.valid.update(valid.astype(np.uint8).tobytes())
    else:
        # Most columns have no missing value; skip building a mask of ones through Arrow and numpy.
        valid = None
        h.valid.update(b"\x01" * len(arr))
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        width = t.byte_width
        data = arr.buffers()[1]
        assert data is not None
        rows = np.frombuffer(data, dtype=np.uint8, count=len(arr) * width, offset=arr.offset * width)
        if valid is not None:
            rows = rows.reshape(-1, width).copy()
            rows[~valid] = 0
        h.values.update(rows.tobytes())
        return
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ):
        filled = pc.fill_null(arr, "" if pa.types.is_string(t) or pa.types.is_large_string(t) else b"")
        lengths = pc.binary_length(filled).to_numpy(zero_copy_only=False).astype("<i8")
        h.lengths.update(lengths.tobytes())
        offsets_type = np.int64 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else np.int32
        bufs = filled.buffers()
        offsets = np.frombuffer(
            bufs[1],
            dtype=offsets_type,
            count=len(filled) + 1,
            offset=filled.offset * np.dtype(offsets_type).itemsize,
        )
        if bufs[2] is not None and len(filled):
            h.values.update(memoryview(bufs[2])[int(offsets[0]) : int(offsets[-1])])
        return
    if pa.types.is_boolean(t):
        values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(np.uint8)
        h.values.update(values.tobytes())
        return
    if pa.types.is_dictionary(t):
        _hash_array(h, arr.dictionary_decode())
        return
    if pa.types.is_decimal(t):
        # Decimals convert to Python objects in numpy; hash their fixed-width storage instead.
        filled = pc.fill_null(arr, pa.scalar(decimal.Decimal(0), t))
        width = t.byte_width
        data = filled.buffers()[1]
        assert data is not None
        h.values.update(memoryview(data)[filled.offset * width : (filled.offset + len(filled)) * width])
        return
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t)):
        raise TypeError(f"the content digest has no canonical form for {t}")
    width = t.bit_width // 8
    storage = (
        arr.view(
            pa.int64()
            if width == 8
            else pa.int32()
            if width == 4
            else pa.int16()
            if width == 2
            else pa.int8()
        )
        if pa.types.is_temporal(t)
        else arr
    )
    filled = pc.fill_null(storage, 0)
    values = filled.to_numpy(zero_copy_only=False)
    h.values.update(values.astype(values.dtype.newbyteorder("<")).tobytes())


def digest_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> str:
    """Digest of a whole stream of batches."""
    with ContentDigest(schema) as d:
        for b in batches:
            d.update(b)
        return d.hexdigest()
