"""The peer registry and the peer side of authentication: who may coordinate, and the check on each request.

`PeerLink` holds this site's `[[peers]]` (ids, URLs, request keys), its own signing key when it coordinates,
the nonce ledger and one pooled HTTP client. `PeerAuthMiddleware` checks the `Fedgate-Peer-Assertion` of
any request that carries one before a route sees it: an unknown peer, a bad signature, a stale, replayed or
mismatched assertion is audited (`peer.rejected`) and answered 401 as a problem document. A request without
the header is an ordinary researcher request. A verified request's pipeline tags its `query.received` entry
with `federated` and `coordinator`, and nothing else changes: the bearer token is validated as always.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.failure_audit import app_failures, suppressed_field
from gateway.federation.replay import NonceLedger
from gateway.federation.signing import (
    HEADER,
    PeerAuthError,
    PeerKeyError,
    PeerSigner,
    ReplayedAssertion,
    load_peer_key,
    parse_public_key,
    verify_assertion,
)
from gateway.pipeline import QueryPipeline
from gateway.problems import refusal_response
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime
from gateway.settings import PeerSettings, SiteSettings

MAX_PEER_BODY_BYTES = 1 << 20
_STATE_KEY = "fedgate_peer"


class PeerLink:
    """This site's view of its federation: peers, own signer, nonce ledger, HTTP client."""

    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        self.peers: dict[str, PeerSettings] = {p.id: p for p in settings.peers}
        self.keys: dict[str, Ed25519PublicKey] = {}
        for peer in settings.peers:
            try:
                self.keys[peer.id] = parse_public_key(peer.request_key)
            except ValueError as exc:
                raise ValueError(f"peers.{peer.id}.request_key: {exc}") from None
        self.signer: PeerSigner | None = None
        if settings.peer_key_file is not None and settings.peer_key_file.exists():
            self.signer = PeerSigner(settings.site_id, load_peer_key(settings.peer_key_file))
        self.ledger = NonceLedger(settings.state_url)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))

    def sign(self, peer: str, method: str, path: str, body: bytes) -> dict[str, str]:
        """The peer-authentication header of one request to `peer` (PeerKeyError without a key)."""
        if self.signer is None:
            raise PeerKeyError(f"{self.settings.site_id}: no peer_key_file to sign requests to peers with")
        return {HEADER: self.signer.assertion(peer, method, path, body)}

    async def aclose(self) -> None:
        """Close the client and the ledger."""
        await self.http.aclose()
        self.ledger.close()


@dataclasses.dataclass
class CoordinatedRuntime(SiteRuntime):
    """A runtime whose `query.received` entries say which verified peer coordinated the request."""

    coordinator: str = ""

    @classmethod
    def of(cls, runtime: SiteRuntime, coordinator: str) -> CoordinatedRuntime:
        parts = {f.name: getattr(runtime, f.name) for f in dataclasses.fields(SiteRuntime)}
        return cls(**parts, coordinator=coordinator)

    def annotate(self, event_type: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        if event_type == "query.received":
            return {**payload, "federated": True, "coordinator": self.coordinator}
        return payload


def verified_peer(request: Request) -> str | None:
    """The peer whose assertion on this request verified, or None for a request without one."""
    peer = request.scope.get("state", {}).get(_STATE_KEY)
    return peer if isinstance(peer, str) else None


def coordinated_pipeline(request: Request, runtime: SiteRuntime) -> QueryPipeline:
    """The query pipeline, tagged with the coordinator when the request came verified from a peer."""
    peer = verified_peer(request)
    return QueryPipeline(CoordinatedRuntime.of(runtime, peer) if peer else runtime)


class PeerAuthMiddleware:
    """Verifies `Fedgate-Peer-Assertion` on the requests that carry it (pure ASGI: the body is replayed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_name = HEADER.lower().encode()
        values = [v for k, v in scope["headers"] if k == header_name]
        if not values:
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        app: FastAPI = scope["app"]
        link: PeerLink = app.state.peers
        runtime: SiteRuntime = app.state.runtime
        try:
            if len(values) != 1 or not complete:
                raise PeerAuthError("one peer assertion and a body of at most 1 MiB are accepted")
            verified = verify_assertion(
                values[0].decode("latin-1"),
                site_id=link.settings.site_id,
                peers=link.keys,
                method=scope["method"],
                path=scope["path"],
                body=body,
            )
            fresh = await asyncio.to_thread(
                link.ledger.claim, verified.peer, verified.jti, verified.expires_at
            )
            if not fresh:
                raise ReplayedAssertion("the peer assertion was already used", verified.peer)
        except PeerAuthError as exc:
            rejected = {"peer": exc.peer, "reason": f"{exc.reason}: {exc}"}
            digest = {"request_digest": f"sha256:{hashlib.sha256(body).hexdigest()}"}

            async def write(suppressed: int) -> None:
                await runtime.record("peer.rejected", {**rejected, **digest, **suppressed_field(suppressed)})

            async def write_held(suppressed: int) -> None:  # stands for many requests: no digest
                await runtime.record("peer.rejected", {**rejected, **suppressed_field(suppressed)})

            # Anyone can send an assertion: a flood of rejections is on record as counts (failure_audit).
            await app_failures(app.state).record(("peer.rejected", exc.reason), write, write_held)
            refusal = Refusal("unauthenticated", "Peer authentication failed", [str(exc)], stage="authorize")
            await refusal_response(refusal)(scope, receive, send)
            return
        scope.setdefault("state", {})[_STATE_KEY] = verified.peer
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PEER_BODY_BYTES:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def install(app: FastAPI) -> None:
    """Check peer assertions on every request that carries one, and tag coordinated queries."""
    app.add_middleware(PeerAuthMiddleware)
    app.state.pipeline_factory = coordinated_pipeline
