"""Two gateway configurations compared side by side: served at once, the load alternating between them.

    python bench/query_ab.py --a "KEY = VALUE" --b "KEY = VALUE" [--rate R] [--block S] [--rounds N]
                             [--workers W] [--rows N] [--clients C]

This machine's speed drifts by a factor of two from one minute to the next, so whole benchmark runs of two
builds taken in turn compare poorly. Here two gateways, A and B, built from bench/query.py's site and
differing only in the `[server]` lines given (`--a`, `--b`, each repeatable, e.g. `--a
"switch_interval_ms = 5"`), run at the same time with W workers each (default one per core). The idle one
costs next to nothing. bench/query.py's clients send its small query at R requests/s (default 500) to one
gateway for S seconds (default 6), then to the other, for N rounds (default 10), A first in even rounds and
B first in odd ones. Latency counts from when each request was due, as in bench/query.py; the first second
of each block is left out, as the load moves over. Each gateway is warmed up for 3 s first.

Prints each side's pooled p50/p90/p99 and its p99 per block, then one JSON object as the last line:
{"a": [lines], "b": [lines], "offered_rps", "a_p50_ms", "a_p90_ms", "a_p99_ms", "b_p50_ms", "b_p90_ms",
"b_p99_ms", "a_blocks_p99_ms", "b_blocks_p99_ms", "rounds_a_lower_p99", "a_answered", "b_answered",
"failed_requests"}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

# bench/audit.py would shadow the `audit` package for a script run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 1.0
"""The first second of each block, while the load moves from one gateway to the other, is not counted."""


def _bench_query() -> Any:
    """bench/query.py, for its site, its load and its figures."""
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench/query.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_lines(option: str, lines: list[str]) -> tuple[str, ...]:
    """The `[server]` lines of one side, each checked to be one TOML `key = value`."""
    for line in lines:
        try:
            if len(tomllib.loads(line)) != 1:
                raise tomllib.TOMLDecodeError("not one key")
        except tomllib.TOMLDecodeError:
            problem = "give one `key = value` line of the [server] table"
            raise SystemExit(f"{option} {line!r}: {problem}") from None
    return tuple(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", action="append", default=[], help="a [server] line of gateway A")
    parser.add_argument("--b", action="append", default=[], help="a [server] line of gateway B")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--block", type=float, default=6.0, help="seconds per block, the first not counted")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the site's big dataset (unused)")
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    sides = {"a": server_lines("--a", args.a), "b": server_lines("--b", args.b)}
    if args.block <= SETTLE_S:
        raise SystemExit(f"--block must be longer than the {SETTLE_S:g} s left out of each block")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    bench = _bench_query()
    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-ab-"))
    servers: list[Any] = []
    got: dict[str, list[float]] = {"a": [], "b": []}
    blocks: dict[str, list[float]] = {"a": [], "b": []}
    try:
        with UnsafeLocalIdentityProvider(audience=bench.AUDIENCE) as idp:
            urls: dict[str, str] = {}
            for side, lines in sides.items():
                port = bench.free_port()
                config = bench.build_site(work / side, args.rows, idp.issuer_url, port, args.workers, lines)
                server, urls[side] = bench.serve(config, port)
                servers.append(server)
            tokens = bench.researcher_tokens(idp, args.clients)
            for side in sides:
                bench.run_load(bench.fixed_rate(urls[side], tokens, 3.0, args.clients, args.rate))
            bench.FAILED.clear()
            for r in range(args.rounds):
                for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                    load = bench.fixed_rate(urls[side], tokens, args.block, args.clients, args.rate, SETTLE_S)
                    latencies = bench.run_load(load)
                    got[side] += latencies
                    blocks[side].append(bench.percentile(latencies, 99) * 1000 if latencies else float("nan"))
    finally:
        for server in servers:
            bench.stop(server)
        shutil.rmtree(work, ignore_errors=True)

    figures: dict[str, Any] = {"a": list(sides["a"]), "b": list(sides["b"]), "offered_rps": args.rate}
    for side in sides:
        shown = []
        for p in (50, 90, 99):
            value = round(bench.percentile(got[side], p) * 1000, 1) if got[side] else None
            figures[f"{side}_p{p}_ms"] = value
            shown.append(f"p{p} {value} ms")
        print(
            f"{side.upper()} {list(sides[side]) or '(defaults)'}: {len(got[side])} answered, "
            f"{', '.join(shown)}; p99 per block: {', '.join(f'{v:.0f}' for v in blocks[side])} ms"
        )
    lower = sum(1 for a, b in zip(blocks["a"], blocks["b"], strict=True) if a < b)
    print(f"A's p99 was lower in {lower} of {args.rounds} rounds")
    figures |= {
        "a_blocks_p99_ms": [round(v, 1) for v in blocks["a"]],
        "b_blocks_p99_ms": [round(v, 1) for v in blocks["b"]],
        "rounds_a_lower_p99": lower,
        "a_answered": len(got["a"]),
        "b_answered": len(got["b"]),
        "failed_requests": len(bench.FAILED),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
