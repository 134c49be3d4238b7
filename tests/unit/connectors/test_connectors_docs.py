"""The runnable examples of docs/connectors.md run and print what they promise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "connectors.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
RUNNABLE = [block for block in BLOCKS if block.startswith(("import", "from"))]


def test_the_doc_has_a_runnable_example() -> None:
    assert RUNNABLE


@pytest.mark.parametrize("block", RUNNABLE)
def test_example_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, str(DOC), "exec"), {})  # noqa: S102 - the doc's own example, run as a reader would
    out = capsys.readouterr().out
    assert "age: int16" in out
    assert "2 [34, 71]" in out
