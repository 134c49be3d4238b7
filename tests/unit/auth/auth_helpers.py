"""Helpers shared by the auth tests (a uniquely named module: test folders are not packages)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from oidc_issuer import LoopbackTestIssuer

from gateway.settings import OidcSettings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def oidc_for(issuer: LoopbackTestIssuer, **overrides: Any) -> OidcSettings:
    return OidcSettings(issuer=issuer.issuer_url, audience=issuer.audience, **overrides)
