"""Recorded withdrawals: one row per patient, whichever spelling of the token names them."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.state import GatewayState, withdrawals
from pseudonymize.pseudonym import pseudonym

KEY = bytes(range(32))


def test_a_patient_is_new_once_whichever_spelling_names_them(state: GatewayState) -> None:
    token = pseudonym(KEY, "MRN-1")
    assert state.add_withdrawals("ds", "ctx", [token]) == 1
    assert state.add_withdrawals("ds", "ctx", [token, token.replace("-", ""), token.upper()]) == 0
    assert state.withdrawn("ds", "ctx") == [token]
    # Another dataset or key context is another list.
    assert state.add_withdrawals("ds2", "ctx", [token]) == 1


def test_a_patient_recorded_in_the_plain_spelling_of_earlier_versions_is_not_new(
    state: GatewayState, state_url: str
) -> None:
    token = pseudonym(KEY, "MRN-1")
    legacy = token.replace("-", "")
    engine = sa.create_engine(state_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(withdrawals).values(
                dataset="ds", key_context="ctx", token=legacy, at="2026-01-01T00:00:00Z"
            )
        )
    engine.dispose()
    assert state.add_withdrawals("ds", "ctx", [token]) == 0
    assert state.withdrawn("ds", "ctx") == [legacy]
    assert state.add_withdrawals("ds", "ctx", [token, pseudonym(KEY, "MRN-2")]) == 1


def test_thousands_of_withdrawals_are_recorded_at_once(state: GatewayState) -> None:
    tokens = [pseudonym(KEY, f"MRN-{i}") for i in range(12_000)]
    assert state.add_withdrawals("ds", "ctx", tokens) == 12_000
    assert state.add_withdrawals("ds", "ctx", [*tokens[:10], pseudonym(KEY, "MRN-new")]) == 1
    assert len(state.withdrawn("ds", "ctx")) == 12_001
