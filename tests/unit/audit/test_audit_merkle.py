"""Merkle tree: proof generation from stored subtrees, every proof corruption rejected, second preimages."""

from __future__ import annotations

import hashlib

import pytest

from audit.errors import ProofError
from audit.merkle import (
    CompactRange,
    consistency_ranges,
    hash_range,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    perfect_subtrees,
    root_of,
    split_point,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [leaf_hash(str(i).encode()) for i in range(70)]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written from the definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = split_point(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, from the definition."""
    n = len(leaves)
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF, from the definition."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = split_point(n)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def stored_nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    """What the writer stores: leaves plus every completed inner node."""
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    cr = CompactRange()
    for h in leaves:
        nodes.update({(level, i): x for level, i, x in cr.append(h)})
    return nodes


def from_store(ranges: list[tuple[int, int]], nodes: dict[tuple[int, int], bytes]) -> list[bytes]:
    return [hash_range(a, b, nodes) for a, b in ranges]


def test_generated_proofs_match_the_rfc_definitions_and_verify() -> None:
    nodes = stored_nodes(LEAVES)
    for size in range(1, 41):
        root = mth(LEAVES[:size])
        assert root_of(LEAVES[:size]) == root
        assert hash_range(0, size, nodes) == root
        for index in range(size):
            proof = from_store(inclusion_ranges(index, size), nodes)
            assert proof == path(index, LEAVES[:size])
            verify_inclusion(index, size, LEAVES[index], proof, root)
        for old in range(1, size + 1):
            proof = from_store(consistency_ranges(old, size), nodes) if old < size else []
            assert proof == (subproof(old, LEAVES[:size], True) if old < size else [])
            verify_consistency(old, size, proof, mth(LEAVES[:old]), root)


def test_compact_range_extend_equals_leaf_by_leaf_append() -> None:
    for start in (0, 1, 3, 8, 13):
        a, b = CompactRange(), CompactRange()
        for h in LEAVES[:start]:
            a.append(h)
            b.append(h)
        a.extend(LEAVES[start:])
        for h in LEAVES[start:]:
            b.append(h)
        assert a == b
        assert a.root() == mth(LEAVES)
    restored = CompactRange.from_state(a.size, a.pack())
    assert restored.root() == a.root()


def test_perfect_subtrees_are_aligned_and_cover_the_range() -> None:
    assert perfect_subtrees(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert perfect_subtrees(8, 16) == [(3, 1)]
    for end in range(1, 70):
        covered = sum(1 << level for level, _ in perfect_subtrees(0, end))
        assert covered == end
        assert len(perfect_subtrees(0, end)) == end.bit_count()


def test_proof_reads_are_logarithmic_at_a_million_leaves() -> None:
    size = 1_000_000
    keys = {k for a, b in inclusion_ranges(123_457, size) for k in perfect_subtrees(a, b)}
    assert len(keys) <= 2 * size.bit_length()
    keys = {k for a, b in consistency_ranges(333_333, size) for k in perfect_subtrees(a, b)}
    assert len(keys) <= 3 * size.bit_length()


def _flip(h: bytes, bit: int = 0) -> bytes:
    return h[:0] + bytes([h[0] ^ (1 << bit)]) + h[1:]


@pytest.mark.parametrize(("index", "size"), [(0, 1), (0, 2), (5, 8), (6, 7), (12, 13), (31, 64), (40, 70)])
def test_every_corruption_of_an_inclusion_proof_is_rejected(index: int, size: int) -> None:
    leaves = LEAVES[:size]
    root, proof, leaf = mth(leaves), path(index, leaves), leaves[index]
    verify_inclusion(index, size, leaf, proof, root)
    bad: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (index, size, _flip(leaf), proof, root),
        (index, size, leaf, proof, _flip(root)),
        (index, size, leaf, [*proof, root], root),
        (index, size, leaf, [root, *proof], root),
        (index, size, leaf, proof, root + b"\x00"),
        (index, size, leaf[:31], proof, root),
        (index, size, leaf, proof, b""),
        (index + 1, size, leaf, proof, root),
        (index ^ 2, size, leaf, proof, root),
        (index, size * 2, leaf, proof, root),
        (size, size, leaf, proof, root),
        (-1, size, leaf, proof, root),
    ]
    if index > 0:
        bad.append((index - 1, size, leaf, proof, root))
    for i in range(len(proof)):
        for bit in (0, 7):
            bad.append((index, size, leaf, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], root))
        bad.append((index, size, leaf, proof[:i] + proof[i + 1 :], root))
        bad.append((index, size, leaf, [*proof[:i], proof[i][:31], *proof[i + 1 :]], root))
    # (A neighbouring size can share a proof's shape, so size±1 is not a corruption here; the public
    # vectors cover the size changes that must fail.)
    for args in bad:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


@pytest.mark.parametrize(
    ("old", "new"), [(1, 2), (1, 8), (3, 7), (4, 8), (6, 8), (7, 13), (33, 70), (64, 70)]
)
def test_every_corruption_of_a_consistency_proof_is_rejected(old: int, new: int) -> None:
    r1, r2 = mth(LEAVES[:old]), mth(LEAVES[:new])
    proof = subproof(old, LEAVES[:new], True)
    verify_consistency(old, new, proof, r1, r2)
    bad: list[tuple[int, int, list[bytes], bytes, bytes]] = [
        (old, new, proof, r2, r1),
        (old, new, proof, _flip(r1), r2),
        (old, new, proof, r1, _flip(r2)),
        (old, new, [], r1, r2),
        (old, new, [*proof, r1], r1, r2),
        (old, new, [r1, *proof], r1, r2),
        (new, old, proof, r2, r1),
        (0, new, proof, r1, r2),
        (0, new, [], r1, r2),
        (old, new, proof, r1 + b"\x00", r2),
        (old, old, proof, r1, r1),
    ]
    if old > 1:
        bad.append((old - 1, new, proof, r1, r2))
    bad.append((old, new * 2, proof, r1, r2))
    for i in range(len(proof)):
        bad.append((old, new, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]], r1, r2))
        bad.append((old, new, proof[:i] + proof[i + 1 :], r1, r2))
    for args in bad:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_a_64_byte_leaf_equal_to_two_child_hashes_is_not_an_inner_node() -> None:
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    root = node_hash(left, right)
    forged = left + right  # entry bytes equal to the inner node's children
    # Without the 0x00/0x01 prefixes, hashing this leaf would give the inner node's hash.
    assert hashlib.sha256(b"\x01" + forged).digest() == root
    assert leaf_hash(forged) != root
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, leaf_hash(forged), [], root)
    # Nor can the inner node's preimage pose as a leaf one level up in a bigger tree.
    tree = [left, right, leaf_hash(b"c"), leaf_hash(b"d")]
    big_root = mth(tree)
    with pytest.raises(ProofError):
        verify_inclusion(0, 2, leaf_hash(forged), [mth(tree[2:])], big_root)
