"""The consent_filter obligation as a SQL row predicate, with exactly `ConsentFilter.admits` semantics.

A row stays when the withdrawn column IS FALSE (NULL is withdrawn), the consent value is present and not
empty, every code of the value split on the separator is an allowed code, and every `require_any_of`
group shares a code with it. An empty piece from a doubled or stray separator is a code no list holds,
so such a row is excluded, as in the reference. Codes are bound parameters, never SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from gateway.decision.models import ConsentFilter
from gateway.query.errors import UnsupportedStore
from pseudonymize.pseudonym import token_spellings

_TEXT_ARRAY = postgresql.ARRAY(sa.Text())
DIALECTS = ("duckdb", "postgresql")


def consent_predicate(
    rule: ConsentFilter, consent: sa.ColumnElement[Any], withdrawn: sa.ColumnElement[Any], dialect_name: str
) -> sa.ColumnElement[bool]:
    """The predicate for the `duckdb` or `postgresql` dialect; UnsupportedStore for any other."""
    if dialect_name not in DIALECTS:
        raise UnsupportedStore(
            f"the store's SQL dialect {dialect_name!r} has no consent filter; use duckdb or postgresql"
        )
    # The split always yields at least one piece, so an empty list admits no row; an empty group too.
    if not rule.allowed_codes or any(not group for group in rule.require_any_of):
        return sa.false()
    parts: list[sa.ColumnElement[bool]] = [
        withdrawn.is_(sa.false()),
        consent.is_not(None),
        # PostgreSQL splits '' into an empty array, DuckDB into ['']; both must exclude it.
        consent != sa.literal("", sa.Text()),
    ]
    sep = sa.literal(rule.separator, sa.Text())
    if dialect_name == "postgresql":
        codes = sa.func.string_to_array(consent, sep, type_=_TEXT_ARRAY)
        parts.append(codes.contained_by(sa.literal(list(rule.allowed_codes), _TEXT_ARRAY)))
        parts += [codes.overlap(sa.literal(list(group), _TEXT_ARRAY)) for group in rule.require_any_of]
    else:
        codes = sa.func.string_split(consent, sep)
        allowed = sa.literal(list(rule.allowed_codes), sa.ARRAY(sa.Text()))
        parts.append(sa.func.list_has_all(allowed, codes, type_=sa.Boolean()))
        parts += [
            sa.func.list_has_any(codes, sa.literal(list(group), sa.ARRAY(sa.Text())), type_=sa.Boolean())
            for group in rule.require_any_of
        ]
    return sa.and_(*parts)


def not_withdrawn(
    patient: sa.ColumnElement[Any], tokens: Sequence[str], dialect_name: str
) -> sa.ColumnElement[bool]:
    """Rows whose patient pseudonym is not among `tokens` (withdrawals recorded after the data was ingested).

    The tokens travel as one array parameter, so thousands of withdrawals cost one bind, not thousands.
    Each is listed in both spellings (`token_spellings`), and the column is compared as text: DuckDB holds
    tokens as UUID values, PostgreSQL and older DuckDB tables as text of either spelling."""
    if dialect_name not in DIALECTS:
        raise UnsupportedStore(f"the store's SQL dialect {dialect_name!r} cannot exclude withdrawn patients")
    spellings = token_spellings(tokens)
    if dialect_name == "postgresql":
        listed = patient == sa.any_(sa.literal(spellings, _TEXT_ARRAY))
    else:
        listed = sa.func.list_contains(
            sa.literal(spellings, sa.ARRAY(sa.Text())), sa.cast(patient, sa.Text()), type_=sa.Boolean()
        )
    # A row without a pseudonym cannot be checked against the list: it is excluded (fail closed).
    return sa.and_(patient.is_not(None), sa.not_(listed))
