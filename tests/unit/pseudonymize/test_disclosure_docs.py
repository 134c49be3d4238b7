"""The examples in docs/disclosure.md run and print what the page says."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "disclosure.md"


def test_disclosure_doc_examples() -> None:
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False, report=True
    )
    assert result.attempted >= 10
    assert result.failed == 0


def test_doc_names_the_default_thresholds_of_the_code() -> None:
    from pseudonymize.disclosure import DEFAULT_KEEP_ZERO_CELLS, DEFAULT_MIN_CELL_COUNT, DEFAULT_ROUND_TO

    text = DOC.read_text()
    assert f"DEFAULT_MIN_CELL_COUNT = {DEFAULT_MIN_CELL_COUNT}" in text
    assert f"DEFAULT_ROUND_TO = {DEFAULT_ROUND_TO}" in text
    assert f"DEFAULT_KEEP_ZERO_CELLS = {DEFAULT_KEEP_ZERO_CELLS}" in text
