"""Pseudonym tokens and date offsets: Python and DuckDB SQL agree byte for byte."""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import pytest

from pseudonymize.pseudonym import (
    TOKEN_BYTES,
    SqlHmac,
    date_offset,
    hmac_digest,
    normalize,
    offset_from_digest,
    parse_token,
    pseudonym,
    token_spellings,
)

KEY = bytes(range(32))
SAMPLES = ["MRN-DE-00000001", " mrn-de-00000001 ", "Ünïcödé", "e\u0301", "ß", "", "日本語", "O'Brien", "ǆ"]


def sql_values(value: str, max_days: int = 180) -> tuple[str, str, int]:
    s = SqlHmac(KEY)
    h = s.hex_digest("$v")
    raw = s.hex_digest("$v", normalize_value=False)
    con = duckdb.connect()
    row = con.execute(
        f"SELECT {h}, {raw}, {s.offset(h, max_days)}", {**s.parameters(), "v": value}
    ).fetchall()
    return str(row[0][0]), str(row[0][1]), int(row[0][2])


@pytest.mark.parametrize("value", SAMPLES)
def test_sql_hmac_equals_python_hmac(value: str) -> None:
    normalized_hex, raw_hex, offset = sql_values(value)
    assert raw_hex == hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()
    assert normalized_hex == hmac_digest(KEY, value).hex()
    assert offset == date_offset(KEY, value, 180)


def test_normalization_merges_case_and_spacing_of_ascii_identifiers() -> None:
    assert pseudonym(KEY, " mrn-de-00000001 ") == pseudonym(KEY, "MRN-DE-00000001")
    assert normalize("e\u0301") == "\u00e9"
    assert normalize("ß") == "ß"  # only ASCII letters are upper-cased, in SQL and in Python alike


def test_token_is_the_uuid_spelling_of_the_first_16_hmac_bytes_and_key_dependent() -> None:
    token = pseudonym(KEY, "MRN-1")
    digest = hmac.new(KEY, b"MRN-1", hashlib.sha256).digest()
    plain = digest[:TOKEN_BYTES].hex()
    assert token == f"{plain[:8]}-{plain[8:12]}-{plain[12:16]}-{plain[16:20]}-{plain[20:]}"
    assert token != pseudonym(bytes(32), "MRN-1")


def test_sql_token_is_the_same_uuid_value_as_the_python_token() -> None:
    s = SqlHmac(KEY)
    con = duckdb.connect()
    for value in SAMPLES:
        sql = f"SELECT typeof({s.token(s.hex_digest('$v'))}), CAST({s.token(s.hex_digest('$v'))} AS VARCHAR)"
        kind, text = con.execute(sql, {**s.parameters(), "v": value}).fetchall()[0]
        assert kind == "UUID" and text == pseudonym(KEY, value)


def test_token_spellings_list_the_grouped_and_the_plain_form_of_either_spelling() -> None:
    token = pseudonym(KEY, "MRN-1")
    plain = token.replace("-", "")
    assert token_spellings([token]) == [token, plain]
    assert token_spellings([plain]) == [token, plain]
    assert token_spellings(["not-a-token"]) == ["not-a-token"]
    assert parse_token(token) == parse_token(plain) == parse_token(token.upper()) is not None
    assert parse_token("not-a-token") is None and parse_token(plain[:-1]) is None
    assert parse_token("MRN-DE-00000001") is None


def test_offset_stays_in_range_and_comes_from_bytes_the_token_does_not_show() -> None:
    offsets = {date_offset(KEY, f"MRN-{i}", 30) for i in range(2000)}
    assert min(offsets) == -30 and max(offsets) == 30
    digest = hmac_digest(KEY, "MRN-1")
    # The offset depends only on the last four bytes, which the 16-byte token never includes.
    assert offset_from_digest(bytes(28) + digest[28:], 30) == offset_from_digest(digest, 30)
    assert pseudonym(KEY, "MRN-1").replace("-", "") == digest[:16].hex()


def test_sql_text_and_repr_never_hold_the_key() -> None:
    s = SqlHmac(KEY)
    text = s.hex_digest("x") + s.offset(s.hex_digest("x"), 10) + repr(s)
    assert KEY.hex() not in text and "fg_ipad" in text
