"""Property tests: proofs from stored subtrees always verify and never survive a change; entry bytes are
RFC 8785 for any payload; signed notes verify only unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.entry import PreparedEvent, canonical, entry_bytes
from audit.errors import NoteError, ProofError
from audit.merkle import (
    CompactRange,
    consistency_ranges,
    hash_range,
    inclusion_ranges,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit.notes import Note, parse_note, parse_verifier_key, sign_note, verifier_key_text, verify_note

LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(300)]


def _store(n: int) -> tuple[dict[tuple[int, int], bytes], list[bytes]]:
    nodes: dict[tuple[int, int], bytes] = {}
    roots = []
    cr = CompactRange()
    for i, h in enumerate(LEAVES[:n]):
        nodes[(0, i)] = h
        nodes.update({(lv, j): x for lv, j, x in cr.append(h)})
        roots.append(cr.root())
    return nodes, roots


NODES, ROOTS = _store(300)  # ROOTS[n-1] is the root of the first n leaves


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.data())
def test_inclusion_proofs_verify_and_any_flipped_bit_fails(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = [hash_range(a, b, NODES) for a, b in inclusion_ranges(index, size)]
    verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size - 1])
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[i] = bytes(b ^ (1 << (bit % 8)) if k == bit // 8 else b for k, b in enumerate(bad[i]))
        with pytest.raises(ProofError):
            verify_inclusion(index, size, LEAVES[index], bad, ROOTS[size - 1])
    other = data.draw(st.integers(0, size - 1))
    if other != index:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, LEAVES[other], proof, ROOTS[size - 1])


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 300).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))), st.data())
def test_consistency_proofs_verify_and_any_change_fails(case: tuple[int, int], data: st.DataObject) -> None:
    old, new = case
    proof = [hash_range(a, b, NODES) for a, b in consistency_ranges(old, new)]
    verify_consistency(old, new, proof, ROOTS[old - 1], ROOTS[new - 1])
    i = data.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 0x80]) + bad[i][1:]
    with pytest.raises(ProofError):
        verify_consistency(old, new, bad, ROOTS[old - 1], ROOTS[new - 1])
    with pytest.raises(ProofError):
        verify_consistency(old, new, proof[:i] + proof[i + 1 :], ROOTS[old - 1], ROOTS[new - 1])
    wrong_old = data.draw(st.integers(1, new - 1).filter(lambda s: s != old))
    with pytest.raises(ProofError):
        verify_consistency(old, new, proof, ROOTS[wrong_old - 1], ROOTS[new - 1])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(-(2.0**53) + 1, 2.0**53 - 1)  # beyond, a float prints as an integer no reader can hold
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    actor=st.none() | st.fixed_dictionaries({"org": st.text(min_size=1), "sub": st.text(min_size=1)}),
    request_id=st.none() | st.text(max_size=20),
    index=st.integers(0, 2**53 - 1),
    origin=st.text(min_size=1, max_size=30),
)
def test_spliced_entries_are_exactly_rfc8785(
    payload: dict[str, Any], actor: dict[str, str] | None, request_id: str | None, index: int, origin: str
) -> None:
    event = PreparedEvent(
        "t.x", canonical("t.x"), canonical(actor), canonical(request_id), canonical(payload)
    )
    data = entry_bytes(event, index=index, origin_json=canonical(origin), prev=b"\x05" * 32, time="T")
    assert data == rfc8785.dumps(json.loads(data))
    assert b"\n" not in data  # one entry per export line


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(st.characters(blacklist_categories=["Cs"], min_codepoint=0x20).filter(lambda c: c != "\x7f"),
                 min_size=1, max_size=80),
    data=st.data(),
)  # fmt: skip
def test_signed_notes_verify_only_unchanged(text: str, data: st.DataObject) -> None:
    key = Ed25519PrivateKey.generate()
    vkey = parse_verifier_key(verifier_key_text("log.example/p", key.public_key()))
    body = text + "\n"
    note = Note(body, (sign_note(body, "log.example/p", key),)).render()
    assert verify_note(note, [vkey]).note.text == body
    pos = data.draw(st.integers(0, len(text) - 1))
    changed = body[:pos] + ("a" if body[pos] != "a" else "b") + body[pos + 1 :]
    with pytest.raises(NoteError):
        verify_note(Note(changed, parse_note(note).signatures).render(), [vkey])
