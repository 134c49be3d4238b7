"""The actor an audit entry names: checked once per subject and organisation, refused every time it is bad."""

from __future__ import annotations

import pytest

from audit import Actor
from audit.errors import EntryError
from gateway.auth import Principal
from gateway.runtime import _actor


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


@pytest.mark.parametrize("sub", ["has space", "eyJhbGciOiJSUzI1NiJ9.payload", "x" * 300])
def test_a_bad_subject_is_refused_on_every_use(sub: str) -> None:
    for _ in range(2):
        with pytest.raises(EntryError):
            _actor(_principal(sub))


def test_no_principal_names_no_actor() -> None:
    assert _actor(None) is None
