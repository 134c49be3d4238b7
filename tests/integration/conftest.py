"""Fixtures for end-to-end tests: a test identity provider, a whole site, and its gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_site import AUDIENCE, Site, build_site, running_gateway
from oidc_issuer import LoopbackTestIssuer


@pytest.fixture(scope="module")
def idp() -> Iterator[LoopbackTestIssuer]:
    with LoopbackTestIssuer(audience=AUDIENCE) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Site:
    return build_site(tmp_path_factory.mktemp("site"), idp.issuer_url)


@pytest.fixture(scope="module")
def gateway_url(site: Site) -> Iterator[str]:
    with running_gateway(site.settings) as url:
        yield url


@pytest.fixture
def http(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
def tmp_site(tmp_path: Path, idp: LoopbackTestIssuer) -> Site:
    """A site of its own, for tests that change state."""
    return build_site(tmp_path, idp.issuer_url)
