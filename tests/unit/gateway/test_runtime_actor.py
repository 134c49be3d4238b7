"""The actor an audit entry names: checked once per subject and organisation; a name the log refuses is
recorded by its digest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audit import Actor
from gateway.auth import Principal
from gateway.runtime import _actor, recordable_name


def _principal(sub: str, org: str = "org-charite") -> Principal:
    return Principal(
        sub=sub, org=org, country="DE", roles=frozenset({"researcher"}), visas=(), issuer="https://idp"
    )


def test_the_same_subject_and_organisation_name_one_checked_actor() -> None:
    first = _actor(_principal("researcher-1"))
    again = _actor(_principal("researcher-1"))
    assert first == Actor(sub="researcher-1", org="org-charite")
    assert again is first
    other = _actor(_principal("researcher-1", org="org-aphp"))
    assert other == Actor(sub="researcher-1", org="org-aphp")
    assert other is not first


def test_an_organisation_of_several_words_is_recorded_as_it_is() -> None:
    assert _actor(_principal("researcher-1", org="Example University")) == Actor(
        sub="researcher-1", org="Example University"
    )


@pytest.mark.parametrize(
    "sub",
    ["a" * 60, "eyJhbGciOiJSUzI1NiJ9.payload", "x-" * 150, "line\nbreak", "lone \ud800 surrogate", " padded"],
)
def test_a_name_the_log_refuses_is_recorded_by_its_digest(sub: str) -> None:
    # An issuer's subject the log will not hold as it is (it could be a credential, or is no text) still
    # names its caller, the same way on every use, and nothing of it but the digest reaches the log.
    actor = _actor(_principal(sub))
    assert actor is not None
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", actor.sub)
    assert actor.sub == recordable_name(sub)
    assert _actor(_principal(sub)) == actor
    assert sub.strip() not in actor.sub
    assert actor.org == "org-charite"
    assert recordable_name(sub + "-other") != actor.sub


def test_no_principal_names_no_actor() -> None:
    assert _actor(None) is None


def test_a_subject_that_is_no_text_is_kept_by_the_state_as_the_log_names_it(tmp_path: Path) -> None:
    # JSON's \ud800 escape makes a lone surrogate, which no database stores as text.
    from gateway.pipeline import owner
    from gateway.state import GatewayState

    odd = _principal("researcher-\ud800")
    whose = owner(odd)
    assert whose == f"https://idp\n{recordable_name(odd.sub)}" and whose.encode("utf-8")
    state = GatewayState(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert [state.count_query(whose, "DSA-1", "h") for _ in range(2)] == [1, 2]
    finally:
        state.close()
    # An ordinary subject is kept as it is.
    assert owner(_principal("researcher-1")) == "https://idp\nresearcher-1"


def test_an_owner_fits_the_states_columns_however_long_its_issuer_and_subject() -> None:
    from gateway.auth import Principal
    from gateway.pipeline import OWNER_CHARS, owner

    def principal(issuer: str, sub: str) -> Principal:
        return Principal(
            sub=sub, org="o", country="DE", roles=frozenset({"researcher"}), issuer=issuer, visas=()
        )

    short = owner(principal("https://idp.example", "alice"))
    assert short == "https://idp.example\nalice"
    long_issuer = "https://login.example.org/realms/" + "r" * 60
    words = " ".join(["dr", "ada"] * 60)  # 359 characters of words, which the log records as they are
    assert len(words[:250]) == 250
    long_one = owner(principal(long_issuer, words[:250]))
    assert len(long_one) <= OWNER_CHARS and long_one.startswith("sha256:")
    assert (
        long_one == owner(principal(long_issuer, words[:250])) != owner(principal(long_issuer, words[:248]))
    )
