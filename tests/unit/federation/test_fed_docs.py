"""docs/federation.md stays true: its config loads, its commands exist, every status, rejection reason and
error it must name is named."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import get_args

from typer.testing import CliRunner

from gateway.cli import app
from gateway.federation import combine, signing
from gateway.federation.coordinator import STATUSES, SiteStatus
from gateway.federation.signing import PeerAuthError, parse_public_key
from gateway.settings import PeerSettings

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "federation.md").read_text()


def test_peer_config_example_loads() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC, re.DOTALL)
    assert block
    data = tomllib.loads(block.group(1))
    assert data["peer_key_file"] == "keys/peer.key"
    (peer,) = [PeerSettings(**p) for p in data["peers"]]
    parse_public_key(peer.request_key)


def test_documented_commands_exist() -> None:
    for line in DOC.splitlines():
        if line.startswith("fedgate peer "):
            command = line.split()[1:3]
            result = CliRunner().invoke(app, [*command, "--help"])
            assert result.exit_code == 0, line


def test_every_status_reason_and_error_is_documented() -> None:
    assert set(get_args(SiteStatus)) == set(STATUSES)
    for status in STATUSES:
        assert f"| `{status}` |" in DOC, status
    for value in vars(signing).values():
        if isinstance(value, type) and issubclass(value, PeerAuthError) and value is not PeerAuthError:
            assert f"| `{value.reason}` |" in DOC, value.reason
            assert value.__name__ in DOC
    for name in ("PeerKeyError", "CombineError", "InvalidSiteAnswer"):
        assert name in DOC
    assert combine.REASON_AT_SITE in DOC and combine.REASON_POOLED_MIN in DOC
    assert signing.HEADER in DOC and signing.ASSERTION_TYPE in DOC
