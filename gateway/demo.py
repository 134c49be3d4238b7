"""`make demo`: a three-site federation on this machine, end to end.

Synthetic cohorts for hospitals in Germany, France and the United States are pseudonymized at each site;
three gateways and a local (unsafe, demo-only) identity provider start on loopback; a researcher in Paris
runs a federated cross-tabulation and a federated logistic regression; the US site refuses the transfer
to France that its agreement does not allow, and says so; the sites cosign each other's audit
checkpoints; an auditor verifies all three logs offline. Every process the demo starts is stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from gateway.auth.local_idp import UnsafeLocalIdentityProvider
from gateway.client import Federation

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
SITES = [("site-de", "DE", "org-charite"), ("site-fr", "FR", "org-aphp"), ("site-us", "US", "org-ucsf")]
AGREEMENT = "DSA-DEMO-2026"
COLUMNS = ["age_band", "sex", "country", "icd10", "hba1c", "bmi", "systolic_bp", "smoking", "outcome",
           "survival_days", "event"]  # fmt: skip
console = Console(width=int(os.environ.get("COLUMNS", "110")))
ENV = {**os.environ, "COLUMNS": "110"}


def fedgate(*args: str, capture: bool = False, quiet: bool = False) -> str:
    """Run one `fedgate` command as a steward would, showing it first; stop the demo if it fails."""
    if not quiet:
        console.print(f"[bold cyan]$ fedgate {shlex.join(args)}[/]", highlight=False)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=OUT,
        env=ENV,
        stdout=subprocess.PIPE if capture or quiet else None,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if quiet:
            console.print(result.stdout, result.stderr, highlight=False)
        raise SystemExit(f"demo stopped: `fedgate {shlex.join(args)}` exited with {result.returncode}")
    return result.stdout.strip() if result.stdout else ""


def step(title: str, why: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))
    console.print(why, style="dim")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agreement(site_country: str) -> dict[str, Any]:
    """The demo agreement as each site records it; only the EU sites name clauses for transfers abroad."""
    clauses = [] if site_country == "US" else [{"id": "EU-SCC-2021/914 module 1", "countries": ["US"]}]
    return {
        "title": "Cardiometabolic outcomes across three university hospitals",
        "parties": [org for _, _, org in SITES],
        "purposes": ["DUO:0000006"],
        "commercial_use": False,
        "collaboration": True,
        "return_of_results": True,
        "datasets": {"cohort": {"columns": COLUMNS}},
        "query_kinds": ["count", "crosstab", "summary", "histogram", "quantiles", "glm", "kaplan_meier"],
        "approval_kinds": [],
        "not_before": "2026-01-01",
        "not_after": (date.today() + timedelta(days=730)).isoformat(),
        "thresholds": {"min_cell_count": 10},
        "dp": None,
        "standard_contractual_clauses": clauses,
        "export_licences": [],
    }


def write_site(site_id: str, country: str, issuer: str, port: int) -> Path:
    folder = OUT / site_id
    shutil.copytree(ROOT / "policies", folder / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
    data = folder / "policies/data/agreements.json"
    agreements = json.loads(data.read_text())
    agreements[AGREEMENT] = agreement(country)
    data.write_text(json.dumps(agreements, indent=2))
    config = folder / "site.toml"
    config.write_text(
        f'site_id = "{site_id}"\njurisdiction = "{country}"\nstore_url = "duckdb:///var/store.duckdb"\n'
        'audit_url = "sqlite:///var/audit.db"\npolicy_dir = "policies"\n'
        'master_key_file = "keys/master.key"\nlog_key_file = "keys/log.key"\n'
        'peer_key_file = "keys/peer.key"\nwitness_key_file = "keys/witness.key"\n'
        f'audit_origin = "fedgate.example/{site_id}"\n'
        f'[oidc]\nissuer = "{issuer}"\naudience = "{site_id}"\n'
        f"[server]\nport = {port}\n"
    )
    return config


@contextmanager
def gateways(configs: dict[str, Path], ports: dict[str, int]) -> Iterator[dict[str, str]]:
    """Start one `fedgate serve` per site; stop them all, whatever happens."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for site_id, config in configs.items():
            log = (OUT / f"{site_id}.log").open("wb")
            logs.append(log)
            console.print(
                f"[bold cyan]$ fedgate serve --config {config.relative_to(OUT)} &[/]", highlight=False
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                    cwd=OUT,
                    env=ENV,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
        deadline = time.monotonic() + 90
        for site_id, url in urls.items():
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).is_success:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise SystemExit(f"demo stopped: {site_id} did not start (see demo-out/{site_id}.log)")
                time.sleep(0.2)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value) or "—"
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show(frame: pd.DataFrame, title: str) -> None:
    """A DataFrame as a table, without the columns that hold nothing."""
    frame = frame[[c for c in frame.columns if any(_cell(v) != "—" for v in frame[c])]]
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(_cell(v)) for v in row))
    console.print(table)


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    spec_path = OUT / "cohort.spec.yaml"
    shutil.copy(ROOT / "examples/cohort.spec.yaml", spec_path)
    ports = {site_id: free_port() for site_id, _, _ in SITES}

    audiences = [s for s, _, _ in SITES]
    with UnsafeLocalIdentityProvider(audience="fedgate-demo") as idp:
        step("1. Three hospitals' data", "Synthetic cohorts with names, MRNs and birth dates, one per site.")
        fedgate("synth", "--sites", "3", "--rows", "60000", "--seed", "7", "--out", "demo-data")

        step("2. Each site pseudonymizes locally", "Keys never leave a site; the store holds no identifier.")
        configs = {s: write_site(s, c, idp.issuer_url, ports[s]) for s, c, _ in SITES}
        keys: dict[str, dict[str, str]] = {}
        for site_id, config in configs.items():
            rel = str(config.relative_to(OUT))
            fedgate("keygen", "--config", rel, quiet=True)
            keys[site_id] = {
                "log_key": fedgate("audit", "keygen", "--config", rel, capture=True, quiet=True),
                "request_key": fedgate(
                    "peer", "keygen", "--config", rel, capture=True, quiet=True
                ).splitlines()[-1],
                "witness_key": fedgate("witness", "keygen", "--config", rel, capture=True, quiet=True),
            }
            fedgate("ingest", "--config", rel, "--dataset", "cohort", "--spec", "cohort.spec.yaml",
                    "--source", f"demo-data/{site_id}/patients.parquet")  # fmt: skip
        for site_id, config in configs.items():
            peers = "".join(
                f'\n[[peers]]\nid = "{p}"\nurl = "http://127.0.0.1:{ports[p]}"\n'
                f'request_key = "{keys[p]["request_key"]}"\nlog_key = "{keys[p]["log_key"]}"\n'
                f'witness_key = "{keys[p]["witness_key"]}"\n'
                for p in configs
                if p != site_id
            )
            config.write_text(config.read_text() + peers)

        step(
            "3. Three gateways and an identity provider on loopback", "Each site decides with its own policy."
        )
        with gateways(configs, ports) as urls:
            token = idp.token(
                sub="researcher-17",
                org="org-aphp",
                country="FR",
                roles=["researcher"],
                ttl_s=3600,
                aud=audiences,
            )
            steward = idp.token(
                sub="steward-1", org="org-aphp", country="FR", roles=["steward"], ttl_s=3600, aud=audiences
            )
            auditor = idp.token(
                sub="auditor-1", org="org-aphp", country="FR", roles=["auditor"], ttl_s=3600, aud=audiences
            )

            step(
                "4. A federated cross-tabulation",
                "A researcher in Paris asks all three sites through site-fr.",
            )
            with Federation(urls["site-fr"], token) as federation:
                result = federation.crosstab("cohort", AGREEMENT, "DUO:0000006", group_by=["age_band", "sex"])
                show(result.frame, f"age band × sex, pooled over {', '.join(result.covered)}")
                show(result.sites, "what each site answered")

            step(
                "5. A federated logistic regression",
                "Over the sites that answered; they exchange only XᵀWX and scores, never rows.",
            )
            answered = [
                s
                for s, st in zip(result.sites["site"], result.sites["status"], strict=True)
                if st == "answered"
            ]
            with Federation(urls["site-fr"], token, sites=[str(s) for s in answered]) as federation:
                fit = federation.glm(
                    "cohort", AGREEMENT, "DUO:0000006", outcome="event", family="binomial",
                    numeric=["bmi", "systolic_bp"],
                    categorical={"sex": ["F", "M"], "smoking": ["never", "former", "current"]},
                )  # fmt: skip
            show(
                fit.summary().reset_index(), f"death during follow-up, logistic ({fit.iterations} iterations)"
            )
            show(pd.DataFrame(fit.sites), "what each site answered")

            step(
                "6. Peers cosign each other's audit checkpoints", "No site can rewrite its history unnoticed."
            )
            for url in urls.values():
                submitted = httpx.post(
                    f"{url}/v1/witness/submissions",
                    headers={"Authorization": f"Bearer {steward}"},
                    timeout=30,
                )
                submitted.raise_for_status()
            for site_id, url in urls.items():
                export = httpx.get(
                    f"{url}/v1/audit/export", headers={"Authorization": f"Bearer {auditor}"}, timeout=60
                )
                export.raise_for_status()
                (OUT / f"{site_id}.audit").write_bytes(export.content)

        step(
            "7. An auditor verifies every log offline", "With the sites' public keys and two witnesses each."
        )
        for site_id in configs:
            witnesses = [a for p in configs if p != site_id for a in ("--witness", keys[p]["witness_key"])]
            key = keys[site_id]["log_key"]
            fedgate("audit", "verify", f"{site_id}.audit", "--key", key, *witnesses, "--min-witnesses", "2")

    console.print()
    elapsed = time.perf_counter() - started
    console.print(
        f"[bold green]demo finished in {elapsed:.0f}s[/]; every gateway stopped; files are in {OUT}"
    )


if __name__ == "__main__":
    main()
