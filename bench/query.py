"""Query latency and throughput of one site gateway over real HTTP, with the audit log on.

    python bench/query.py [--rows N] [--seconds S] [--clients C] [--rate R] [--workers W]

1. A filtered count grouped by two columns on an N-row pseudonymized dataset (default 10M): p50 of the
   gateway's end-to-end latency against raw DuckDB running the same aggregate in the same run, the two
   taking turns round by round.
2. Small queries (a count by one column on a 20,000-row dataset) from C concurrent clients (default 64):
   - throughput: each client sends its next request as soon as the last one is answered, for S seconds;
     `rps` is the requests answered per second;
   - latency at a fixed rate: the C clients together send R requests/s (default 500) on a fixed schedule for
     S seconds, each latency counted from the moment its request was due (so a stalled server cannot hide
     its queue); `p99_ms` is their 99th percentile. With C clients waiting on each other, Little's law ties
     closed-loop latency to C / throughput, so the closed-loop p99 is printed too but is not the target.
   - the same schedule at half the measured throughput, for the latency of a gateway with headroom.
The gateway runs as `fedgate serve` (W workers, default one per core) in its own processes; the load
comes from this one, on uvloop, each client holding one keep-alive HTTP/1.1 connection whose responses
httptools parses (the C parser the gateway's uvicorn uses): about 0.1 ms of the shared CPU per request
against 0.35-0.44 ms for aiohttp's client, so the load takes less of the cores the gateway runs on.
Prints progress, then one JSON object as the last line:
{"ratio_to_duckdb", "p50_ms", "duckdb_p50_ms", "rps", "p99_ms", "closed_loop_p99_ms",
"gateway_cpu_ms_per_request", "offered_rps", "half_capacity_rps", "half_capacity_p99_ms",
"failed_requests"}; a request the gateway did not answer (a dropped connection, an error status) counts in
`failed_requests` and in no other figure. `gateway_cpu_ms_per_request` is the CPU time all the gateway's
processes used during the closed loop, per request answered: with the load on the same cores, it says how
far a machine is from the throughput target better than the throughput itself (null without /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import httptools
import httpx

try:  # libuv's event loop, which the gateway runs on too: less of the shared CPU goes to the load itself
    from uvloop import run as run_load
except ImportError:  # no uvloop on Windows
    run_load = asyncio.run  # type: ignore[assignment]

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_site(
    work: Path, rows: int, issuer: str, port: int, workers: int = 1, server: tuple[str, ...] = ()
) -> Path:
    """A site folder with a bench agreement, keys, and two ingested datasets: `big` and `small`. `server`:
    more lines of the config's `[server]` table (`key = value`)."""
    from audit.keys import generate_log_key
    from connectors import ParquetConnector
    from pseudonymize.ingest import ingest
    from pseudonymize.keys import SecretKey
    from pseudonymize.spec import load_spec
    from pseudonymize.store import Store

    shutil.copytree(ROOT / "policies", work / "policies", ignore=shutil.ignore_patterns("*_test.rego"))
    agreements = json.loads((work / "policies/data/agreements.json").read_text())
    agreements["DSA-BENCH"] = {
        "title": "Benchmark", "parties": ["org-charite", "org-aphp"], "purposes": ["DUO:0000006"],
        "commercial_use": False, "collaboration": True, "return_of_results": True,
        "datasets": {"big": {"columns": COLUMNS}, "small": {"columns": COLUMNS}},
        "query_kinds": ["count", "crosstab"], "approval_kinds": [], "not_before": "2026-01-01",
        "not_after": (datetime.date.today() + datetime.timedelta(days=730)).isoformat(),
        "thresholds": {"min_cell_count": 10}, "dp": None,
        "standard_contractual_clauses": [], "export_licences": [],
    }  # fmt: skip
    (work / "policies/data/agreements.json").write_text(json.dumps(agreements))
    (work / "keys").mkdir()
    master = work / "keys/master.key"
    master.write_text(base64.b64encode(os.urandom(32)).decode())
    master.chmod(0o600)
    generate_log_key(work / "keys/log.key")
    config = work / "site.toml"
    config.write_text(
        'site_id = "site-bench"\njurisdiction = "DE"\nstore_url = "duckdb:///var/store.duckdb"\n'
        'audit_url = "sqlite:///var/audit.db"\npolicy_dir = "policies"\nmaster_key_file = "keys/master.key"\n'
        f'log_key_file = "keys/log.key"\n[oidc]\nissuer = "{issuer}"\naudience = "{AUDIENCE}"\n'
        f"[server]\nport = {port}\nworkers = {workers}\n" + "".join(f"{line}\n" for line in server)
    )
    spec_text = (ROOT / "examples/cohort.spec.yaml").read_text()
    (work / "var").mkdir()
    with Store(f"duckdb:///{work / 'var/store.duckdb'}") as store:
        for name, n in (("big", rows), ("small", 20_000)):
            source = work / f"{name}.parquet"
            subprocess.run([sys.executable, "-c", GENERATE, str(n), str(source)], check=True)
            spec_path = work / f"{name}.spec.yaml"
            spec_path.write_text(spec_text.replace("dataset: cohort", f"dataset: {name}"))
            started = time.perf_counter()
            key = SecretKey.from_file(master)
            spec = load_spec(spec_path)
            connector = ParquetConnector(source)
            entry = ingest(
                connector, spec, str(spec_path), key, store, jurisdiction="DE", override_k=True
            ).entry
            print(
                f"ingested {name}: {entry.row_count:,} rows in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
            source.unlink()
    return config


def serve(config: Path, port: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start `fedgate serve --config config` (in `env`) and wait until it answers on `port`: the server's
    process, its stderr piped, and its URL. SystemExit with its last words if it does not start."""
    server = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return server, url
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except BaseException:  # interrupted while waiting: no gateway is left running
        stop(server)
        raise
    errors = stop(server)
    raise SystemExit(f"the gateway did not start: {errors.decode(errors='replace')[-2000:]}")


def stop(server: subprocess.Popen[bytes]) -> bytes:
    """Stop `fedgate serve` (its workers finish what they serve) and return what it wrote to stderr; killed
    if it has not stopped within 60 s."""
    server.terminate()
    try:
        return server.communicate(timeout=60)[1] or b""
    except subprocess.TimeoutExpired:
        server.kill()
        return server.communicate()[1] or b""


def researcher_tokens(idp: Any, clients: int) -> list[str]:
    """One researcher token per client, from the benchmark's identity provider."""
    return [
        idp.token(sub=f"bench-{i}", org="org-aphp", country="FR", roles=["researcher"], ttl_s=3600)
        for i in range(clients)
    ]


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process `pid` and its descendants, read from /proc; None
    where there is no /proc. A gateway's CPU per request compares machines of different speed better than
    its throughput does."""
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").is_file():
        return None
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    return sum(times.get(p, 0.0) for p in tree)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def body(dataset: str, threshold: float, group_by: list[str]) -> dict[str, Any]:
    # A different threshold each time: identical queries are limited per agreement, and that is not measured.
    return {
        "dataset": dataset,
        "agreement": "DSA-BENCH",
        "purpose": {"duo": ["DUO:0000006"]},
        "kind": "crosstab",
        "filters": {"column": "bmi", "op": ">", "value": threshold},
        "group_by": group_by,
    }


def latency(url: str, token: str, store: Path, rounds: int) -> tuple[float, float]:
    """p50 of the gateway and of raw DuckDB on the 10M-row aggregate, in ms.

    The two alternate round by round: the machine's speed can drift within a minute, and timing all the
    gateway's rounds before all of DuckDB's would put that drift into the ratio."""
    headers = {"Authorization": f"Bearer {token}"}
    sql = (
        "SELECT sex, smoking, count(*) FROM ds_big WHERE bmi > ? AND consent_withdrawn = false "
        "AND list_has_all(?, string_split(consent_duo, ' ')) GROUP BY sex, smoking"
    )
    allowed = ["DUO:0000042", "DUO:0000006", "DUO:0000046", "DUO:0000045", "DUO:0000021", "DUO:0000019"]
    gateway: list[float] = []
    raw: list[float] = []
    con = duckdb.connect(str(store), read_only=True)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            for i in range(rounds + 3):
                start = time.perf_counter()
                response = http.post("/v1/queries", json=body("big", 18.0 + i / 1000, ["sex", "smoking"]))
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                start = time.perf_counter()
                con.execute(sql, [18.0 + i / 1000, allowed]).fetchall()
                raw_elapsed = time.perf_counter() - start
                if i >= 3:
                    gateway.append(elapsed)
                    raw.append(raw_elapsed)
    finally:
        con.close()
    return statistics.median(gateway) * 1000, statistics.median(raw) * 1000


async def closed_loop(url: str, tokens: list[str], seconds: float, clients: int) -> tuple[float, list[float]]:
    """Each client sends its next request when the last is answered: the most the gateway answers."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    counter = 0

    async def client(http: LoadClient) -> None:
        nonlocal counter
        while time.perf_counter() < stop:
            counter += 1
            start = time.perf_counter()
            if await http.small_query(10 + counter / 1e6):
                latencies.append(time.perf_counter() - start)

    load = [LoadClient(url, tokens[i % len(tokens)]) for i in range(clients)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for http in load))
        return len(latencies) / (time.perf_counter() - started), latencies
    finally:
        for http in load:
            http.close()


async def fixed_rate(
    url: str, tokens: list[str], seconds: float, clients: int, rate: float, settle_s: float = 0.0
) -> list[float]:
    """The clients together send `rate` requests/s on a schedule; latency counts from when each was due.
    Requests due in the first `settle_s` seconds are sent but not counted."""
    latencies: list[float] = []
    interval = clients / rate
    begin = time.perf_counter() + 0.1
    give_up = begin + 2 * seconds
    counter = 0

    async def client(http: LoadClient, i: int) -> None:
        nonlocal counter
        due = begin + i * interval / clients
        while due < begin + seconds:
            now = time.perf_counter()
            if now > give_up:
                # A gateway this far behind will not catch up: what is still due counts as waiting until now.
                while due < begin + seconds:
                    if due >= begin + settle_s:
                        latencies.append(now - due)
                    due += interval
                return
            if due > now:
                await asyncio.sleep(due - now)
            counter += 1
            if await http.small_query(20 + counter / 1e6) and due >= begin + settle_s:
                latencies.append(time.perf_counter() - due)
            due += interval

    load = [LoadClient(url, tokens[i % len(tokens)]) for i in range(clients)]
    try:
        await asyncio.gather(*(client(http, i) for i, http in enumerate(load)))
    finally:
        for http in load:
            http.close()
    return latencies


FAILED: list[str] = []
TIMEOUT_S = 60.0


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load; httptools parses what the gateway sends back."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self.usable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.usable = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_complete(self) -> None:  # httptools' callback: a whole response has been read
        if not self._parser.should_keep_alive():
            self.close()  # the gateway closes the connection after this response: the next one opens anew
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the gateway closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, request: bytes) -> int:
        """Send one whole request and wait for the status of its response, read to its end."""
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(TIMEOUT_S, self._fail, TimeoutError("no answer within the timeout"))
        try:
            self._transport.write(request)
            return await waiter
        finally:
            timer.cancel()


class LoadClient:
    """One client of the load: small queries on one connection, opened again after a failure."""

    def __init__(self, url: str, token: str) -> None:
        address = urlsplit(url)
        self._host, self._port = address.hostname or "127.0.0.1", address.port or 80
        self._head = (
            f"POST /v1/queries HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self._connection: _Connection | None = None

    async def small_query(self, threshold: float) -> bool:
        """Send one small query; False (and the failure kept in FAILED) when it got no answer.

        A refused or dropped connection, or any status but 200 (a refusal, an error, a query left for a
        steward), is the gateway's failure to answer, which the figures must show rather than end the run:
        it counts in `failed_requests`, not in the latencies or the throughput."""
        payload = json.dumps(body("small", threshold, ["sex"])).encode()
        try:
            connection = self._connection
            if connection is None or not connection.usable:
                connect = asyncio.get_running_loop().create_connection(_Connection, self._host, self._port)
                _, opened = await asyncio.wait_for(connect, TIMEOUT_S)
                self._connection = connection = opened
            status = await connection.exchange(
                self._head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            )
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            FAILED.append(type(exc).__name__)
            self.close()
            return False
        if status != 200:
            FAILED.append(f"HTTP {status}")
            return False
        return True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--rate", type=float, default=500.0, help="requests/s offered in the fixed-rate phase"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="uvicorn workers (default: one per core)"
    )
    args = parser.parse_args()
    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-query-"))
    port = free_port()
    with UnsafeLocalIdentityProvider(audience=AUDIENCE) as idp:
        config = build_site(work, args.rows, idp.issuer_url, port, args.workers)
        server, url = serve(config, port)
        try:
            tokens = researcher_tokens(idp, args.clients)
            p50, raw_p50 = latency(url, tokens[0], work / "var/store.duckdb", args.rounds)
            print(
                f"filtered 2-way count on {args.rows:,} rows: gateway p50 {p50:.1f} ms, "
                f"DuckDB p50 {raw_p50:.1f} ms"
            )
            cpu_before = tree_cpu_seconds(server.pid)
            rps, closed = run_load(closed_loop(url, tokens, args.seconds, args.clients))
            cpu_after = tree_cpu_seconds(server.pid)
            closed_p99 = percentile(closed, 99) * 1000
            cpu_ms = (
                (cpu_after - cpu_before) / len(closed) * 1000
                if cpu_before is not None and cpu_after is not None and closed
                else None
            )
            print(
                f"{args.clients} clients, closed loop: {rps:.0f} requests/s, p99 {closed_p99:.1f} ms"
                + (f", gateway CPU {cpu_ms:.2f} ms per request" if cpu_ms is not None else ""),
                flush=True,
            )
            fixed = run_load(fixed_rate(url, tokens, args.seconds, args.clients, args.rate))
            p99 = percentile(fixed, 99) * 1000
            print(
                f"{args.clients} clients at {args.rate:.0f} requests/s: "
                f"p50 {percentile(fixed, 50) * 1000:.1f} ms, p99 {p99:.1f} ms",
                flush=True,
            )
            # The same schedule at half the measured capacity: the latency a gateway with headroom gives.
            half = max(1.0, rps / 2)
            relaxed = run_load(fixed_rate(url, tokens, args.seconds, args.clients, half))
            half_p99 = percentile(relaxed, 99) * 1000
            print(f"{args.clients} clients at {half:.0f} requests/s (half capacity): p99 {half_p99:.1f} ms")
        finally:
            stop(server)
    shutil.rmtree(work, ignore_errors=True)
    figures = {
        "ratio_to_duckdb": round(p50 / raw_p50, 2),
        "p50_ms": round(p50, 2),
        "duckdb_p50_ms": round(raw_p50, 2),
        "rps": round(rps, 1),
        "p99_ms": round(p99, 1),
        "closed_loop_p99_ms": round(closed_p99, 1),
        "gateway_cpu_ms_per_request": round(cpu_ms, 2) if cpu_ms is not None else None,
        "offered_rps": args.rate,
        "half_capacity_rps": round(half, 1),
        "half_capacity_p99_ms": round(half_p99, 1),
        "failed_requests": len(FAILED),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
