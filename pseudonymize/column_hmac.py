"""Keyed pseudonyms for whole Arrow columns: the ingest's bulk HMAC, in worker processes.

DuckDB has no HMAC, and its SQL spelling of one costs four SHA-256 compressions and two hex round trips
per value. Here each worker keeps the SHA-256 states after the key's inner and outer pad blocks, so one
value costs two compressions (hashlib, SHA-NI where the CPU has it), and the batches of a stream are
spread over processes, not threads, because hashlib holds the GIL for short messages. The bytes are those
of `pseudonym.hmac_digest`: the same normalization, the same token, the same day offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import queue
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudonymize.pseudonym import TOKEN_BYTES, normalize

_BLOCK = 64

#: the Arrow types whose text is the same in Arrow and in DuckDB's CAST(… AS VARCHAR)
HASHABLE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)


def is_hashable(t: pa.DataType) -> bool:
    """True when a column of this type can be pseudonymized here rather than in SQL."""
    return any(check(t) for check in HASHABLE)


@dataclass(frozen=True)
class HashedColumn:
    """What a worker returns for one column of one batch: tokens and, when asked, day offsets."""

    tokens: bytes  # rows * TOKEN_BYTES: the first bytes of each HMAC
    offsets: np.ndarray | None  # int32 day offsets


def _short_message_sha256() -> Callable[[bytes], Any]:
    """SHA-256 for one-block messages: CPython's own implementation where it has one.

    OpenSSL's (hashlib's default) spends most of a 20-byte hash setting up its context: measured here, a
    copy-update-digest pair of HMAC halves costs 1.5 µs through it and 1.0 µs through CPython's built-in
    module. Both compute FIPS 180-4 SHA-256; the tests compare every path with `hmac.new`.
    """
    for name in ("_sha2", "_sha256"):  # CPython 3.12+ (HACL*), 3.11
        with contextlib.suppress(ImportError, AttributeError):
            constructor: Callable[[bytes], Any] = importlib.import_module(name).sha256
            return constructor
    return hashlib.sha256


_sha256 = _short_message_sha256()


class _Keyed:
    """The SHA-256 states after the inner and outer pad blocks of one key (RFC 2104)."""

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            raise ValueError("HMAC keys longer than one SHA-256 block are not used here")
        padded = key.ljust(_BLOCK, b"\x00")
        self.inner = _sha256(bytes(b ^ 0x36 for b in padded))
        self.outer = _sha256(bytes(b ^ 0x5C for b in padded))

    def digests(self, values: list[bytes]) -> np.ndarray:
        """The 32-byte HMACs of the values as a (rows, 32) array."""
        inner, outer = self.inner.copy, self.outer.copy
        # The loop runs once per value: a growing bytearray and no branch keep it 8% shorter than a
        # list of digests joined at the end.
        out = bytearray()
        extend = out.extend
        for value in values:
            i = inner()
            i.update(value)
            o = outer()
            o.update(i.digest())
            extend(o.digest())
        return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32)


def _normalized(array: pa.Array) -> list[bytes]:
    """The values as `pseudonym.normalize` forms them, UTF-8 encoded; empty for a missing value (its
    token is masked out afterwards)."""
    if pa.types.is_integer(array.type):
        array = array.cast(pa.string())
    if pc.all(pc.string_is_ascii(array)).as_py() is not False:
        # ASCII text is already NFC; trimming spaces and upper-casing ASCII letters is all that is left.
        normalized = pc.ascii_upper(pc.utf8_trim(array, " ")).cast(pa.binary())
        fast: list[bytes] = pc.fill_null(normalized, b"").to_pylist()
        return fast
    return [b"" if v is None else normalize(v).encode("utf-8") for v in array.to_pylist()]


def hash_column(keyed: _Keyed, array: pa.Array, max_days: int | None) -> HashedColumn:
    """Tokens (and day offsets in [-max_days, max_days] when max_days is given) for one column."""
    digests = keyed.digests(_normalized(array))
    tokens = np.ascontiguousarray(digests[:, :TOKEN_BYTES]).tobytes()
    offsets = None
    if max_days is not None:
        # pseudonym.offset_from_digest: the last four bytes, big-endian, modulo the span.
        tail = np.ascontiguousarray(digests[:, 28:32]).view(">u4").ravel().astype(np.int64)
        offsets = (tail % (2 * max_days + 1) - max_days).astype(np.int32)
    return HashedColumn(tokens, offsets)


def token_array(array: pa.Array, hashed: HashedColumn) -> pa.Array:
    """The token column for `array` as Arrow UUID values (DuckDB reads them as its UUID type), missing
    where the value is missing."""
    validity = None
    if array.null_count:
        validity = pc.is_valid(array).buffers()[1]
    storage = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(TOKEN_BYTES), len(array), [validity, pa.py_buffer(hashed.tokens)]
    )
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def offset_array(array: pa.Array, hashed: HashedColumn) -> pa.Array:
    """The day-offset column for `array`, missing where the value is missing."""
    assert hashed.offsets is not None, "offsets were asked for"
    return _mask(array, pa.array(hashed.offsets, pa.int32()))


def _mask(source: pa.Array, derived: pa.Array) -> pa.Array:
    if source.null_count == 0:
        return derived
    return pc.if_else(pc.is_valid(source), derived, pa.scalar(None, derived.type))


# -- worker processes -------------------------------------------------------------------------------------
#
# A worker is `python -m pseudonymize.column_hmac`, talking over its stdin and stdout: first the key (one
# length byte, then the key), then requests, each answered before the next is sent. A request is the
# length of an Arrow IPC record batch (8 bytes, little-endian), max_days (4 bytes, signed; -1 for none)
# and the batch, one string column; the answer is the rows (8 bytes), the tokens and, with max_days, the
# offsets as int32. A plain subprocess rather than multiprocessing: spawn would re-run the caller's main
# module in every worker, and forking a process whose DuckDB threads hold locks is unsafe.

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_REQUEST = struct.Struct("<qi")
_ROWS = struct.Struct("<q")
_VALUES = pa.schema([("v", pa.string())])


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the peer closed the pipe")
    return data


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    keyed = _Keyed(_read_exactly(stdin, _read_exactly(stdin, 1)[0]))
    while True:
        header = stdin.read(_REQUEST.size)
        if not header:
            return
        size, max_days = _REQUEST.unpack(header)
        batch = pa.ipc.read_record_batch(pa.py_buffer(_read_exactly(stdin, size)), _VALUES)
        result = hash_column(keyed, batch.column(0), max_days if max_days >= 0 else None)
        stdout.write(_ROWS.pack(batch.num_rows))
        stdout.write(result.tokens)
        if result.offsets is not None:
            stdout.write(result.offsets.astype("<i4").tobytes())
        stdout.flush()


class _Worker:
    def __init__(self, key: bytes) -> None:
        # The worker imports this very package, wherever the parent found it.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pseudonymize.column_hmac"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A traceback could quote a value; the parent reports a failed worker by its kind only.
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        try:
            self.stdin.write(bytes([len(key)]) + key)
            self.stdin.flush()
        except BaseException:
            self.close()  # a worker that died at start is still reaped, not left to the garbage collector
            raise

    def hash(self, array: pa.Array, max_days: int | None) -> HashedColumn:
        payload = pa.record_batch([array], schema=_VALUES).serialize()
        self.stdin.write(_REQUEST.pack(payload.size, -1 if max_days is None else max_days))
        self.stdin.write(payload)
        self.stdin.flush()
        (rows,) = _ROWS.unpack(_read_exactly(self.stdout, _ROWS.size))
        if rows != len(array):
            raise EOFError("the worker answered for another batch")
        tokens = _read_exactly(self.stdout, rows * TOKEN_BYTES)
        offsets = None
        if max_days is not None:
            offsets = np.frombuffer(_read_exactly(self.stdout, rows * 4), dtype="<i4").astype(np.int32)
        return HashedColumn(tokens, offsets)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stdout.close()


class ColumnHmac:
    """HMAC-SHA256 of whole columns under one derived key, inline or in `workers` processes.

    Each worker handles one column at a time; a thread per worker feeds it, so `submit` returns at once
    and results come back in any order while the caller keeps them in its own.
    """

    def __init__(self, key: bytes) -> None:
        self._keyed = _Keyed(key)
        self._key = key
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._threads: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"ColumnHmac(workers={self.workers})"

    @property
    def workers(self) -> int:
        """How many worker processes take the work (0 while hashing inline)."""
        return len(self._workers) if self._threads is not None else 0

    def spawn_workers(self, workers: int) -> None:
        """Start `workers` processes that take no work yet: they load (a fifth of a second each) while
        the caller still hashes inline (no-op below 1 or when already spawned)."""
        if self._workers or workers < 1:
            return
        for _ in range(workers):
            worker = _Worker(self._key)
            self._workers.append(worker)
            self._idle.put(worker)

    def start_workers(self, workers: int) -> None:
        """Hash in `workers` processes from now on, spawning them unless `spawn_workers` did (no-op below
        1 or when already started)."""
        self.spawn_workers(workers)
        if self._workers and self._threads is None:
            self._threads = ThreadPoolExecutor(len(self._workers), "fedgate-hmac")

    def _on_worker(self, array: pa.Array, max_days: int | None) -> HashedColumn:
        worker = self._idle.get()
        if worker is None:
            self._idle.put(None)
            raise EOFError("a pseudonym worker failed")
        try:
            result = worker.hash(array, max_days)
        except BaseException:
            # A worker that failed mid-answer is out of step; the others stop taking work too.
            worker.close()
            self._idle.put(None)
            raise
        self._idle.put(worker)
        return result

    def submit(self, array: pa.Array, max_days: int | None = None) -> Future[HashedColumn]:
        """Hash one column of one batch; the future holds its tokens (and offsets)."""
        if pa.types.is_integer(array.type) or pa.types.is_large_string(array.type):
            array = array.cast(pa.string())
        if self._threads is not None:
            return self._threads.submit(self._on_worker, array, max_days)
        done: Future[HashedColumn] = Future()
        try:
            done.set_result(hash_column(self._keyed, array, max_days))
        except Exception as exc:  # noqa: BLE001 - handed to whoever reads the future, as the workers' are
            done.set_exception(exc)
        return done

    def close(self) -> None:
        """Stop the workers (pending work is cancelled)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> ColumnHmac:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
