"""Keyed pseudonyms and per-patient date offsets: HMAC-SHA256 in Python and the same bytes in DuckDB SQL.

DuckDB has no HMAC function, so the SQL form spells out RFC 2104 with its SHA-256:
H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m)). The padded keys travel as bound parameters, never as SQL text, so no
error message or query log can show them. Both forms normalize the value the same way first: Unicode NFC,
surrounding spaces trimmed, ASCII letters upper-cased.
"""

from __future__ import annotations

import hashlib
import hmac
import string
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

#: 128 bits of the HMAC: collision-free at any realistic cohort size, and the width of DuckDB's UUID type,
#: which stores a token as a fixed 16-byte value (no string compression, 16-byte hashing in GROUP BY and
#: DISTINCT). The token's text is that type's: 32 lowercase hex digits grouped 8-4-4-4-12. The bits are
#: HMAC output, not an RFC 9562 UUID: the version and variant fields are not set.
TOKEN_BYTES = 16
_BLOCK = 64
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
_ASCII_UPPER = str.maketrans(_LOWER, _UPPER)


def normalize(value: str) -> str:
    """The form of an identifier that is hashed: NFC, spaces trimmed, ASCII letters upper-cased."""
    return unicodedata.normalize("NFC", value).strip(" ").translate(_ASCII_UPPER)


def hmac_digest(key: bytes, value: str) -> bytes:
    """HMAC-SHA256 of the normalized value."""
    return hmac.new(key, normalize(value).encode("utf-8"), hashlib.sha256).digest()


def token_text(digest: bytes) -> str:
    """The token of an HMAC digest as text: its first 16 bytes in the UUID spelling DuckDB stores."""
    return str(uuid.UUID(bytes=digest[:TOKEN_BYTES]))


def pseudonym(key: bytes, value: str) -> str:
    """The fixed-length pseudonym token of an identifier under one derived key."""
    return token_text(hmac_digest(key, value))


def parse_token(text: str) -> uuid.UUID | None:
    """The 128-bit value a token spells, grouped or as 32 plain hex digits; None for text that is no token."""
    try:
        return uuid.UUID(hex=text)
    except ValueError:
        return None


def canonical_token(text: str) -> str:
    """A token in the spelling `pseudonym` writes (grouped, lower case); text that is no token as it is."""
    parsed = parse_token(text)
    return text if parsed is None else str(parsed)


def token_spellings(tokens: Iterable[str]) -> list[str]:
    """Every token in both spellings a store can hold: grouped (36 characters) and plain 32 hex digits.

    Stores written before tokens became 16-byte UUID values hold the plain form as text; a withdrawal
    recorded under one spelling must exclude the patient under either. Text that is no token stays as
    it is: it can only match itself."""
    out: list[str] = []
    for token in tokens:
        parsed = parse_token(token)
        out += [token] if parsed is None else [str(parsed), parsed.hex]
    return out


def offset_from_digest(digest: bytes, max_days: int) -> int:
    """A day offset in [-max_days, +max_days] taken from the digest's last four bytes.

    The token uses the first 16 bytes and the offset the last 4, so a token does not reveal its offset.
    """
    return int.from_bytes(digest[28:32], "big") % (2 * max_days + 1) - max_days


def date_offset(key: bytes, patient_id: str, max_days: int) -> int:
    """The stable per-patient date shift in days."""
    return offset_from_digest(hmac_digest(key, patient_id), max_days)


@dataclass(frozen=True)
class SqlHmac:
    """HMAC-SHA256 as DuckDB SQL over bound parameters `$<name>_ipad` and `$<name>_opad`."""

    key: bytes
    name: str = "fg"

    def __post_init__(self) -> None:
        if len(self.key) > _BLOCK:
            raise ValueError("HMAC keys longer than one SHA-256 block are not used here")

    def __repr__(self) -> str:
        return f"SqlHmac(name={self.name!r})"

    def parameters(self) -> dict[str, bytes]:
        """The padded keys, to bind as statement parameters."""
        padded = self.key.ljust(_BLOCK, b"\x00")
        return {
            f"{self.name}_ipad": bytes(b ^ 0x36 for b in padded),
            f"{self.name}_opad": bytes(b ^ 0x5C for b in padded),
        }

    @staticmethod
    def normalized(expr: str) -> str:
        """SQL for `normalize(expr)`; NULL stays NULL.

        Pure-ASCII text (byte length equals character length) is already NFC, and `upper` on it is ASCII
        upper-casing: that path skips normalization and runs twenty times faster than `translate`, which
        handles the rare non-ASCII value.
        """
        x = f"CAST({expr} AS VARCHAR)"
        slow = f"translate(trim(nfc_normalize({x}), ' '), '{_LOWER}', '{_UPPER}')"
        return f"CASE WHEN strlen({x}) = length({x}) THEN upper(trim({x}, ' ')) ELSE {slow} END"

    def hex_digest(self, expr: str, *, normalize_value: bool = True) -> str:
        """SQL for the 64-hex-digit HMAC of `expr` (normalized unless told otherwise)."""
        value = self.normalized(expr) if normalize_value else f"CAST({expr} AS VARCHAR)"
        return f"sha256(${self.name}_opad || unhex(sha256(${self.name}_ipad || encode({value}))))"

    @staticmethod
    def token(hex_digest_expr: str) -> str:
        """SQL for the pseudonym token (a UUID value) of a hex digest expression."""
        return f"CAST(substr({hex_digest_expr}, 1, {2 * TOKEN_BYTES}) AS UUID)"

    @staticmethod
    def offset(hex_digest_expr: str, max_days: int) -> str:
        """SQL for the day offset of a hex digest expression (equals `offset_from_digest`)."""
        span = 2 * max_days + 1
        return f"(CAST(('0x' || substr({hex_digest_expr}, 57, 8)) AS UBIGINT) % {span})::INTEGER - {max_days}"
