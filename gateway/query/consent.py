"""The consent_filter obligation as a SQL row predicate, with exactly `ConsentFilter.admits` semantics, and
without consent classes too small to be told apart.

A row stays when the withdrawn column IS FALSE (NULL is withdrawn), the consent value is present and not
empty, every code of the value split on the separator is an allowed code, and every `require_any_of`
group shares a code with it. An empty piece from a doubled or stray separator is a code no list holds,
so such a row is excluded, as in the reference. Codes are bound parameters, never SQL text.

A consent class is one distinct value of the consent column in the table queried. The researcher moves
the rule (an ethics approval id, a destination, the agreement's modifiers), and two rules admit sets of
rows that differ by whole classes; two unfiltered queries under neighbouring rules pass the query-set
rule whatever they differ by. So a class held by fewer than `min_cell_count` of the rows every query
keeps (not marked withdrawn, and no patient of a withdrawal recorded after ingest) is never admitted,
whatever the rule: two rules' populations then differ by nothing or by at least `min_cell_count` rows,
as a filter's set must (docs/disclosure.md, "Consent classes").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from gateway.decision.models import ConsentFilter
from gateway.query.errors import UnsupportedStore
from pseudonymize.pseudonym import canonical_token, parse_token, token_spellings

_TEXT_ARRAY = postgresql.ARRAY(sa.Text())
DIALECTS = ("duckdb", "postgresql")


def withdrawals_digest(tokens: Sequence[str]) -> str:
    """What stands for a set of recorded withdrawals in `ConsentClasses.withdrawals`: a SHA-256 hex digest
    of the tokens in one spelling, sorted, or "" for none. Two lists naming the same patients, in any
    order or spelling, have one digest; it is 64 characters where the list may be thousands of tokens."""
    if not tokens:
        return ""
    canonical = sorted({canonical_token(t) for t in tokens})
    return hashlib.sha256("\n".join(canonical).encode()).hexdigest()


class Recount(Protocol):
    """Counts a table's consent classes again, leaving out the rows of recorded withdrawals
    (`ConsentValueCache` gives the classes it reads one of these, bound to their store and table)."""

    def __call__(self, patient_column: str, tokens: Sequence[str], digest: str) -> ConsentClasses | None:
        """The classes without the rows whose `patient_column` is among `tokens` (`digest` is their
        `withdrawals_digest`). Raises sqlalchemy.exc.SQLAlchemyError when the store cannot be read."""
        ...


@dataclass(frozen=True)
class ConsentClasses:
    """Every distinct value of a version table's consent column with the number of its rows that every
    query keeps: not marked withdrawn (in the table's own withdrawn column) and, once withdrawals are
    recorded after ingest, no row of a withdrawn patient (`withdrawals` says which).

    Hashed once: the query compiler's caches look it up on every query, and the same object comes back
    from the cache each time (a tuple of a thousand pairs costs tens of µs to hash again)."""

    counts: tuple[tuple[str | None, int], ...]
    withdrawals: str = ""
    """The `withdrawals_digest` of the recorded withdrawals whose rows `counts` leaves out; "" for none."""
    recount: Recount | None = field(default=None, repr=False)
    """The store and table the counts were read from, to count them without other withdrawals; None for
    classes not read from a store. Part of equality: equal counts of two tables are two sets of classes
    once withdrawals are subtracted."""
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.counts, self.withdrawals, self.recount)))

    def __hash__(self) -> int:
        return self._hash

    def large(self, min_cell_count: int) -> list[str]:
        """The values held by at least `min_cell_count` counted rows (None is no value)."""
        return [value for value, rows in self.counts if value is not None and rows >= min_cell_count]

    def without_withdrawals(self, patient_column: str, tokens: Sequence[str]) -> ConsentClasses | None:
        """These classes counted without the rows whose `patient_column` is among `tokens`: itself when
        they already are, None when they cannot be counted again (not read from a store), in which case
        the per-row predicate must find the large classes. Raises sqlalchemy.exc.SQLAlchemyError when the
        store cannot be read (nothing is remembered then)."""
        digest = withdrawals_digest(tokens)
        if digest == self.withdrawals:
            return self
        if self.recount is None:
            return None
        return self.recount(patient_column, tokens, digest)


def consent_predicate(
    rule: ConsentFilter,
    consent: sa.ColumnClause[Any],
    withdrawn: sa.ColumnClause[Any],
    dialect_name: str,
    *,
    min_cell_count: int,
    classes: ConsentClasses | None = None,
    patient: sa.ColumnClause[Any] | None = None,
    withdrawals: Sequence[str] = (),
) -> sa.ColumnElement[bool]:
    """The predicate for the `duckdb` or `postgresql` dialect; UnsupportedStore for any other.

    `consent` and `withdrawn` are columns of the table queried; `withdrawals` are the pseudonyms of
    patients who withdrew after ingest, found in its `patient` column: their rows are left out
    (`not_withdrawn`). A consent class (a distinct value of `consent`) held by fewer than
    `min_cell_count` of the rows left, those whose `withdrawn` is false and whose patient is not among
    `withdrawals`, is left out whatever `rule` says; `min_cell_count` is the decision's obligation.

    `classes`, when given, must hold every distinct value of `consent` in the table queried (a published
    version, which never changes) with its count on those same rows (`ConsentClasses.without_withdrawals`
    of exactly `withdrawals`; others are a ValueError): the rule is then decided once per value, with
    `admits` itself, and the predicate lists the admitted values of large classes instead of splitting
    every row's codes. Without it, the per-row predicate keeps only values that a subquery over the same
    table finds in `min_cell_count` of those rows or more."""
    if dialect_name not in DIALECTS:
        raise UnsupportedStore(
            f"the store's SQL dialect {dialect_name!r} has no consent filter; use duckdb or postgresql"
        )
    if min_cell_count < 1:
        raise ValueError(f"min_cell_count must be at least 1, not {min_cell_count}")
    if withdrawals and patient is None:
        raise ValueError("withdrawals cannot be left out without the patient column")
    if classes is not None and classes.withdrawals != withdrawals_digest(withdrawals):
        # Counted with other withdrawals, a class could be admitted on patients no query sees.
        raise ValueError(
            "the consent classes were counted with other withdrawals than the predicate leaves out; "
            "count them again (ConsentClasses.without_withdrawals)"
        )
    kept = _admitted(rule, consent, withdrawn, dialect_name, min_cell_count, classes, patient, withdrawals)
    if withdrawals:
        assert patient is not None
        kept = sa.and_(kept, not_withdrawn(patient, withdrawals, dialect_name))
    return kept


def _admitted(
    rule: ConsentFilter,
    consent: sa.ColumnClause[Any],
    withdrawn: sa.ColumnClause[Any],
    dialect_name: str,
    min_cell_count: int,
    classes: ConsentClasses | None,
    patient: sa.ColumnClause[Any] | None,
    withdrawals: Sequence[str],
) -> sa.ColumnElement[bool]:
    """`consent_predicate` before the recorded withdrawals' own rows are left out."""
    # The split always yields at least one piece, so an empty list admits no row; an empty group too.
    if not rule.allowed_codes or any(not group for group in rule.require_any_of):
        return sa.false()
    if classes is not None:
        admitted = sorted(v for v in classes.large(min_cell_count) if rule.admits(v, False))
        if not admitted:
            return sa.false()
        if dialect_name == "postgresql":
            listed = consent.in_(admitted)
        else:
            # Not `IN`: DuckDB pushes an IN list into the scan and decompresses every row's string (twice
            # the time of the split on ten million rows), where a function of the column runs once per
            # value of a dictionary-compressed segment.
            position = sa.func.list_position(sa.literal(admitted, sa.ARRAY(sa.Text())), consent)
            listed = position.is_not(None)
        return sa.and_(withdrawn.is_(sa.false()), consent.is_not(None), listed)
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
    large = large_classes(consent, withdrawn, min_cell_count, dialect_name, patient=patient,
                          withdrawals=withdrawals)  # fmt: skip
    parts.append(consent.in_(large))
    return sa.and_(*parts)


def large_classes(
    consent: sa.ColumnClause[Any],
    withdrawn: sa.ColumnClause[Any],
    min_cell_count: int,
    dialect_name: str,
    *,
    patient: sa.ColumnClause[Any] | None = None,
    withdrawals: Sequence[str] = (),
) -> sa.Select[tuple[Any]]:
    """The values of `consent` held by at least `min_cell_count` rows whose `withdrawn` is false and whose
    `patient` is not among `withdrawals`, read from an alias of their own table (so the subquery is not
    correlated with the query around it)."""
    table = consent.table
    if table is None or withdrawn.table is not table:
        raise ValueError("the consent and withdrawn columns must belong to the table queried")
    counted = table.alias("consent_classes")
    value = counted.c[consent.name]
    where: list[sa.ColumnElement[bool]] = [counted.c[withdrawn.name].is_(sa.false()), value.is_not(None)]
    if withdrawals:
        if patient is None or patient.table is not table:
            raise ValueError("withdrawals need the patient column of the table queried")
        where.append(not_withdrawn(counted.c[patient.name], withdrawals, dialect_name))
    return (
        sa.select(value)
        .where(*where)
        .group_by(value)
        .having(sa.func.count() >= sa.literal(min_cell_count, sa.Integer()))
    )


def not_withdrawn(
    patient: sa.ColumnElement[Any], tokens: Sequence[str], dialect_name: str
) -> sa.ColumnElement[bool]:
    """Rows whose patient pseudonym is not among `tokens` (withdrawals recorded after the data was ingested).

    The tokens travel as one array parameter, so thousands of withdrawals cost one bind, not thousands.
    PostgreSQL holds tokens as text: each is listed in both spellings (`token_spellings`). DuckDB holds
    them as UUID values, which the list is cast to, so the column is read as it is stored (older DuckDB
    tables hold text of either spelling, which TRY_CAST reads as the same values); a withdrawn value that
    is no token is compared as text."""
    if dialect_name not in DIALECTS:
        raise UnsupportedStore(f"the store's SQL dialect {dialect_name!r} cannot exclude withdrawn patients")
    if dialect_name == "postgresql":
        listed = patient == sa.any_(sa.literal(token_spellings(tokens), _TEXT_ARRAY))
    else:
        parsed = [(t, parse_token(t)) for t in tokens]
        # In the spelling DuckDB parses: Python's uuid also reads braces, `urn:uuid:` and more.
        uuids = [str(value) for _, value in parsed if value is not None]
        other = [t for t, value in parsed if value is None]
        parts: list[sa.ColumnElement[bool]] = []
        if uuids:
            as_uuids = sa.cast(sa.literal(uuids, sa.ARRAY(sa.Text())), sa.ARRAY(sa.Uuid()))
            found = sa.func.list_contains(as_uuids, sa.try_cast(patient, sa.Uuid()), type_=sa.Boolean())
            parts.append(sa.func.coalesce(found, sa.false(), type_=sa.Boolean()))
        if other:
            as_text = sa.literal(other, sa.ARRAY(sa.Text()))
            parts.append(sa.func.list_contains(as_text, sa.cast(patient, sa.Text()), type_=sa.Boolean()))
        listed = sa.or_(*parts)
    # A row without a pseudonym cannot be checked against the list: it is excluded (fail closed).
    return sa.and_(patient.is_not(None), sa.not_(listed))
