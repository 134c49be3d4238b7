"""Vectorized builders of Arrow string columns: no per-row Python, so millions of rows take milliseconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

IntArray = npt.NDArray[np.int64]


def _fixed_width(chars: npt.NDArray[np.uint8]) -> pa.StringArray:
    """Wrap an (n, width) matrix of ASCII bytes as n strings without copying them one by one."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = np.ascontiguousarray(chars)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def zero_padded(prefix: str, numbers: IntArray, digits: int) -> pa.StringArray:
    """`prefix` followed by each number zero-padded to `digits` digits, e.g. "MRN-DE-" + "00001234"."""
    raw = prefix.encode("ascii")
    chars = np.empty((len(numbers), len(raw) + digits), dtype=np.uint8)
    chars[:, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    rest = numbers.astype(np.int64, copy=True)
    for pos in range(len(raw) + digits - 1, len(raw) - 1, -1):
        chars[:, pos] = 48 + rest % 10
        rest //= 10
    return _fixed_width(chars)


def from_template(
    rng: np.random.Generator, template: str, alphabets: dict[str, str], n: int
) -> pa.StringArray:
    """n random strings shaped like `template`: a character named in `alphabets` is drawn from its
    alphabet, any other character is copied as is ("DDD-DDDD" with D=digits gives "123-4567")."""
    chars = np.empty((n, len(template)), dtype=np.uint8)
    for pos, symbol in enumerate(template):
        alphabet = alphabets.get(symbol)
        if alphabet is None:
            chars[:, pos] = ord(symbol)
            continue
        table = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
        chars[:, pos] = table[rng.integers(0, len(table), size=n)]
    return _fixed_width(chars)


def pick(values: Sequence[str], indices: npt.NDArray[np.integer]) -> pa.StringArray:
    """values[i] for every index, gathered in Arrow (no Python string per row)."""
    return pa.array(list(values), type=pa.string()).take(pa.array(indices))


def concat(left: pa.StringArray, right: pa.StringArray, separator: str = "") -> pa.StringArray:
    """Element-wise left + separator + right."""
    joined: pa.StringArray = pc.binary_join_element_wise(left, right, separator)
    return joined
