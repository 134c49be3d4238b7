"""docs/witnessing.md stays true: its status table, commands and audited reasons match the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from audit.events import Enum, event_type
from gateway import problems
from gateway.cli import app as cli
from gateway.federation.witnessing import WITNESS_REFUSED, WITNESS_REQUEST_REFUSED

DOC = (Path(__file__).resolve().parents[3] / "docs/witnessing.md").read_text(encoding="utf-8")


def test_status_table_lists_exactly_the_mapped_statuses() -> None:
    documented = {int(s) for s in re.findall(r"^\| (\d{3}) \|", DOC, re.MULTILINE)}
    assert documented == {int(problems.OK), *(int(s) for s in problems.WITNESS_STATUS.values())}
    assert problems.TLOG_SIZE in DOC


def test_documented_commands_exist_with_their_options() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC, re.DOTALL)
    commands = [" ".join(b.replace("\\\n", " ").split()) for b in blocks]
    assert commands
    for command in commands:
        args = shlex.split(command)[1:]
        words = [a for a in args if not a.startswith("-")][:2]
        help_text = CliRunner().invoke(cli, [*words, "--help"], terminal_width=200)
        assert help_text.exit_code == 0, command
        for option in (a for a in args if a.startswith("--")):
            assert option in help_text.output, (command, option)


def test_documented_refusal_reasons_are_the_audited_ones() -> None:
    doc = DOC.replace("\n", " ")
    evidence = event_type(WITNESS_REFUSED.name).required["reason"]
    assert isinstance(evidence, Enum) and evidence.values == {"root_mismatch_at_equal_size"}
    requests = event_type(WITNESS_REQUEST_REFUSED.name).required["reason"]
    assert isinstance(requests, Enum)
    for reason in evidence.values | requests.values:
        assert f"`{reason}`" in doc, reason
    for name in (WITNESS_REFUSED.name, WITNESS_REQUEST_REFUSED.name):
        assert f"`{name}`" in doc
