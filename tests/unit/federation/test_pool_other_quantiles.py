"""Federated quantiles whose sites merged different rare levels into "(other)": a pooled level's quantiles
come only from that level's own values, and "(other)"'s from everything else, as for the other kinds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gateway.federation.combine import REASON_AT_SITE, SiteTable
from gateway.federation.quantiles import SiteQuantiles, plan_edges, pool_quantiles
from pseudonymize.disclosure import DisclosureRules, protect_histogram, protect_quantiles
from pseudonymize.disclosure.levels import OTHER, recode_rare_levels, withhold_merged_quantiles

PROBS = [0.25, 0.5, 0.75]
NAMES = [f"q{p:g}" for p in PROBS]
RULES = DisclosureRules(10)


def _round1(site: str, groups: dict[str, np.ndarray]) -> SiteQuantiles:
    """A site's round-1 quantiles by `g` as its gateway releases them: rare levels merged into "(other)",
    whose quantiles are withheld."""
    executed = pd.DataFrame({
        "g": list(groups),
        "n": [len(v) for v in groups.values()],
        **{name: [float(np.quantile(v, p)) for v in groups.values()]
           for name, p in zip(NAMES, PROBS, strict=True)},
    })  # fmt: skip
    merged = recode_rare_levels(executed, ["g"], RULES, merge=False)
    table = protect_quantiles(merged, ["g"], RULES, value_cols=NAMES, probs=PROBS)
    table = withhold_merged_quantiles(table, ["g"], NAMES, RULES)
    return SiteQuantiles.from_body(site, {"kind": "quantiles", **table.to_dict()}, ["g"], NAMES)


def _histogram(site: str, groups: dict[str, np.ndarray], edges: list[float]) -> SiteTable:
    """A site's round-2 histogram by `g` over the agreed edges, rare levels merged into "(other)"."""
    rows = [
        (g, b, int(n))
        for g, v in groups.items()
        for b, n in enumerate(np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1))
    ]
    frame = recode_rare_levels(pd.DataFrame(rows, columns=["g", "bin", "n"]), ["g"], RULES, merge=True)
    levels = {"bin": list(range(len(edges) + 1))}
    hist = protect_histogram(frame, ["g", "bin"], RULES, count_col="n", levels=levels)
    body = {"kind": "histogram", "columns": list(hist.frame.columns), **hist.to_dict()}
    return SiteTable.from_body(site, body, "histogram", ["g"])


def _pool(
    first: dict[str, dict[str, np.ndarray]], second: dict[str, dict[str, np.ndarray]] | None = None
) -> tuple[dict[Any, dict[str, Any]], list[str]]:
    """Both rounds over the sites' values by group (`second`: the values when round 2 ran, if they
    changed), pooled by group."""
    round1 = [_round1(site, groups) for site, groups in first.items()]
    edges = plan_edges(round1, NAMES[0], NAMES[-1])
    histograms = {site: _histogram(site, groups, edges) for site, groups in (second or first).items()}
    pooled = pool_quantiles(round1, histograms, ["g"], PROBS, NAMES, edges)
    return {row["g"]: row for row in pooled.rows}, pooled.reasons


def _assert_holds(row: dict[str, Any], values: np.ndarray, *, bounded: bool = True) -> None:
    """The pooled row describes exactly `values`: its n, and each quantile's bracket holds the true one
    (None is an open end: the sites' hidden bins left that side unbounded). `bounded`: both ends are
    edges, at most two bins apart, as where the bins around the quantile were released."""
    assert not row["suppressed"]
    assert row["n"] == len(values)
    for p, name in zip(PROBS, NAMES, strict=True):
        truth = float(np.quantile(values, p))
        lower, upper = row[f"{name}_lower"], row[f"{name}_upper"]
        if bounded:
            assert lower is not None and upper is not None, name
            assert upper - lower <= 2 * row["bin_width"] + 1e-9, name
        assert (lower if lower is not None else -np.inf) - 1e-9 <= truth, (name, lower, truth)
        assert truth <= (upper if upper is not None else np.inf) + 1e-9, (name, truth, upper)
        if lower is not None and upper is not None:
            assert abs(row[name] - truth) <= upper - lower + 1e-9


def test_a_level_one_site_merged_is_pooled_into_other_at_every_site() -> None:
    rng = np.random.default_rng(11)
    # A holds 6 values of L and 5 of R, merged into its "(other)" of 11; B holds 20000 values of L, higher.
    data = {
        "A": {"M": rng.uniform(40, 90, 20_000), "L": rng.uniform(40, 90, 6), "R": rng.uniform(40, 90, 5)},
        "B": {"M": rng.uniform(40, 90, 20_000), "L": rng.uniform(60, 90, 20_000)},
    }
    pooled, reasons = _pool(data)
    assert pooled.keys() == {"M", OTHER}
    # "(other)" is A's L and R with B's L: B's rows of L moved there, as A's could not be told apart.
    _assert_holds(pooled[OTHER], np.concatenate([data["A"]["L"], data["A"]["R"], data["B"]["L"]]))
    # A hid its M's bins beside its small "(other)" ones (complementary): M's brackets are open, but true.
    _assert_holds(pooled["M"], np.concatenate([data["A"]["M"], data["B"]["M"]]), bounded=False)
    assert any("1 level(s) pooled into (other)" in reason for reason in reasons)


def test_a_level_merged_into_a_hidden_other_is_hidden_with_it() -> None:
    rng = np.random.default_rng(12)
    # A's "(other)" is its 7 values of L, below the minimum: hidden, and so is every pooled group folded in.
    # (A hides its N beside it, complementary, and so the pool does too.)
    data = {
        "A": {"M": rng.uniform(40, 90, 20_000), "N": rng.uniform(40, 90, 30), "L": rng.uniform(40, 90, 7)},
        "B": {"M": rng.uniform(40, 90, 20_000), "L": rng.uniform(60, 90, 20_000)},
    }
    pooled, _ = _pool(data)
    assert pooled.keys() == {"M", "N", OTHER}
    for group in ("N", OTHER):
        assert pooled[group]["suppressed"] and pooled[group]["suppression_reason"] == REASON_AT_SITE
        assert pooled[group]["n"] is None and pooled[group][NAMES[1]] is None
    _assert_holds(pooled["M"], np.concatenate([data["A"]["M"], data["B"]["M"]]), bounded=False)


def test_a_level_merged_in_either_round_is_pooled_into_other() -> None:
    rng = np.random.default_rng(13)
    # A merged L (6 values) and K (5) in round 1 and showed L in round 2 (10 more had arrived): its round-1
    # "(other)" holds rows its round-2 bins name L, so L is pooled into "(other)" from both rounds' answers.
    early = {"M": rng.uniform(40, 90, 20_000), "L": rng.uniform(40, 90, 6), "K": rng.uniform(40, 90, 5)}
    later = {**early, "L": np.concatenate([early["L"], rng.uniform(40, 90, 10)])}
    b = {"M": rng.uniform(40, 90, 20_000), "L": rng.uniform(60, 90, 20_000)}
    pooled, reasons = _pool({"A": early, "B": b}, {"A": later, "B": b})
    assert pooled.keys() == {"M", OTHER}
    assert pooled[OTHER]["n"] == 6 + 5 + 20_000  # A's round-1 n of "(other)" and B's of L
    _assert_holds(pooled["M"], np.concatenate([early["M"], b["M"]]), bounded=False)
    assert any("1 level(s) pooled into (other)" in reason for reason in reasons)
