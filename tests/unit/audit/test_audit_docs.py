"""docs/audit.md stays true: exit codes, failure reasons and event types match the code."""

from __future__ import annotations

import re
from pathlib import Path

from audit.events import CORE_EVENT_TYPES, REGISTRY
from gateway.cli import audit as cli

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "audit.md").read_text()
VERIFY_SOURCES = "".join(p.read_text() for p in (ROOT / "audit" / "verify").glob("*.py"))


def test_exit_codes_are_documented() -> None:
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", DOC, re.MULTILINE))
    assert set(rows) == {
        str(c) for c in (cli.EXIT_OK, cli.EXIT_NOT_INTACT, cli.EXIT_USAGE, cli.EXIT_TOO_FEW_WITNESSES,
                         cli.EXIT_UNREADABLE, cli.EXIT_RELEASE_NOT_ALLOWED)
    }  # fmt: skip
    assert "witnesses" in rows[str(cli.EXIT_TOO_FEW_WITNESSES)]
    assert "release" in rows[str(cli.EXIT_RELEASE_NOT_ALLOWED)]


def test_every_failure_reason_is_documented() -> None:
    reasons = set(re.findall(r'(?:AuditIntegrityError\(|_fail\()\s*"([a-z_]+)"', VERIFY_SOURCES))
    reasons |= set(re.findall(r'^\s+"([a-z_]+)",\n\s+f?"', VERIFY_SOURCES, re.MULTILINE))
    reasons |= {"truncated", "size_mismatch"}
    reasons |= {f"{what}_signature" for what in ("checkpoint", "since_checkpoint")}
    reasons |= {f"malformed_{what}" for what in ("checkpoint", "since_checkpoint")}
    assert len(reasons) > 15
    missing = [r for r in sorted(reasons) if f"`{r}`" not in DOC]
    assert not missing, f"undocumented failure reasons: {missing}"


def test_every_event_type_and_field_is_documented() -> None:
    assert len(CORE_EVENT_TYPES) >= 14
    for name in sorted(CORE_EVENT_TYPES):
        event = REGISTRY[name]
        row = re.search(rf"^\| `{re.escape(name)}` \| (.*) \| (.*) \|$", DOC, re.MULTILINE)
        assert row, f"{name} is not in the event table"
        assert {f.strip() for f in row.group(1).split(",")} == set(event.required), name
        documented_optional = {f.strip() for f in row.group(2).split(",") if f.strip()}
        assert documented_optional == set(event.optional), name
