"""RFC 9162 §2.1 Merkle tree: hashing, compact ranges, proof shapes and proof verifiers (pure functions).

The verifiers are ported from the reference algorithm (transparency-dev/merkle `proof/verify.go`). Proof
*generation* is split in two so that storage can serve it in O(log n) reads: `inclusion_ranges` and
`consistency_ranges` name the subtree ranges a proof needs, `perfect_subtrees` breaks each range into
stored perfect subtrees `(level, index)`, and `hash_range` folds the fetched hashes back into range hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from audit.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"
# Blocks of up to 2^16 leaves are reduced level by level, which is much faster in Python than leaf by leaf.
_MAX_BLOCK_LEVEL = 16

NodeKey = tuple[int, int]  # (level, index at that level); level 0 are the leaves


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of a leaf (an entry's stored bytes)."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): the hash of an inner node."""
    return hashlib.sha256(_NODE + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly less than n (n ≥ 2): where RFC 9162 splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """Root of a perfect subtree whose leaf (or node) hashes are given; len(hashes) is a power of two."""
    level = list(hashes)
    if not level or len(level) & (len(level) - 1):
        raise ValueError(f"perfect_root needs a power-of-two number of hashes, got {len(level)}")
    sha = hashlib.sha256
    while len(level) > 1:
        it = iter(level)
        level = [sha(_NODE + a + b).digest() for a, b in zip(it, it, strict=True)]
    return level[0]


@dataclass
class CompactRange:
    """The perfect subtrees covering leaves [0, size): enough to append leaves and compute the root."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)  # left to right, i.e. by decreasing level

    @classmethod
    def from_state(cls, size: int, packed: bytes) -> CompactRange:
        """Rebuild from `pack()` output; one hash per set bit of size."""
        if len(packed) != HASH_SIZE * size.bit_count():
            raise ValueError(f"compact range of size {size} needs {size.bit_count()} hashes")
        hashes = [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)]
        return cls(size, hashes)

    def pack(self) -> bytes:
        """The hashes concatenated, for storage next to the size."""
        return b"".join(self.hashes)

    def copy(self) -> CompactRange:
        """An independent copy (the writer rolls back to it when a transaction fails)."""
        return CompactRange(self.size, list(self.hashes))

    def _levels(self) -> list[int]:
        return [i for i in range(self.size.bit_length() - 1, -1, -1) if self.size >> i & 1]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; returns the inner nodes (level ≥ 1, index, hash) it completes."""
        created: list[tuple[int, int, bytes]] = []
        h, level, index, size = leaf, 0, self.size, self.size
        while size & 1:
            h = node_hash(self.hashes.pop(), h)
            level += 1
            index >>= 1
            size >>= 1
            created.append((level, index, h))
        self.hashes.append(h)
        self.size += 1
        return created

    def push_subtree(self, level: int, h: bytes) -> None:
        """Add a whole perfect subtree of 2^level leaves; size must be a multiple of 2^level."""
        if self.size % (1 << level):
            raise ValueError(f"a subtree of level {level} cannot start at leaf {self.size}")
        size = self.size >> level
        while size & 1:
            h = node_hash(self.hashes.pop(), h)
            size >>= 1
        self.hashes.append(h)
        self.size += 1 << level

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Add many leaf hashes, reducing aligned blocks level by level (fast path for verifiers)."""
        i, n = 0, len(leaves)
        while i < n:
            level = 0
            while level < _MAX_BLOCK_LEVEL and self.size % (2 << level) == 0 and i + (2 << level) <= n:
                level += 1
            if level == 0:
                self.append(leaves[i])
                i += 1
            else:
                self.push_subtree(level, perfect_root(leaves[i : i + (1 << level)]))
                i += 1 << level

    def root(self) -> bytes:
        """The RFC 9162 root of leaves [0, size)."""
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root of a tree with the given leaf hashes."""
    cr = CompactRange()
    cr.extend(leaves)
    return cr.root()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges [start, end) whose hashes form the inclusion proof of `index` in a tree of `size`."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not below size {size}")
    out: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = split_point(hi - lo)
        if m < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the RFC 9162 consistency proof from size `old` to size `new`."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                out.append((lo, hi))
            break
        k = split_point(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    out.reverse()
    return out


def perfect_subtrees(start: int, end: int) -> list[NodeKey]:
    """Break [start, end) into the perfect subtrees RFC 9162 builds it from, left to right."""
    out: list[NodeKey] = []
    a = start
    while a < end:
        level = 0
        while a % (2 << level) == 0 and a + (2 << level) <= end:
            level += 1
        out.append((level, a >> level))
        a += 1 << level
    return out


def hash_range(start: int, end: int, nodes: Mapping[NodeKey, bytes]) -> bytes:
    """The hash of leaves [start, end) from the stored hashes of its perfect subtrees."""
    keys = perfect_subtrees(start, end)
    h = nodes[keys[-1]]
    for key in reversed(keys[:-1]):
        h = node_hash(nodes[key], h)
    return h


def _decomp_inclusion(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1 == 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def _check_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} has {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof implies; raises ProofError when the proof has the wrong shape."""
    if index >= size or index < 0:
        raise ProofError(f"index is beyond size: {index} >= {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash has {len(leaf)} bytes, not {HASH_SIZE}")
    inner, border = _decomp_inclusion(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"inclusion proof has wrong size: expected {inner + border}, got {len(proof)}")
    _check_hashes(proof)
    h = _chain_inner(leaf, proof[:inner], index)
    return _chain_border_right(h, proof[inner:])


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that `leaf` is at `index` in the tree of `size` with `root`; raises ProofError if not."""
    got = root_from_inclusion(index, size, leaf, proof)
    if got != root:
        raise ProofError(f"inclusion proof gives root {got.hex()}, expected {root.hex()}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree (size2, root2) extends (size1, root1); raises ProofError if not."""
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        # A proof from the empty tree proves nothing; the witness handles old size 0 on its own.
        raise ProofError("consistency from an empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("size1 = size2, but the proof is not empty")
        if root1 != root2:
            raise ProofError(f"equal sizes but different roots: {root1.hex()} vs {root2.hex()}")
        return
    if not proof:
        raise ProofError("empty consistency proof between different sizes")
    _check_hashes(proof)
    inner, border = _decomp_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    # The proof starts with the root of the subtree of size 2^shift, unless size1 is that subtree.
    if size1 == 1 << shift:
        seed, rest = root1, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        expected = inner + border + (0 if size1 == 1 << shift else 1)
        raise ProofError(f"consistency proof has wrong size: expected {expected}, got {len(proof)}")
    mask = (size1 - 1) >> shift
    h1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if h1 != root1:
        raise ProofError(f"consistency proof gives old root {h1.hex()}, expected {root1.hex()}")
    h2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    if h2 != root2:
        raise ProofError(f"consistency proof gives new root {h2.hex()}, expected {root2.hex()}")
