"""Consent withdrawal that takes effect on the next query, not at the next data refresh.

A steward names the patients by their source identifier; the gateway turns each into the dataset's
pseudonym (the same keyed HMAC ingest used) and records only the pseudonyms. Every later query of that
dataset excludes those rows, on top of the consent filter the policy returns.
"""

from __future__ import annotations

from audit import EventType, register
from audit.events import COUNT, LABEL
from gateway.keyring import load_master_key
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
        optional={"new": COUNT},
    )
)


class WithdrawalUnsupported(Exception):
    """The dataset's pseudonyms cannot be recomputed here (no patient column, or a shared linkage key)."""


def withdraw(settings: SiteSettings, state: GatewayState, entry: CatalogEntry, patient_ids: list[str]) -> int:
    """Record the patients' withdrawal for the dataset; returns how many were not already withdrawn."""
    if entry.patient_column is None:
        raise WithdrawalUnsupported(f"dataset {entry.dataset} has no patient pseudonym column")
    master = load_master_key(settings)
    if entry.key_id != master.key_id:
        raise WithdrawalUnsupported(
            f"dataset {entry.dataset} was pseudonymized with key {entry.key_id}, not this site's master key; "
            "withdraw by re-ingesting with the linkage key"
        )
    key = derive_pseudonym_key(master, entry.key_context)
    tokens = [pseudonym(key, pid) for pid in patient_ids]
    return state.add_withdrawals(entry.dataset, entry.key_context, tokens)
