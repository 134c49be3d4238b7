"""The offline verifier imports nothing from the writer side (no log, storage, witness, SQLAlchemy)."""

from __future__ import annotations

import subprocess
import sys

WRITER_SIDE = ("audit.log", "audit.storage", "audit.witness", "audit.keys", "sqlalchemy", "gateway")


def test_importing_the_verifier_loads_no_writer_module() -> None:
    code = (
        "import sys, audit.verify, audit\n"
        "audit.verify_export\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({WRITER_SIDE!r}))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_package_exposes_writer_names_lazily() -> None:
    import audit

    assert audit.AuditLog.__module__ == "audit.log"
    assert audit.Witness.__module__ == "audit.witness"


def test_every_public_name_resolves() -> None:
    import audit
    import audit.verify

    for module in (audit, audit.verify):
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_a_verifier_worker_starts_light() -> None:
    code = (
        "import sys, audit.verify.parallel\nprint('cryptography' in sys.modules, 'rfc8785' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
