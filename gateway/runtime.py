"""Everything a running site gateway holds open: settings, policy, store, audit log, state, identity."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from audit import Actor
from audit.errors import EntryError, PayloadError
from audit.log import AppendReceipt, AuditLog, Queued
from gateway.auth import Principal, TokenValidator
from gateway.catalog import CatalogView
from gateway.decision import PolicyDecisionPoint
from gateway.federation.witnessing import Witnessing
from gateway.keyring import load_master_key
from gateway.policy_admin import reconcile
from gateway.query import (
    ONE_ROW_GROUP,
    ConsentValueCache,
    PopulationCache,
    single_thread_engine,
    store_engine,
)
from gateway.refusal import UNRECORDED_REASONS
from gateway.releases import ReleaseLanes
from gateway.settings import SiteSettings
from gateway.site_log import open_site_log
from gateway.state import GatewayState
from pseudonymize.errors import KeyMaterialError
from pseudonymize.store import CatalogEntry

T = TypeVar("T")


class StartupError(Exception):
    """The gateway refuses to start; the message says which setting or file is wrong."""


@dataclass
class SiteRuntime:
    """The long-lived parts of one site's gateway, built once at start-up."""

    settings: SiteSettings
    policy: PolicyDecisionPoint
    audit: AuditLog
    state: GatewayState
    store: sa.Engine
    catalog: CatalogView
    tokens: TokenValidator
    populations: PopulationCache
    witnessing: Witnessing
    consent_values: ConsentValueCache = field(default_factory=ConsentValueCache)
    executor: ThreadPoolExecutor | None = None
    """The threads that run store reads and state writes (`[server] threads`); the app makes it its event
    loop's default executor. Created on first use for a runtime without an app."""
    small_tables: sa.Engine | None = None
    """For a DuckDB store: the engine that queries tables of one row group on one thread
    (`single_thread_engine`); None where `store` queries every table."""
    releases: ReleaseLanes[Any] = field(default_factory=ReleaseLanes)
    """Released queries waiting for a pool thread, in two lanes (gateway.releases)."""

    @classmethod
    def start(cls, settings: SiteSettings, *, tokens: TokenValidator | None = None) -> SiteRuntime:
        """Open every component; refuse to start on bad policies, a missing key or no identity provider."""
        if settings.oidc is None and not settings.dev_mode:
            raise StartupError(
                f"{settings.site_id}: no [oidc] identity provider is configured (and dev_mode is off)"
            )
        try:
            # Checked now, not at the first withdrawal: a site must not run with an unusable master key.
            load_master_key(settings)
        except KeyMaterialError as exc:
            raise StartupError(f"{settings.site_id}: {exc}") from None
        if tokens is None:
            tokens = TokenValidator.for_site(settings)
        policy = PolicyDecisionPoint(settings)  # PolicyLoadError: the gateway never runs on a bad bundle
        audit = open_site_log(settings, checkpoint_interval_s=1.0)
        _record_bundle_in_force(policy, settings, audit)
        state = GatewayState(settings.state_url)
        store = store_engine(settings.store_url)
        witnessing = Witnessing(settings, audit)  # WitnessKeyError: a configured witness key must load
        witnessing.start()
        return cls(
            settings, policy, audit, state, store, CatalogView(store), tokens, PopulationCache(), witnessing,
            small_tables=single_thread_engine(settings.store_url),
        )  # fmt: skip

    @staticmethod
    def is_small(entry: CatalogEntry) -> bool:
        """A dataset version of one DuckDB row group: queried on one thread where the store allows it,
        released in the short lane (gateway.releases.ReleaseLanes)."""
        return entry.row_count <= ONE_ROW_GROUP

    def engine_for(self, entry: CatalogEntry) -> sa.Engine:
        """The engine that runs queries on a dataset version: `small_tables` for a small one."""
        if self.small_tables is not None and self.is_small(entry):
            return self.small_tables
        return self.store

    def threads(self) -> ThreadPoolExecutor:
        """`executor`, created on first use."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                max_workers=self.settings.server.threads, thread_name_prefix="fedgate"
            )
        return self.executor

    async def aclose(self) -> None:
        """Close what start() opened."""
        await self.witnessing.aclose()
        await self.tokens.aclose()
        self.audit.close()
        self.state.close()
        self.store.dispose()
        if self.small_tables is not None:
            self.small_tables.dispose()
        if self.executor is not None:
            self.executor.shutdown(wait=False)

    def note(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> Queued:
        """Queue an audit entry without waiting for its commit (no thread hop, no disk).

        It is not acknowledged until a later `record(..., after=[it])` returns; a refused payload raises,
        unless `cover_reasons` lets its reasons be replaced (see `_written`)."""
        return self._written(
            self.audit.enqueue, event_type, payload, principal, request_id, after, cover_reasons
        )

    async def record(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> AppendReceipt:
        """Append one audit entry and wait for its commit without holding a thread: the log's committer
        writes it with whatever else is queued. With `after`, only if those queued entries were written
        too (StorageError otherwise); a refused payload raises before anything is queued, unless
        `cover_reasons` lets its reasons be replaced (see `_written`)."""
        return await asyncio.wrap_future(
            self.append_soon(
                event_type, payload, principal=principal, request_id=request_id, after=after,
                cover_reasons=cover_reasons,
            )
        )  # fmt: skip

    def append_soon(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> Future[AppendReceipt]:
        """Queue one audit entry for the committer, from any thread; the future resolves on its commit."""
        return self._written(
            self.audit.append_soon, event_type, payload, principal, request_id, after, cover_reasons
        )

    def _written(
        self,
        queue: Callable[..., T],
        event_type: str,
        payload: Mapping[str, Any],
        principal: Principal | None,
        request_id: str | None,
        after: Sequence[Queued],
        cover_reasons: bool,
    ) -> T:
        """Queue the entry with `queue` (the log's `enqueue` or `append_soon`). With `cover_reasons`, a
        payload whose reasons the audit log will not store (a refusal's or a decision's reasons quoting a
        name the caller sent that reads as an identifier) is written with UNRECORDED_REASONS in their place:
        the event is still recorded, and the caller still reads the reasons in the answer. Without it, such
        a payload raises PayloadError (a steward's own reason is refused instead, so they can word it
        again)."""

        def write(written: Mapping[str, Any]) -> T:
            return queue(
                event_type, actor=_actor(principal), request_id=request_id,
                payload=self.annotate(event_type, written), after=after,
            )  # fmt: skip

        try:
            return write(payload)
        except PayloadError:
            if not cover_reasons or "reasons" not in payload:
                raise
            return write({**payload, "reasons": [UNRECORDED_REASONS]})

    def annotate(self, event_type: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """The payload as this runtime records it (a coordinated request's runtime adds its coordinator)."""
        return payload


_SCAN_PAGE: Final = 2048


def _record_bundle_in_force(policy: PolicyDecisionPoint, settings: SiteSettings, audit: AuditLog) -> None:
    """Record the bundle the policy folder holds when it is not the one the audit log last recorded: a
    gateway that died between writing a steward's replacement and recording it (`policy_admin`), or files
    changed by hand. The entry is a `policy.changed` of change `found_at_startup`, from the last recorded
    bundle to the one in force; a log with no policy change yet is left as it is."""

    def recorded() -> str | None:
        end = audit.size
        while end > 0:
            start = max(0, end - _SCAN_PAGE)
            for stored in reversed(audit.entries(start, end)):
                if b"policy.changed" not in stored.data:
                    continue
                entry = json.loads(stored.data)
                if entry.get("type") == "policy.changed":
                    return str(entry["payload"]["bundle_digest"]).removeprefix("sha256:")
            end = start
        return None

    def record(logged: str, in_force: str) -> None:
        payload = {
            "bundle_digest": f"sha256:{in_force}",
            "previous_digest": f"sha256:{logged}",
            "change": "found_at_startup",
        }
        audit.append("policy.changed", payload=payload)

    reconcile(policy, settings.policy_dir, recorded, record)


def _actor(principal: Principal | None) -> Actor | None:
    """Who an audit entry names: subject and organisation, nothing else of the token. An identity a dev
    token asserts (`fedgate dev-token`, which anyone running it may mint) has its organisation recorded
    after `DEV_ACTOR_PREFIX`, so that it never reads as the identity provider's user of the same names."""
    if principal is None:
        return None
    return _actor_of(principal.sub, DEV_ACTOR_PREFIX + principal.org if principal.dev else principal.org)


DEV_ACTOR_PREFIX: Final = "dev-token:"


# A request notes four entries or more under one principal, and Actor checks both names with patterns on
# construction: the checked Actor is remembered per (sub, org).
@functools.lru_cache(maxsize=4096)
def _actor_of(sub: str, org: str) -> Actor:
    return Actor(sub=recordable_name(sub), org=recordable_name(org))


@functools.lru_cache(maxsize=4096)  # a caller's names recur on every request, and their check is patterns
def recordable_name(name: str) -> str:
    """A token's subject or organisation as the audit log records it: as it is when the log takes it,
    otherwise `sha256:` and the first 32 hex digits of its SHA-256.

    An issuer may name a subject with what the log refuses so that no credential or personal identifier
    ever lands in it: what the payload filter refuses (an e-mail address, a national id, a long digit run
    such as a card number, an opaque run of 32 characters or more, a UUID), a line break, a lone surrogate,
    more than 256 characters (`audit.entry.Actor`). Such a caller is still served and still named in every
    entry, consistently; an auditor who knows the name finds it by its digest."""
    try:
        name.encode("utf-8")  # a lone surrogate from a JSON escape is no text the log can hold
        Actor(sub=name, org="-")
    except (UnicodeEncodeError, EntryError):
        return "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return name
