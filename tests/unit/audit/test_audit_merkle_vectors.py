"""Known answers: the public RFC 9162 proof vectors (transparency-dev/merkle, see vectors/NOTICE.md)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from audit.errors import ProofError
from audit.merkle import EMPTY_ROOT, leaf_hash, root_of, verify_consistency, verify_inclusion

VECTORS = Path(__file__).parent / "vectors" / "rfc9162-merkle"
# The leaves of the RFC 6962 reference tree behind the vectors.
REFERENCE_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]


def _cases(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert len(files) > 40, f"vectors for {kind} are missing"
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(value: list[str] | None) -> list[bytes]:
    return [base64.b64decode(h) for h in value or []]


@pytest.mark.parametrize("case", _cases("inclusion"))
def test_inclusion_vector(case: dict[str, Any]) -> None:
    args = (case["leafIdx"], case["treeSize"], _b(case["leafHash"]), _proof(case["proof"]), _b(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("case", _cases("consistency"))
def test_consistency_vector(case: dict[str, Any]) -> None:
    args = (case["size1"], case["size2"], _proof(case["proof"]), _b(case["root1"]), _b(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_reference_tree_roots_match_the_spec() -> None:
    leaves = [leaf_hash(d) for d in REFERENCE_LEAVES]
    assert root_of([]) == EMPTY_ROOT
    assert EMPTY_ROOT.hex().startswith("e3b0c442") and EMPTY_ROOT.hex().endswith("b855")
    assert root_of(leaves[:1]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert root_of(leaves).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_every_root_in_the_vectors_is_a_root_of_the_reference_tree() -> None:
    leaves = [leaf_hash(d) for d in REFERENCE_LEAVES]
    seen = 0
    for f in (VECTORS / "consistency").glob("[0-9]/happy-path.json"):
        case = json.loads(f.read_text())
        assert root_of(leaves[: case["size1"]]) == _b(case["root1"])
        assert root_of(leaves[: case["size2"]]) == _b(case["root2"])
        seen += 1
    assert seen == 5
