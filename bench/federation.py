"""Federation benchmark: a federated cross-tab against its slowest site, fan-out to 20 sites, federated GLM.

    python bench/federation.py [--rows N] [--rounds R] [--fanout-sites S] [--glm-rows M]

1. Three sites of N rows each (default 10M), every gateway its own `fedgate serve` process: p50 of a
   filtered 2-way cross-tab asked of each site directly, and p50 of the same cross-tab federated by the first
   site over all three (its own part in-process, the two peers over signed HTTP). Target: the federated p50
   at most 1.3 x the slowest single site's p50 measured in the same run.
2. S small sites (default 20, 2,000 rows each): p50 of a federated count fanned out by one of them to all.
3. The federated logistic GLM over 3 x M rows (default min(N, 1M)) with 10 parameters, timed by the GLM
   module's own entry point (`gateway.federation.glm_fit.time_federated_glm`), beside statsmodels' pooled
   fit of the same rows. When that entry point is missing, both figures are null and the output says so.
Prints progress, then one JSON object as the last line:
{"ratio_to_slowest_site", "fanout_20_sites_ms", "glm_seconds", "statsmodels_seconds"}.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

# bench/audit.py would shadow the `audit` package for a script run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
AUDIENCE = "fedgate-bench"
COLUMNS = ["age_band", "sex", "postcode_area", "country", "icd10", "hba1c", "bmi", "systolic_bp", "smoking",
           "outcome", "survival_days", "event"]  # fmt: skip
GENERATE = (
    "import sys; from gateway.synth import write_site_parquet; "
    "write_site_parquet(sys.argv[2], int(sys.argv[1]), 2026)"
)
SMALL_ROWS = 2_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_store(work: Path, name: str, rows: int) -> Path:
    """One pseudonymized store holding dataset `cohort`; every site of a run gets a copy."""
    from connectors import ParquetConnector
    from pseudonymize.ingest import ingest
    from pseudonymize.keys import SecretKey
    from pseudonymize.spec import load_spec
    from pseudonymize.store import Store

    folder = work / f"seed-{name}"
    folder.mkdir()
    master = folder / "master.key"
    master.write_text(base64.b64encode(os.urandom(32)).decode())
    master.chmod(0o600)
    source = folder / "source.parquet"
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), str(source)], check=True)
    started = time.perf_counter()
    spec_path = ROOT / "examples/cohort.spec.yaml"
    with Store(f"duckdb:///{folder / 'store.duckdb'}") as store:
        ingest(ParquetConnector(source), load_spec(spec_path), str(spec_path), SecretKey.from_file(master),
               store, jurisdiction="DE", override_k=True)  # fmt: skip
    print(f"ingested {rows:,} rows for the {name} sites in {time.perf_counter() - started:.1f}s", flush=True)
    source.unlink()
    return folder / "store.duckdb"


def _agreements() -> str:
    agreements = json.loads((ROOT / "policies/data/agreements.json").read_text())
    agreements["DSA-BENCH"] = {
        "title": "Benchmark", "parties": ["org-charite", "org-aphp"], "purposes": ["DUO:0000006"],
        "commercial_use": False, "collaboration": True, "return_of_results": True,
        "datasets": {"cohort": {"columns": COLUMNS}}, "query_kinds": ["count", "crosstab"],
        "approval_kinds": [],
        "not_before": "2026-01-01", "not_after": "2030-12-31",
        "thresholds": {"min_cell_count": 10}, "dp": None,
        "standard_contractual_clauses": [], "export_licences": [],
    }  # fmt: skip
    return json.dumps(agreements)


def build_sites(
    work: Path, ids: list[str], store: Path, issuer: str, peers_of: dict[str, list[str]]
) -> dict[str, tuple[Path, int]]:
    """Site folders with keys, the bench agreement, a store copy and `[[peers]]`: id -> (config, port)."""
    from audit.keys import generate_log_key
    from audit.notes import verifier_key_text
    from gateway.federation.signing import generate_peer_key, public_key_b64

    agreements = _agreements()
    ports = {sid: free_port() for sid in ids}
    request_keys: dict[str, str] = {}
    log_keys: dict[str, str] = {}
    for sid in ids:
        root = work / sid
        (root / "keys").mkdir(parents=True)
        (root / "var").mkdir()
        shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
        (root / "policies/data/agreements.json").write_text(agreements)
        master = root / "keys/master.key"
        master.write_text(base64.b64encode(os.urandom(32)).decode())
        master.chmod(0o600)
        log_key = generate_log_key(root / "keys/log.key")
        log_keys[sid] = verifier_key_text(f"fedgate.example/{sid}", log_key.public_key())
        request_keys[sid] = public_key_b64(generate_peer_key(root / "keys/peer.key").public_key())
        shutil.copy(store, root / "var/store.duckdb")
    sites = {}
    for sid in ids:
        root = work / sid
        lines = [
            f'site_id = "{sid}"', 'jurisdiction = "DE"', 'store_url = "duckdb:///var/store.duckdb"',
            'audit_url = "sqlite:///var/audit.db"', 'policy_dir = "policies"',
            'master_key_file = "keys/master.key"', 'log_key_file = "keys/log.key"',
            'peer_key_file = "keys/peer.key"',
            f'[oidc]\nissuer = "{issuer}"\naudience = "{AUDIENCE}"', f"[server]\nport = {ports[sid]}",
        ]  # fmt: skip
        for peer in peers_of.get(sid, []):
            lines.append(f'[[peers]]\nid = "{peer}"\nurl = "http://127.0.0.1:{ports[peer]}"\n'
                         f'request_key = "{request_keys[peer]}"\nlog_key = "{log_keys[peer]}"')  # fmt: skip
        (root / "site.toml").write_text("\n".join(lines) + "\n")
        sites[sid] = (root / "site.toml", ports[sid])
    return sites


@contextlib.contextmanager
def serving(sites: dict[str, tuple[Path, int]]) -> Iterator[dict[str, str]]:
    """Every site as its own `fedgate serve` process; stops each one it started."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for config, _ in sites.values():
            command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        urls = {sid: f"http://127.0.0.1:{port}" for sid, (_, port) in sites.items()}
        deadline = time.monotonic() + 30 + 5 * len(sites)
        for (sid, url), process in zip(urls.items(), processes, strict=True):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    assert process.stderr is not None
                    raise SystemExit(f"{sid} did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
            if process.stderr is not None:
                process.stderr.close()


def spec(kind: str, threshold: float, group_by: list[str]) -> dict[str, Any]:
    # A different threshold each round keeps every query distinct (identical queries are counted).
    return {"dataset": "cohort", "agreement": "DSA-BENCH", "purpose": {"duo": ["DUO:0000006"]}, "kind": kind,
            "filters": {"column": "bmi", "op": ">", "value": threshold}, "group_by": group_by}  # fmt: skip


def p50_ms(url: str, path: str, token: str, rounds: int, kind: str, group_by: list[str],
           check: Any = None) -> float:  # fmt: skip
    """Median latency of `rounds` requests after 2 warm-up requests."""
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
        for i in range(rounds + 2):
            started = time.perf_counter()
            response = http.post(path, json=spec(kind, 18.0 + i / 1000, group_by))
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if check is not None:
                check(response.json())
            if i >= 2:
                times.append(elapsed)
    return statistics.median(times) * 1000


def _covers(n: int) -> Any:
    def check(body: dict[str, Any]) -> None:
        if len(body["covered"]) != n:
            raise SystemExit(f"the federated answer covers {body['covered']}, not {n} sites: {body['sites']}")

    return check


def measure_glm(rows: int) -> tuple[float | None, float | None]:
    """(glm_seconds, statsmodels_seconds) from the GLM module's benchmark entry point, or (None, None)."""
    try:
        from gateway.federation.glm_fit import time_federated_glm
    except ImportError:
        print("federated GLM: gateway.federation.glm_fit.time_federated_glm is not available; null figures")
        return None, None
    figures = time_federated_glm(rows_per_site=rows, sites=3, parameters=10)
    print(f"federated logistic GLM, 3 x {rows:,} rows, 10 parameters: {figures}", flush=True)
    return float(figures["glm_seconds"]), float(figures["statsmodels_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows per site of the cross-tab sites")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--fanout-sites", type=int, default=20)
    parser.add_argument("--glm-rows", type=int, default=None, help="rows per site of the GLM (min(rows, 1M))")
    args = parser.parse_args()
    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-federation-"))
    try:
        with UnsafeLocalIdentityProvider(audience=AUDIENCE) as idp:
            token = idp.token(sub="bench", org="org-aphp", country="FR", roles=["researcher"], ttl_s=3600)
            big = ["big-1", "big-2", "big-3"]
            store = seed_store(work, "big", args.rows)
            sites = build_sites(
                work, big, store, idp.issuer_url, {s: [o for o in big if o != s] for s in big}
            )
            store.unlink()
            with serving(sites) as urls:
                groups = ["sex", "smoking"]
                singles = {
                    s: p50_ms(urls[s], "/v1/queries", token, args.rounds, "crosstab", groups) for s in big
                }
                federated = p50_ms(urls["big-1"], "/v1/federated-queries", token, args.rounds, "crosstab",
                                   groups, _covers(3))  # fmt: skip
            slowest = max(singles.values())
            print(f"cross-tab on {args.rows:,} rows per site: single-site p50 "
                  + ", ".join(f"{s} {v:.1f} ms" for s, v in singles.items())
                  + f"; federated over 3 sites p50 {federated:.1f} ms", flush=True)  # fmt: skip
            for sid in big:  # 10M-row stores are large; the fan-out phase needs none of them
                shutil.rmtree(work / sid, ignore_errors=True)

            small = [f"small-{i:02d}" for i in range(1, args.fanout_sites + 1)]
            store = seed_store(work, "small", SMALL_ROWS)
            peers_of = {small[0]: small[1:], **{s: [small[0]] for s in small[1:]}}
            sites = build_sites(work, small, store, idp.issuer_url, peers_of)
            with serving(sites) as urls:
                one = p50_ms(urls[small[0]], "/v1/queries", token, args.rounds, "count", ["sex"])
                fanout = p50_ms(urls[small[0]], "/v1/federated-queries", token, args.rounds, "count", ["sex"],
                                _covers(len(small)))  # fmt: skip
            print(f"count on {SMALL_ROWS:,} rows: one site p50 {one:.1f} ms; federated over {len(small)} "
                  f"sites p50 {fanout:.1f} ms", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    glm_seconds, statsmodels_seconds = measure_glm(args.glm_rows or min(args.rows, 1_000_000))
    figures = {
        "ratio_to_slowest_site": round(federated / slowest, 3),
        "fanout_20_sites_ms": round(fanout, 1),
        "glm_seconds": glm_seconds,
        "statsmodels_seconds": statsmodels_seconds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
