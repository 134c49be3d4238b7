"""The README's walkthrough, run as written: every command must succeed and show what the README says."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def walkthrough_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Walkthrough", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the walkthrough has a sh block"
    return [line for line in block.group(1).splitlines() if line.startswith("fedgate ")]


def test_walkthrough_has_the_steward_and_auditor_path() -> None:
    verbs = [shlex.split(c)[1] for c in walkthrough_commands()]
    assert verbs[:4] == ["synth", "keygen", "audit", "ingest"] and "catalog" in verbs and "policy" in verbs


def test_readme_walkthrough_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    outputs: dict[str, str] = {}
    for command in walkthrough_commands():
        args = shlex.split(command)[1:]
        redirect = None
        if ">" in args:
            redirect = tmp_path / args[args.index(">") + 1]
            args = args[: args.index(">")]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if redirect is not None:
            redirect.write_text(result.stdout)
        outputs[" ".join(args[:2])] = result.stdout + result.stderr
    assert "published cohort v1: 20,000 rows" in outputs["ingest --config"]
    assert "passes" in outputs["ingest --config"]
    assert "cohort" in outputs["catalog --config"]
    explained = outputs["policy explain"]
    assert "decision: allow" in explained and "DSA-2026-014 lets org-aphp run crosstab queries" in explained
    assert outputs["audit verify"].startswith("OK fedgate.example/site-de")
    # The report counts what the walkthrough did (one dataset published: fewer than 5, so hidden) and names
    # no one.
    report = outputs["audit report"]
    assert re.search(r"datasets published\s+<5\s*\n", report) and "researcher-17" not in report
    # The steward's files: keys private, no raw identifier in the store.
    assert (tmp_path / "examples/site-de/keys/master.key").stat().st_mode & 0o777 == 0o600
    store = (tmp_path / "examples/site-de/var/store.duckdb").read_bytes()
    assert b"MRN-DE-" not in store


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Researchers: the Python client", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return block.group(1)


def test_readme_client_example_runs_against_two_gateways(tmp_path: Path) -> None:
    """The README's client example, pointed at two real gateways (the names and agreement swapped in)."""
    from federation_sites import build_federation, running_federation
    from gateway_site import AUDIENCE
    from oidc_issuer import LoopbackTestIssuer

    with LoopbackTestIssuer(audience=AUDIENCE) as idp:
        federation = build_federation(tmp_path, idp.issuer_url, ["site-de", "site-fr"], rows=2000)
        with running_federation(federation) as urls:
            code = readme_python_block()
            code = code.replace("https://fedgate.site-de.example", urls["site-de"])
            code = code.replace("https://fedgate.site-fr.example", urls["site-fr"])
            code = code.replace("DSA-DEMO-2026", "DSA-TEST-OPEN")
            token = idp.token(sub="readme", org="org-aphp", country="FR", roles=["researcher"])
            namespace: dict[str, object] = {"token": token, "print": lambda *a, **k: None}
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert {"table", "pooled", "fit"} <= set(namespace)
