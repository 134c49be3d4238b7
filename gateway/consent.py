"""Consent withdrawal that takes effect on the next query, not at the next data refresh.

A steward names the patients by their source identifier; the gateway turns each into the dataset's
pseudonym (the same keyed HMAC ingest used) and records only the pseudonyms. Every later query of that
dataset excludes those rows, on top of the consent filter the policy returns.

Every named patient is recorded, whether or not the newest version holds their rows (a later version
may). `matched` says how many of them it does hold, so that a mistyped identifier shows as a patient
named but not found, never as one.
"""

from __future__ import annotations

import sqlalchemy as sa

from audit import EventType, register
from audit.events import COUNT, LABEL
from gateway.keyring import load_master_key
from gateway.query.consent import not_withdrawn
from gateway.settings import SiteSettings
from gateway.state import GatewayState
from pseudonymize.ingest import derive_pseudonym_key
from pseudonymize.pseudonym import pseudonym
from pseudonymize.store import CatalogEntry

register(
    EventType(
        "consent.withdrawn",
        "patients of a dataset withdrew consent; later queries exclude them",
        required={"dataset": LABEL, "patients": COUNT},
        # matched: how many of the named patients the newest version holds rows of (absent when the store
        # could not be read then).
        optional={"new": COUNT, "matched": COUNT},
    )
)


class WithdrawalUnsupported(Exception):
    """The dataset's pseudonyms cannot be recomputed here (no patient column, or a shared linkage key)."""


def pseudonyms(settings: SiteSettings, entry: CatalogEntry, patient_ids: list[str]) -> list[str]:
    """The patients' pseudonyms in the dataset of `entry`, under its key; raises WithdrawalUnsupported when
    they cannot be recomputed here, KeyMaterialError when the site master key is not usable."""
    if entry.patient_column is None:
        raise WithdrawalUnsupported(f"dataset {entry.dataset} has no patient pseudonym column")
    master = load_master_key(settings)
    if entry.key_id != master.key_id:
        raise WithdrawalUnsupported(
            f"dataset {entry.dataset} was pseudonymized with key {entry.key_id}, not this site's master key; "
            "withdraw by re-ingesting with the linkage key"
        )
    key = derive_pseudonym_key(master, entry.key_context)
    return [pseudonym(key, pid) for pid in patient_ids]


def withdraw(state: GatewayState, entry: CatalogEntry, tokens: list[str]) -> int:
    """Record the withdrawal of these pseudonyms (`pseudonyms`) for the dataset, in one transaction;
    returns how many were not already withdrawn."""
    return state.add_withdrawals(entry.dataset, entry.key_context, tokens)


def matched(engine: sa.Engine, entry: CatalogEntry, tokens: list[str]) -> int:
    """How many distinct patients among `tokens` have rows in the version `entry`: one read of its patient
    column, through `engine` (the store, read-only, as queries read it). The rows counted are those every
    query now leaves out for these withdrawals (`not_withdrawn`), rows without a pseudonym aside.

    Raises what the store raises when it cannot be read, and UnsupportedStore for a dialect queries do not
    run on either."""
    if entry.patient_column is None or not tokens:
        return 0
    patient = sa.column(entry.patient_column, sa.Text)
    with engine.connect() as conn:
        listed = sa.and_(patient.is_not(None), sa.not_(not_withdrawn(patient, tokens, conn.dialect.name)))
        found = sa.select(sa.func.count(sa.distinct(patient))).select_from(sa.table(entry.table_name))
        return int(conn.execute(found.where(listed)).scalar_one())
