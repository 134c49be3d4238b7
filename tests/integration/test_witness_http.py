"""Witnessing over real HTTP between three gateways: each cosigns its peers' checkpoints, the auditor's
export of one site then verifies with two peer witnesses, and forks, strangers and bad bodies are refused
with the C2SP tlog-witness statuses."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_sites import Federation, build_federation, running_federation
from gateway_site import Site, bearer
from oidc_issuer import LoopbackTestIssuer
from typer.testing import CliRunner

from audit.checkpoint import Checkpoint, parse_checkpoint_body, sign_checkpoint
from audit.keys import load_log_key
from audit.notes import ALG_COSIGNATURE_V1, parse_note, parse_verifier_key, verifier_key_text
from audit.verify import find_fork
from audit.witness import format_add_checkpoint_body
from gateway.cli import app as cli
from gateway.settings import SiteSettings, load_settings

SITE_IDS = ("site-de", "site-fr", "site-nl")
ADD = "/v1/witness/add-checkpoint"
COUNT = {"dataset": "cohort", "agreement": "DSA-TEST-OPEN", "purpose": {"duo": ["DUO:0000006"]},
         "kind": "count"}  # fmt: skip
runner = CliRunner()


@dataclass(frozen=True)
class Member:
    site: Site
    settings: SiteSettings
    url: str
    log_key: str
    witness_key: str


def _witness_keygen(config: Path) -> str:
    result = runner.invoke(cli, ["witness", "keygen", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def _add_witnessing(fed: Federation) -> dict[str, str]:
    """Give every site a witness key (made by the CLI) and its peers' witness keys; return the keys."""
    keys = {}
    for sid, site in fed.sites.items():
        first, rest = site.config.read_text().split("\n", 1)
        site.config.write_text(f'{first}\nwitness_key_file = "keys/witness.key"\n{rest}')
        keys[sid] = _witness_keygen(site.config)
    for sid, site in fed.sites.items():
        lines = []
        for line in site.config.read_text().splitlines():
            lines.append(line)
            peer = line.removeprefix("id = ").strip('"')
            if line.startswith("id = ") and peer in keys:
                lines.append(f"witness_key = {json.dumps(keys[peer])}")
        site.config.write_text("\n".join(lines) + "\n")
        fed.sites[sid] = Site(site.root, site.config, load_settings(site.config), site.source)
    return keys


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Iterator[list[Member]]:
    fed = build_federation(tmp_path_factory.mktemp("witnessing"), idp.issuer_url, SITE_IDS, rows=400)
    witness_keys = _add_witnessing(fed)
    with running_federation(fed) as urls:
        members = []
        for sid, site in fed.sites.items():
            log_key = verifier_key_text(
                site.settings.audit_origin, load_log_key(site.settings.log_key_file).public_key()
            )
            assert all(p.witness_key == witness_keys[p.id] for p in site.settings.peers)
            members.append(Member(site, site.settings, urls[sid], log_key, witness_keys[sid]))
        yield members


def _note(url: str, idp: LoopbackTestIssuer) -> str:
    response = httpx.get(f"{url}/v1/audit/checkpoint", headers=bearer(idp, "auditor"), timeout=30)
    assert response.status_code == 200
    return response.text


def _submit(member: Member, idp: LoopbackTestIssuer) -> dict[str, object]:
    response = httpx.post(
        f"{member.url}/v1/witness/submissions", headers=bearer(idp, "steward", sub="steward-1"), timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _verify(export: Path, member: Member, witnesses: list[str], k: int) -> int:
    args = ["audit", "verify", str(export), "--key", member.log_key, "--min-witnesses", str(k)]
    for w in witnesses:
        args += ["--witness", w]
    return runner.invoke(cli, args).exit_code


def _events(member: Member, idp: LoopbackTestIssuer) -> list[dict[str, Any]]:
    entries = httpx.get(f"{member.url}/v1/audit/entries", headers=bearer(idp, "auditor"), timeout=30).json()
    return [json.loads(base64.b64decode(e["entry"])) for e in entries["entries"]]


def test_keygen_creates_an_owner_only_audited_key_and_refuses_to_overwrite(
    federation: list[Member], idp: LoopbackTestIssuer
) -> None:
    member = federation[0]
    created = [e["payload"] for e in _events(member, idp) if e["type"] == "key.changed"]
    assert created == [{"key": "witness", "action": "created", "fingerprint": created[0]["fingerprint"],
                        "name": "fedgate.example/site-de/witness"}]  # fmt: skip
    assert member.settings.witness_key_file is not None
    assert member.settings.witness_key_file.stat().st_mode & 0o777 == 0o600
    key = parse_verifier_key(member.witness_key)
    assert key.alg == ALG_COSIGNATURE_V1 and key.name == "fedgate.example/site-de/witness"
    again = runner.invoke(cli, ["witness", "keygen", "--config", str(member.site.config)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr


def test_exports_verify_with_two_peer_witnesses(
    federation: list[Member], idp: LoopbackTestIssuer, tmp_path: Path
) -> None:
    researcher = bearer(idp, "researcher")
    for member in federation:
        response = httpx.post(f"{member.url}/v1/queries", json=COUNT, headers=researcher, timeout=30)
        assert response.status_code == 200, response.text
    for member in federation:
        outcomes = _submit(member, idp)["outcomes"]
        assert isinstance(outcomes, list) and len(outcomes) == 2
        assert all(o["cosigned"] for o in outcomes), outcomes
    for member in federation:
        export = tmp_path / f"{member.settings.site_id}.export"
        response = httpx.get(f"{member.url}/v1/audit/export", headers=bearer(idp, "auditor"), timeout=30)
        export.write_bytes(response.content)
        peers = [m.witness_key for m in federation if m is not member]
        assert _verify(export, member, peers, 2) == 0
        # The site's own witness key never cosigns its own log: three witnesses cannot be found.
        assert _verify(export, member, [*peers, member.witness_key], 3) == 3
        assert _verify(export, member, peers[:1], 2) == 3


def test_a_fork_is_refused_with_422_audited_and_leaves_the_witness_unchanged(
    federation: list[Member], idp: LoopbackTestIssuer
) -> None:
    de, fr = federation[0], federation[1]
    httpx.post(f"{fr.url}/v1/queries", json=COUNT, headers=bearer(idp, "researcher"), timeout=30)
    _submit(fr, idp)
    genuine = _note(fr.url, idp)  # with the peers' cosignatures, which a witness ignores
    cp = parse_checkpoint_body(parse_note(genuine).text)
    fr_log_key = load_log_key(fr.settings.log_key_file)
    forked = sign_checkpoint(Checkpoint(cp.origin, cp.size, bytes(32)), fr_log_key)
    refused = httpx.post(f"{de.url}{ADD}", content=format_add_checkpoint_body(cp.size, [], forked))
    assert refused.status_code == 422 and refused.headers["content-type"].startswith("text/plain")
    # The witness still holds the genuine checkpoint: its size, and the same root cosigns again.
    mismatch = httpx.post(f"{de.url}{ADD}", content=format_add_checkpoint_body(0, [], genuine))
    assert mismatch.status_code == 409
    assert mismatch.headers["content-type"] == "text/x.tlog.size" and mismatch.text == f"{cp.size}\n"
    again = httpx.post(f"{de.url}{ADD}", content=format_add_checkpoint_body(cp.size, [], genuine))
    assert again.status_code == 200 and again.text.startswith("— fedgate.example/site-de/witness ")
    # The refusal is evidence against the peer: it is in the witness's own audit log.
    refusals = [e for e in _events(de, idp) if e["type"] == "witness.refused"]
    assert refusals and refusals[-1]["payload"]["reason"] == "root_mismatch_at_equal_size"
    assert refusals[-1]["payload"]["origin"] == cp.origin and refusals[-1]["payload"]["size"] == cp.size
    # fr's log grows and de cosigns on; de's witness still holds both notes fr's key signed for that size.
    httpx.post(f"{fr.url}/v1/queries", json=COUNT, headers=bearer(idp, "researcher"), timeout=30)
    _submit(fr, idp)
    result = runner.invoke(
        cli, ["witness", "evidence", "--config", str(de.site.config), "--origin", cp.origin]
    )
    assert result.exit_code == 0, result.output
    kept = [
        k for k in json.loads(result.stdout) if k["digest"] == refusals[-1]["payload"]["checkpoint_digest"]
    ]
    assert len(kept) == 1 and kept[0]["note"] == forked and kept[0]["size"] == cp.size
    assert parse_note(kept[0]["cosigned_note"]).text == parse_note(genuine).text
    assert find_fork(kept[0]["cosigned_note"], kept[0]["note"], fr.log_key) is not None


def test_unknown_untrusted_and_malformed_submissions(
    federation: list[Member], idp: LoopbackTestIssuer
) -> None:
    de, fr = federation[0], federation[1]
    stranger = Ed25519PrivateKey.generate()
    unknown = sign_checkpoint(Checkpoint("fedgate.example/site-zz", 1, bytes(32)), stranger)
    response = httpx.post(f"{de.url}{ADD}", content=format_add_checkpoint_body(0, [], unknown))
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/plain")
    cp = parse_checkpoint_body(parse_note(_note(fr.url, idp)).text)
    impostor = sign_checkpoint(Checkpoint(cp.origin, cp.size + 1, bytes(32)), stranger)
    assert (
        httpx.post(f"{de.url}{ADD}", content=format_add_checkpoint_body(0, [], impostor)).status_code == 403
    )
    signed = sign_checkpoint(cp, load_log_key(fr.settings.log_key_file))
    too_large = format_add_checkpoint_body(cp.size + 1, [], signed)
    assert httpx.post(f"{de.url}{ADD}", content=too_large).status_code == 400
    assert httpx.post(f"{de.url}{ADD}", content=b"old x\n\n" + signed.encode()).status_code == 400
    assert httpx.post(f"{de.url}{ADD}", content=b"old 0\n" * 20_000).status_code == 400


def test_a_replayed_checkpoint_with_a_bogus_proof_is_refused_but_no_evidence(
    federation: list[Member], idp: LoopbackTestIssuer
) -> None:
    # Anyone can send a peer's genuine checkpoint with a proof that does not verify: the witness refuses it
    # as ever, but that says nothing about the peer, and a flood of it is one entry in the witness's log.
    de, nl = federation[0], federation[2]
    evidence_before = [e for e in _events(de, idp) if e["type"] == "witness.refused"]
    refused = 0
    for _ in range(40):
        learned = httpx.post(
            f"{de.url}{ADD}", content=format_add_checkpoint_body(0, [bytes(32)], _note(nl.url, idp))
        )
        if learned.status_code != 409:  # de has cosigned nothing of nl's yet
            assert learned.status_code == 422
            refused += 1
            continue
        cosigned = int(learned.text)
        genuine = _note(nl.url, idp)  # nl signed it after de cosigned size `cosigned`: it is as large
        answer = httpx.post(
            f"{de.url}{ADD}", content=format_add_checkpoint_body(cosigned, [bytes(32)], genuine)
        )
        if answer.status_code == 409:  # de cosigned a later checkpoint of nl's meanwhile
            continue
        assert answer.status_code == 422 and answer.headers["content-type"].startswith("text/plain")
        refused += 1
        if refused >= 6:
            break
    assert refused >= 6
    events = _events(de, idp)
    assert [e for e in events if e["type"] == "witness.refused"] == evidence_before
    logged = [
        e["payload"] for e in events
        if e["type"] == "witness.request_refused" and e["payload"].get("origin") == nl.settings.audit_origin
        and e["payload"]["reason"] in ("bad_consistency_proof", "non_empty_proof_from_zero")
    ]  # fmt: skip
    assert 1 <= len(logged) <= 2 and all(p["suppressed"] == 0 for p in logged)
