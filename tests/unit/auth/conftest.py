"""Fixtures for the auth tests: loopback test issuers serving discovery and JWKS over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oidc_issuer import LoopbackTestIssuer


@pytest.fixture(scope="module")
def idp() -> Iterator[LoopbackTestIssuer]:
    """One issuer shared by a module's read-only tests (key generation is the slow part)."""
    with LoopbackTestIssuer() as issuer:
        yield issuer


@pytest.fixture
def fresh_idp() -> Iterator[LoopbackTestIssuer]:
    """An issuer of its own, for tests that rotate keys, count fetches or make it fail."""
    with LoopbackTestIssuer() as issuer:
        yield issuer
