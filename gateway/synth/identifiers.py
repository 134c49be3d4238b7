"""Medical record numbers: row numbers sent through a keyed permutation of all 8-digit numbers.

A permutation keeps MRNs unique within a site however its rows are chunked, and a keyed Feistel network makes
consecutive rows get unrelated-looking numbers (an affine map would leave an arithmetic progression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MRN_DIGITS = 8
MRN_SPACE = 10**MRN_DIGITS
_HALF_BITS = 14  # two 14-bit halves: a permutation of 2^28 numbers, walked until it lands below 10^8
_HALF_MASK = np.uint64((1 << _HALF_BITS) - 1)
_ROUNDS = 4
_MIX = np.uint64(0x9E3779B97F4A7C15)

UInts = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class MrnPermutation:
    """A keyed bijection of 0 .. 10^8 - 1 onto itself."""

    keys: tuple[int, ...]

    @classmethod
    def from_rng(cls, rng: np.random.Generator) -> MrnPermutation:
        """A permutation keyed by `_ROUNDS` draws of `rng`."""
        return cls(tuple(int(k) for k in rng.integers(0, 1 << 32, size=_ROUNDS)))

    def _feistel(self, x: UInts) -> UInts:
        left, right = x >> np.uint64(_HALF_BITS), x & _HALF_MASK
        for key in self.keys:
            # uint64 multiplication wraps, which is the mixing we want.
            mixed = ((right ^ np.uint64(key)) * _MIX) >> np.uint64(40)
            left, right = right, left ^ (mixed & _HALF_MASK)
        result: UInts = (left << np.uint64(_HALF_BITS)) | right
        return result

    def __call__(self, numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The permuted value of each number in 0 .. 10^8 - 1."""
        out = self._feistel(numbers.astype(np.uint64))
        # Cycle walking: re-encrypt values that fell outside the space until they land inside; this stays a
        # bijection of the smaller space and takes 2^28 / 10^8 ~ 2.7 tries per value on average.
        outside = np.flatnonzero(out >= MRN_SPACE)
        while outside.size:
            out[outside] = self._feistel(out[outside])
            outside = outside[out[outside] >= MRN_SPACE]
        return out.astype(np.int64)
