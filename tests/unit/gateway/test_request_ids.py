"""Request ids: random version-4 UUIDs, unique across threads and across a fork, drawn from the OS's CSPRNG
in batches (each read gives up the GIL, which a busy event loop must then wait to take back)."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

import gateway.pipeline as pipeline
from gateway.pipeline import _RandomIds, new_request_id


def test_an_id_is_a_version_4_uuid_in_hex() -> None:
    request_id = new_request_id()
    assert len(request_id) == 32
    parsed = uuid.UUID(hex=request_id)
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122
    assert parsed.hex == request_id


def test_ids_are_unique_across_batches_and_threads() -> None:
    ids = _RandomIds()
    seen: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(ids.next() for _ in range(3 * _RandomIds.BATCH))

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in seen for i in out]
    assert len(everything) == 12 * _RandomIds.BATCH
    assert len(set(everything)) == len(everything)


def test_the_csprng_is_read_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(pipeline.os, "urandom", counted)
    ids = _RandomIds()
    for _ in range(2 * _RandomIds.BATCH + 1):
        ids.next()
    assert reads == [16 * _RandomIds.BATCH] * 3


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids = _RandomIds()
    ids.next()  # the parent holds a batch with 255 ids still to give
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, "".join(ids.next() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(child, 0)
    child_ids = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent_ids = {ids.next() for _ in range(8)}
    assert len(child_ids) == 8
    assert not child_ids & parent_ids


def test_a_request_without_a_canonical_form_is_refused_not_failed() -> None:
    from gateway.pipeline import hashed
    from gateway.refusal import Refusal

    class Unhashable:
        def query_hash(self) -> str:
            import rfc8785

            return rfc8785.dumps(2**53).hex()

    with pytest.raises(Refusal) as refused:
        hashed(Unhashable())
    assert refused.value.kind == "bad_request" and not refused.value.audited  # the app audits it
    (reason,) = refused.value.reasons
    assert reason == "a value of the query cannot be written as canonical JSON (IntegerDomainError)"
