"""Several sites of one federation on loopback: peer keys, `[[peers]]` tables and running gateways.

    fed = build_federation(tmp, idp.issuer_url, ["site-de", "site-fr", "site-nl"])
    with running_federation(fed) as urls:        # every gateway on its pre-chosen port
        httpx.post(f"{urls['site-de']}/v1/federated-queries", json={...}, headers=bearer(...))

Ports are picked before the configs are written (each site lists its peers' URLs), and the gateways are
started after. `running_federation(fed, skip={"site-nl"})` leaves a site down while the others list it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway_site import Site, bearer, build_site, free_port
from oidc_issuer import LoopbackTestIssuer

from audit.keys import load_log_key
from audit.notes import verifier_key_text
from gateway.app import create_app
from gateway.federation.signing import generate_peer_key, public_key_b64
from gateway.settings import SiteSettings, load_settings

JURISDICTIONS = ("DE", "FR", "NL", "BE", "AT", "IT", "ES", "SE", "DK", "FI", "IE", "PT", "PL", "CZ",
                 "LU", "SI", "SK", "HU", "EE", "LV", "LT", "GR", "HR", "RO", "BG", "CY", "MT")  # fmt: skip


@dataclass
class Federation:
    """The sites of a test federation and the ports their gateways will listen on."""

    sites: dict[str, Site]
    ports: dict[str, int]
    extra_keys: dict[str, Path]

    @property
    def urls(self) -> dict[str, str]:
        return {sid: f"http://127.0.0.1:{port}" for sid, port in self.ports.items()}

    def settings(self, site_id: str) -> SiteSettings:
        return load_settings(self.sites[site_id].config)

    def peer_key_path(self, site_id: str) -> Path:
        return self.sites[site_id].root / "keys/peer.key"


def _add_peers(site: Site, peers: list[dict[str, str]]) -> None:
    text = site.config.read_text()
    first, rest = text.split("\n", 1)
    lines = [first, 'peer_key_file = "keys/peer.key"', rest.rstrip("\n")]
    for peer in peers:
        lines += ["", "[[peers]]", *(f"{k} = {json.dumps(v)}" for k, v in peer.items())]
    site.config.write_text("\n".join(lines) + "\n")


def build_federation(
    tmp: Path,
    issuer_url: str,
    site_ids: Iterable[str],
    *,
    rows: int = 3000,
    seed: int = 11,
    extra_peers: Mapping[str, int] | None = None,
) -> Federation:
    """Build each site, give it a peer key, and list every other site as its peer.

    `extra_peers` (id -> loopback port) are listed by every site too, with keys of their own kept in
    `Federation.extra_keys`: stand-ins for peers that are down, slow or misbehaving.
    """
    ids = list(site_ids)
    extra = dict(extra_peers or {})
    extra_keys: dict[str, Path] = {}
    (tmp / "extra-peers").mkdir(exist_ok=True)
    extra_entries = []
    for pid, port in extra.items():
        extra_keys[pid] = tmp / "extra-peers" / f"{pid}.key"
        key = generate_peer_key(extra_keys[pid]).public_key()
        log_key = verifier_key_text(f"fedgate.example/{pid}", Ed25519PrivateKey.generate().public_key())
        extra_entries.append({"id": pid, "url": f"http://127.0.0.1:{port}",
                              "request_key": public_key_b64(key), "log_key": log_key})  # fmt: skip
    sites: dict[str, Site] = {}
    public: dict[str, str] = {}
    for i, sid in enumerate(ids):
        country = JURISDICTIONS[i % len(JURISDICTIONS)]
        sites[sid] = build_site(tmp, issuer_url, rows=rows, site_id=sid, jurisdiction=country, seed=seed + i)
        public[sid] = public_key_b64(generate_peer_key(sites[sid].root / "keys/peer.key").public_key())
    ports = {sid: free_port() for sid in ids}
    for sid in ids:
        peers = []
        for other in ids:
            if other == sid:
                continue
            other_settings = sites[other].settings
            verifier = load_log_key(other_settings.log_key_file).public_key()
            peers.append({
                "id": other,
                "url": f"http://127.0.0.1:{ports[other]}",
                "request_key": public[other],
                "log_key": verifier_key_text(other_settings.audit_origin, verifier),
            })  # fmt: skip
        _add_peers(sites[sid], peers + extra_entries)
    fed = Federation(sites, ports, extra_keys)
    for sid in ids:
        sites[sid] = Site(sites[sid].root, sites[sid].config, fed.settings(sid), sites[sid].source)
    return fed


def set_agreement(site: Site, agreement: str, **terms: Any) -> None:
    """Change one agreement's terms at a site (before its gateway starts)."""
    path = site.root / "policies/data/agreements.json"
    data = json.loads(path.read_text())
    data[agreement].update(terms)
    path.write_text(json.dumps(data, indent=2))


@contextlib.contextmanager
def serve_on(settings: SiteSettings, port: int) -> Iterator[str]:
    """Serve one site's app on a given loopback port; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway of {settings.site_id} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextlib.contextmanager
def running_federation(fed: Federation, *, skip: Iterable[str] = ()) -> Iterator[dict[str, str]]:
    """Every site's gateway (but those in `skip`) on its port; yields site id -> base URL."""
    skipped = set(skip)
    with contextlib.ExitStack() as stack:
        urls = {
            sid: stack.enter_context(serve_on(site.settings, fed.ports[sid]))
            for sid, site in fed.sites.items()
            if sid not in skipped
        }
        yield urls


class FakePeer(BaseHTTPRequestHandler):
    """A stand-in for a peer gateway that answers as a test tells it (`behaviour`), not as a gateway would."""

    behaviour = ""

    def answer(self, status: int, body: bytes) -> None:
        """Send `body` as a whole JSON answer."""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve_fake_peer(handler: type[FakePeer], behaviour: str, port: int) -> ThreadingHTTPServer:
    """Serve `handler` with `behaviour` on a loopback port, in a thread of its own; shut it down after."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", port), type(f"{handler.__name__}_{port}", (handler,), {"behaviour": behaviour})
    )
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def audit_entries(url: str, idp: LoopbackTestIssuer) -> list[dict[str, Any]]:
    """Every entry of a site's log, read as an auditor, page after page."""
    out: list[dict[str, Any]] = []
    while True:
        response = httpx.get(
            f"{url}/v1/audit/entries", params={"start": len(out)}, headers=bearer(idp, "auditor"), timeout=30
        )
        assert response.status_code == 200
        page = response.json()
        out += [json.loads(base64.b64decode(e["entry"])) for e in page["entries"]]
        if not page["entries"] or len(out) >= page["size"]:
            return out
