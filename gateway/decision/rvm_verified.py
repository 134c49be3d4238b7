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
        "aed1c51d83bc5dede329e142bc9fd6e1f9f7fa600c667e471f06c1f42a5cf5f1",  # agreement/agreement.rego
        "7db604882cd4b018def6f7cf988d04c41de8c75e08df0e1af15c8e0a94602f67",  # consent/consent.rego
        "5d8bd81ae3763216393b898dd182b193b9f07dc5368f64d10aa048b996ff1320",  # decision/decision.rego
        "13dff08579a7cb34a3491f6e3a88189abb2c894fb68d4348fd26f98995dd3618",  # lib/lib.rego
        "51004b419c9e81b9ca524f2a0a1a289b505e3124e84900fc9dc16f827edfda18",  # transfer/transfer.rego
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
