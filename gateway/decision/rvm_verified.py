"""The policy modules the compiled engine (RVM) may run: the shipped ones, as verified against the
tree-walking engine and OPA.

regorus' RVM departs from Rego in ways that can allow what Rego denies: an assignment from an undefined
lookup does not fail its rule body, and a built-in error makes an expression undefined instead of failing
the evaluation (docs/policy.md, "Engines"). The shipped policies are written around both and their answers
are held to the tree-walking engine's and OPA's by the test suite; a module a steward wrote or changed has
had no such check, so a bundle with any other module is decided by the tree-walking engine, which follows
Rego. After changing a shipped module and passing the suite, print the new set with
`python -m gateway.decision.rvm_verified policies`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

#: SHA-256 of the source of each shipped policy module
VERIFIED_MODULES = frozenset(
    {
        "150614c2c929fa237ed50794b6e6b48e890d0a7c5d0938b41d5a0a5c9acb03ca",  # agreement/agreement.rego
        "ce258209534d6d936bec173469912cb7681fa8c0b6c4c75e797a5bdcc32d1bda",  # consent/consent.rego
        "884c5481ca11476fd8701aa1ca1a66805f48b48bced463642cf523f00a10832a",  # decision/decision.rego
        "d8db04103765e7b35b35999182d18005277c6b360593ccb3fc0c2e55f206a516",  # lib/lib.rego
        "1431dcd2b14471c1da7f82209ff15bdf53f02d4b77f7e33cac5be586acd15d46",  # transfer/transfer.rego
    }
)


def module_digest(source: str) -> str:
    """The SHA-256 of a module's source text, as VERIFIED_MODULES lists it."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def rvm_verified(policies: tuple[tuple[str, str], ...]) -> bool:
    """Whether every module of a bundle is one the RVM was verified on."""
    return all(module_digest(source) in VERIFIED_MODULES for _, source in policies)


if __name__ == "__main__":
    from gateway.decision.bundle import read_policies

    for path, source in read_policies(
        Path(sys.argv[1] if len(sys.argv) > 1 else "policies"), include_tests=False
    ):
        print(f'        "{module_digest(source)}",  # {path}')
