"""Disclosure rules end to end over real HTTP, each beside the attack it stops: the size of the filtered set,
rounding, summaries of small groups, histogram bins, and quantiles beside a rare group. True values come
from the store itself (read with DuckDB, read-only, under the consent filter the policy sets), so every
assertion compares what the gateway released with what it must not release."""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import gateway_site
import httpx
import pandas as pd
import pyarrow as pa
import pytest
from gateway_site import Site, bearer, build_site, consent_rule, running_gateway
from oidc_issuer import LoopbackTestIssuer

from gateway.synth import generate_site
from pseudonymize.store import Store

PURPOSE = {"duo": ["DUO:0000006"]}
OPEN = "DSA-TEST-OPEN"
ROUNDED = "DSA-TEST-ROUNDED"  # min cell 10, counts rounded half up to multiples of 5
MIN_CELL = 10
ROUND_TO = 5
TOO_SMALL = "the query selects fewer than 10 rows; an answer must rest on at least 10 rows (min_cell_count)"


def spec(kind: str, agreement: str = OPEN, **extra: Any) -> dict[str, Any]:
    return {"dataset": "cohort", "agreement": agreement, "purpose": PURPOSE, "kind": kind, **extra}


def ask(http: httpx.Client, idp: LoopbackTestIssuer, body: dict[str, Any], sub: str) -> httpx.Response:
    return http.post("/v1/queries", json=body, headers=bearer(idp, "researcher", sub=sub))


def released(http: httpx.Client, idp: LoopbackTestIssuer, body: dict[str, Any], sub: str) -> dict[str, Any]:
    response = ask(http, idp, body, sub)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def round_half_up(count: int, base: int = ROUND_TO) -> int:
    return ((count + base // 2) // base) * base


_NUMERAL = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_OPAQUE = {"request_id", "result_hash", "bundle_digest", "query_hash", "policy_bundle", "dataset_digest"}


def numbers_in(body: Any) -> list[float]:
    """Every number a response shows: JSON numbers, and numerals inside its texts (ids and hashes aside)."""
    found: list[float] = []
    stack: list[tuple[str | None, Any]] = [(None, body)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
        elif isinstance(value, str) and key not in _OPAQUE:
            found.extend(float(m) for m in _NUMERAL.findall(value))
    return found


def shows(body: Any, value: float) -> bool:
    return any(abs(n - value) <= 1e-9 * max(1.0, abs(value)) for n in numbers_in(body))


def audit_entries(http: httpx.Client, idp: LoopbackTestIssuer, request_id: str) -> list[dict[str, Any]]:
    response = http.get("/v1/audit/entries", headers=bearer(idp, "auditor"))
    assert response.status_code == 200
    entries = [json.loads(base64.b64decode(e["entry"])) for e in response.json()["entries"]]
    return [e for e in entries if e.get("request_id") == request_id]


def between(frame: pd.DataFrame, low: float, high: float) -> pd.DataFrame:
    """The rows a `between [low, high]` filter on bmi keeps (inclusive, as the gateway's SQL)."""
    return frame[(frame["bmi"] >= low) & (frame["bmi"] <= high)]


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admitted(site: Site) -> pd.DataFrame:
    """Every row the gateway's queries may see: the store's table under the policy's consent filter."""
    return admitted_rows(site)


def admitted_rows(site: Site) -> pd.DataFrame:
    """The store's latest cohort under the consent filter the policy sets (read-only, store closed after)."""
    with Store(site.settings.store_url) as store:
        entry = store.latest("cohort")
    assert entry is not None
    rule = consent_rule(site.settings, entry, spec("count"))
    path = site.settings.store_url.removeprefix("duckdb:///")
    with duckdb.connect(path, read_only=True) as con:
        rows = con.execute(f'select * from "{entry.table_name}"').df()
    keep = [
        rule.admits(c, w) for c, w in zip(rows[rule.consent_column], rows[rule.withdrawn_column], strict=True)
    ]
    frame = rows[keep].reset_index(drop=True)
    assert 1000 < len(frame) < len(rows) and frame["bmi"].notna().all()
    return frame


@pytest.fixture(scope="module")
def gateway_url(site: Site, admitted: pd.DataFrame) -> Iterator[str]:
    """The shared site's gateway, started only once `admitted` has read (and closed) the store."""
    with running_gateway(site.settings) as url:
        yield url


# -- query-set size ------------------------------------------------------------------------------------------


def test_filter_selecting_fewer_than_the_minimum_is_refused_without_its_size(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """A filter keeping 1..9 rows (its complement is the rest of the cohort) is a 403 saying the set is too
    small, never how small, in the answer or in the audit log; widened to 10+ rows it is answered."""
    values = admitted["bmi"].sort_values(ascending=False).tolist()
    # The heaviest 5..9 patients (cut where two values differ), then the heaviest 30 or so.
    low = next(v for i, v in enumerate(values) if i >= 4 and v != values[i + 1])
    small = admitted[admitted["bmi"] >= low]
    assert 5 <= len(small) < MIN_CELL
    response = ask(http, idp, spec("count", filters={"column": "bmi", "op": ">=", "value": low}), "qs-small")
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["title"] == "Refused by disclosure control" and problem["reasons"] == [TOO_SMALL]
    assert "rows" not in problem and not shows(problem, len(small))
    (refused,) = [e for e in audit_entries(http, idp, problem["request_id"]) if e["type"] == "query.refused"]
    assert refused["payload"]["stage"] == "disclosure" and refused["payload"]["reasons"] == [TOO_SMALL]
    assert not shows(refused["payload"], len(small))

    wide_low = values[29]
    answer = released(
        http, idp, spec("count", filters={"column": "bmi", "op": ">=", "value": wide_low}), "qs-small"
    )
    assert answer["rows"][0]["count"] == int((admitted["bmi"] >= wide_low).sum()) >= MIN_CELL


def test_a_statistic_counts_its_query_set_on_the_rows_holding_its_value(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: a summary of hba1c over everyone, then over everyone with hba1c but one patient. The rows
    missing hba1c are left out of both statistics, but counted as left out by the filter they would carry
    the second past the complement rule, and the two sums would differ by that patient's value."""
    present = admitted[admitted["hba1c"].notna()]
    assert int(admitted["hba1c"].isna().sum()) >= MIN_CELL  # enough missing rows to hide behind
    counts = admitted["bmi"].value_counts()
    bmi = next(float(v) for v in counts[counts == 1].index if (present["bmi"] == v).any())
    hba1c = {"column": "hba1c", "op": "is_null", "value": False}
    everyone = released(http, idp, spec("summary", params={"column": "hba1c"}), "missing-atk")
    assert everyone["rows"][0]["n"] == len(present)
    but_one = {"and": [hba1c, {"not": {"column": "bmi", "op": "=", "value": bmi}}]}
    refused = ask(http, idp, spec("summary", params={"column": "hba1c"}, filters=but_one), "missing-atk")
    assert refused.status_code == 403, refused.text
    assert "leaves out fewer than 10 rows" in refused.json()["detail"]
    # The same filter left without the value's rows counted: still refused, by the same rule.
    without = {"not": {"column": "bmi", "op": "=", "value": bmi}}
    again = ask(http, idp, spec("summary", params={"column": "hba1c"}, filters=without), "missing-atk")
    assert again.status_code == 403 and "leaves out fewer than 10 rows" in again.json()["detail"]


def test_a_table_of_three_dimensions_is_released_only_whole(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: hide a cell of a three-column table, then take it back from the two-column table the gateway
    releases on its own (each of its cells sums a line of the first). A table of three or more dimensions
    with any cell to hide is refused whole; one that needs nothing hidden is released as it is."""
    sparse = ["age_band", "smoking", "event"]
    assert admitted.groupby(sparse).size().min() < MIN_CELL
    refused = ask(http, idp, spec("count", group_by=sparse), "wide-atk")
    assert refused.status_code == 403, refused.text
    assert "three or more dimensions" in refused.json()["detail"]
    body = spec("summary", group_by=["age_band", "smoking", "outcome"], params={"column": "bmi"})
    assert ask(http, idp, body, "wide-atk").status_code == 403
    # A histogram's bins are a dimension: two group columns and the bins make three.
    edges = [20, 25, 30, 35]
    body = spec("histogram", group_by=["age_band", "smoking"], params={"column": "bmi", "edges": edges})
    assert ask(http, idp, body, "wide-atk").status_code == 403
    # The two-column table is protected on its own, as before.
    assert ask(http, idp, spec("crosstab", group_by=["age_band", "smoking"]), "wide-atk").status_code == 200

    dense = ["postcode_area", "smoking", "event"]
    truth = admitted.groupby(dense).size()
    assert truth.min() >= MIN_CELL
    table = released(http, idp, spec("count", group_by=dense), "wide-atk")
    cells = [r for r in table["rows"] if r["margin"] is None]
    assert not any(r["suppressed"] for r in table["rows"]) and len(cells) == len(truth)
    for row in cells:
        assert row["count"] == truth[(row["postcode_area"], row["smoking"], row["event"])]


def test_a_table_too_large_to_protect_in_bounded_time_is_refused_at_once(
    http: httpx.Client, idp: LoopbackTestIssuer
) -> None:
    """Attack on the gateway's threads: a histogram of 100 bins grouped by a continuous column has thousands
    of cells, whose complementary suppression would hold a pool thread for minutes (and every other query
    behind it). It is refused before suppression starts."""
    import time

    edges = [4 + i * 0.1 for i in range(101)]
    body = spec("histogram", group_by=["bmi"], params={"column": "hba1c", "edges": edges})
    started = time.monotonic()
    refused = ask(http, idp, body, "dos-atk")
    assert time.monotonic() - started < 10
    assert refused.status_code == 403, refused.text
    assert "more than 2,000 entries" in refused.json()["detail"]


def test_narrowing_a_filter_onto_one_patient_never_releases_a_small_count(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: shrink a `between` window around one patient's bmi, then AND three filters down to 1..3 rows.
    Every answer of 10+ rows is exact; every smaller one is refused and shows no number equal to its size."""
    counts = admitted["bmi"].value_counts()
    median = float(admitted["bmi"].median())
    target = min((float(v) for v in counts[counts == 1].index), key=lambda v: abs(v - median))
    sizes: dict[float, int] = {}
    for width in (2.0, 1.0, 0.5, 0.2, 0.1, 0.0):
        low, high = target - width, target + width
        true = len(between(admitted, low, high))
        body = spec("count", filters={"column": "bmi", "op": "between", "value": [low, high]})
        response = ask(http, idp, body, "qs-narrow")
        sizes[width] = true
        if true >= MIN_CELL:
            assert response.status_code == 200, response.text
            assert response.json()["rows"][0]["count"] == true
        else:
            assert response.status_code == 403, (width, response.text)
            assert response.json()["reasons"] == [TOO_SMALL] and not shows(response.json(), true)
    assert sizes[2.0] >= MIN_CELL and sizes[0.0] == 1  # the walk went from an answer to one patient

    groups = admitted.groupby(["icd10", "sex", "age_band"]).size().rename("n").reset_index()
    tiny = groups[groups["n"].between(1, 3)]
    assert len(tiny) >= 3
    for icd10, sex, age_band, true in tiny.head(3).itertuples(index=False, name=None):
        conditions = [
            {"column": "icd10", "op": "=", "value": icd10},
            {"column": "sex", "op": "=", "value": sex},
            {"column": "age_band", "op": "=", "value": age_band},
        ]
        response = ask(http, idp, spec("count", filters={"and": conditions}), "qs-narrow")
        assert response.status_code == 403, response.text
        assert response.json()["reasons"] == [TOO_SMALL] and not shows(response.json(), true)


# -- rounding ------------------------------------------------------------------------------------------------


def test_rounded_agreement_releases_only_multiples_of_its_base_and_says_so(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Under round_to 5 every released count (cells and margins) is the true count rounded half up to a
    multiple of 5; the answer's report and the audit's release entry say so; the open agreement is exact."""
    body = spec("crosstab", ROUNDED, group_by=["sex", "age_band"])
    answer = released(http, idp, body, "rounding")
    truth = admitted.groupby(["sex", "age_band"]).size()
    true_counts = []
    for row in answer["rows"]:
        if row["margin"] is None:
            true = int(truth[(row["sex"], row["age_band"])])
        elif row["margin"] == "row":
            true = int(truth[row["sex"]].sum())
        elif row["margin"] == "column":
            true = int(truth.xs(row["age_band"], level="age_band").sum())
        else:
            true = len(admitted)
        true_counts.append(true)
        assert row["count"] % ROUND_TO == 0 and row["count"] == round_half_up(true), (row, true)
    assert any(t % ROUND_TO for t in true_counts), "no count to round: the test would prove nothing"
    report = answer["disclosure"]
    assert report["round_to"] == ROUND_TO and report["rounded"] is True
    assert "released counts rounded to the nearest multiple of 5" in report["reasons"]
    (entry,) = [e for e in audit_entries(http, idp, answer["request_id"]) if e["type"] == "query.released"]
    assert entry["payload"]["rounded_to"] == ROUND_TO

    exact = released(http, idp, spec("crosstab", group_by=["sex", "age_band"]), "rounding")
    assert [r["count"] for r in exact["rows"]] == true_counts
    assert exact["disclosure"]["rounded"] is False and exact["disclosure"]["round_to"] == 1


def test_one_patient_difference_is_blurred_by_rounding(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: count(bmi > x) and count(bmi >= x), x one patient's own bmi, differ by just that patient.
    With true counts 5k+1/5k+2 (or 5k+3/5k+4) both answers are the same multiple of 5, neither the truth."""
    bmi = admitted["bmi"]
    counts = bmi.value_counts()
    candidates = sorted(float(v) for v in counts[counts == 1].index)
    x = next(
        v
        for v in candidates
        if int((bmi > v).sum()) % ROUND_TO in (1, 3)
        and MIN_CELL <= int((bmi > v).sum()) <= len(bmi) - 2 * MIN_CELL
    )
    above, at_or_above = int((bmi > x).sum()), int((bmi >= x).sum())
    assert at_or_above == above + 1
    strict = released(
        http, idp, spec("count", ROUNDED, filters={"column": "bmi", "op": ">", "value": x}), "rnd-pair"
    )
    loose = released(
        http, idp, spec("count", ROUNDED, filters={"column": "bmi", "op": ">=", "value": x}), "rnd-pair"
    )
    (a,), (b,) = ([r["count"] for r in strict["rows"]], [r["count"] for r in loose["rows"]])
    assert a == b and a % ROUND_TO == 0
    assert a != above and b != at_or_above
    assert not shows(strict["rows"], above) and not shows(loose["rows"], at_or_above)


def test_rounding_never_lifts_a_small_set_or_cell_over_the_minimum(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: a set or cell of 8 or 9 rows would round to 10. The rules judge true counts: the set is
    refused and the cells are suppressed, never shown as 10."""
    sizes = admitted["bmi"].value_counts().sort_index()
    values, held = sizes.index.tolist(), sizes.tolist()
    # The first run of consecutive distinct values held by 8 or 9 patients together.
    window = next(
        (values[i], values[j])
        for i in range(len(values))
        for j in range(i, len(values))
        if sum(held[i : j + 1]) in (8, 9)
    )
    true = len(between(admitted, *window))
    assert true in (8, 9) and round_half_up(true) == MIN_CELL
    body = spec("count", ROUNDED, filters={"column": "bmi", "op": "between", "value": list(window)})
    refused = ask(http, idp, body, "rnd-small")
    assert refused.status_code == 403 and refused.json()["reasons"] == [TOO_SMALL]

    answer = released(http, idp, spec("crosstab", ROUNDED, group_by=["sex", "icd10"]), "rnd-small")
    truth = admitted.groupby(["sex", "icd10"]).size()
    cells = [r for r in answer["rows"] if r["margin"] is None]
    near = [r for r in cells if int(truth.get((r["sex"], r["icd10"]), 0)) in (8, 9)]
    assert near, "no cell of 8 or 9 rows: the test would prove nothing"
    for row in cells:
        true_cell = int(truth.get((row["sex"], row["icd10"]), 0))
        if true_cell < MIN_CELL:
            assert row["count"] is None and row["suppression_reason"] == "below min_cell_count", row
        elif row["count"] is not None:
            assert row["count"] == round_half_up(true_cell)
    assert answer["disclosure"]["suppressed_primary"] == sum(
        1 for r in cells if int(truth.get((r["sex"], r["icd10"]), 0)) < MIN_CELL
    )


# -- summary statistics --------------------------------------------------------------------------------------


def test_summary_groups_below_the_minimum_are_withheld_whole(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """A summary by sex and diagnosis: every group of fewer than 10 rows (empty ones too) shows no n, mean,
    variance or sums, nor does its complement; every other group shows its true statistics."""
    answer = released(
        http, idp, spec("summary", group_by=["sex", "icd10"], params={"column": "bmi"}), "summary"
    )
    stats = admitted.groupby(["sex", "icd10"])["bmi"].agg(["size", "mean", "var", "sum"])
    hidden = ("n", "mean", "variance", "sum", "sum_sq")
    primary = complementary = shown = 0
    for row in answer["rows"]:
        key = (row["sex"], row["icd10"])
        n = int(stats.loc[key, "size"]) if key in stats.index else 0
        if n < MIN_CELL:
            primary += 1
            assert row["suppressed"] and row["suppression_reason"] == "below min_cell_count", row
            assert all(row[c] is None for c in hidden), row
        elif row["suppressed"]:
            complementary += 1
            assert row["suppression_reason"] == "complementary" and all(row[c] is None for c in hidden)
        else:
            shown += 1
            assert row["n"] == n and row["mean"] == pytest.approx(stats.loc[key, "mean"])
            assert row["variance"] == pytest.approx(stats.loc[key, "var"])
            assert row["sum"] == pytest.approx(stats.loc[key, "sum"])
    assert primary >= 3 and complementary >= 1 and shown > 40
    report = answer["disclosure"]
    assert report["suppressed_primary"] == primary and report["suppressed_complementary"] == complementary
    withheld = f"{primary} groups below the minimum of 10 suppressed whole (no mean, variance or sums)"
    assert withheld in report["reasons"]


def test_summary_cannot_reveal_one_patients_value(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: a group of one patient — a cell of smoking x diagnosis, then the same patient's smoking level
    inside a diagnosis filter. No released group has n below 10 (so no n=1, variance-0 or mean-is-the-value
    row), the patient's bmi appears nowhere, and the diagnosis total minus the released groups is not it."""
    cells = admitted.groupby(["smoking", "icd10"]).size()
    smoking, icd10 = cells[cells == 1].index[0]
    patient = admitted[(admitted["smoking"] == smoking) & (admitted["icd10"] == icd10)]
    value = float(patient["bmi"].iloc[0])

    table = released(
        http, idp, spec("summary", group_by=["smoking", "icd10"], params={"column": "bmi"}), "sum-atk"
    )
    (row,) = [r for r in table["rows"] if (r["smoking"], r["icd10"]) == (smoking, icd10)]
    assert row["suppressed"] and row["mean"] is None and row["variance"] is None and row["sum"] is None
    assert all(r["n"] is None or r["n"] >= MIN_CELL for r in table["rows"])
    assert not any(r["variance"] == 0 for r in table["rows"])
    assert not shows(table["rows"], value) and not shows(table["rows"], value * value)
    # The attacker's subtraction: the diagnosis's own total (released: it has 10+ rows) minus its released
    # groups leaves at least two hidden groups together, never the one patient.
    diagnosis = {"column": "icd10", "op": "=", "value": icd10}
    body = spec("summary", params={"column": "bmi"}, filters=diagnosis)
    (total,) = released(http, idp, body, "sum-atk")["rows"]
    line = [r for r in table["rows"] if r["icd10"] == icd10]
    assert sum(r["suppressed"] for r in line) >= 2
    leftover = total["sum"] - sum(r["sum"] for r in line if not r["suppressed"])
    assert leftover != pytest.approx(value)

    body = spec("summary", group_by=["smoking"], params={"column": "bmi"}, filters=diagnosis)
    within = released(http, idp, body, "sum-atk")
    levels = [r["smoking"] for r in within["rows"]]
    assert smoking not in levels, "a one-patient level must not even be named"
    assert all(r["n"] is None or r["n"] >= MIN_CELL for r in within["rows"])
    assert not shows(within["rows"], value) and not shows(within["rows"], value * value)


# -- histograms ----------------------------------------------------------------------------------------------


def _top_edge(admitted: pd.DataFrame) -> tuple[float, int]:
    """An edge leaving 5..9 of the heaviest patients in the last bin, and how many it leaves."""
    values = admitted["bmi"].sort_values(ascending=False).tolist()
    k = next(k for k in range(5, MIN_CELL) if values[k - 1] != values[k])
    return (values[k - 1] + values[k]) / 2, k


def test_histogram_bins_below_the_minimum_are_suppressed_with_a_complement(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """The last bin holds 5..9 patients: it is suppressed, and so is the smallest other bin (the total is
    known from a summary), since total minus the rest would give it back; every other bin is exact."""
    edge, tail = _top_edge(admitted)
    edges = [20.0, 25.0, 30.0, 35.0, edge]
    answer = released(http, idp, spec("histogram", params={"column": "bmi", "edges": edges}), "histogram")
    bounds = [float("-inf"), *edges, float("inf")]
    true = [
        int(((admitted["bmi"] > lo) & (admitted["bmi"] <= hi)).sum()) for lo, hi in itertools.pairwise(bounds)
    ]
    assert true[-1] == tail and min(true[:-1]) >= MIN_CELL
    rows = answer["rows"]
    assert [r["bin"] for r in rows] == list(range(len(edges) + 1))
    assert rows[-1]["count"] is None and rows[-1]["suppression_reason"] == "below min_cell_count"
    smallest = min(range(len(true) - 1), key=lambda b: true[b])
    assert rows[smallest]["count"] is None and rows[smallest]["suppression_reason"] == "complementary"
    for b, row in enumerate(rows):
        if b not in (smallest, len(rows) - 1):
            assert row["count"] == true[b] and not row["suppressed"]
    report = answer["disclosure"]
    assert (report["suppressed_primary"], report["suppressed_complementary"]) == (1, 1)
    assert not shows(rows, tail)


def test_suppressed_bin_cannot_be_recovered_from_the_total(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack: total (the summary's n) minus every released bin. What is left is spread over two hidden
    bins, and each hidden bin can still take several values under what the attacker knows (a primary bin
    holds 0..9, a complement 10..the smallest released bin)."""
    edge, tail = _top_edge(admitted)
    edges = [20.0, 25.0, 30.0, 35.0, edge]
    hist = released(http, idp, spec("histogram", params={"column": "bmi", "edges": edges}), "hist-atk")
    (summary,) = released(http, idp, spec("summary", params={"column": "bmi"}), "hist-atk")["rows"]
    total = summary["n"]
    assert total == len(admitted)
    shown = [r["count"] for r in hist["rows"] if r["count"] is not None]
    hidden = [r for r in hist["rows"] if r["count"] is None]
    leftover = total - sum(shown)
    assert len(hidden) >= 2 and leftover != tail
    ceiling = min(shown)
    bounds = [(0, MIN_CELL - 1) if r["suppression_reason"] == "below min_cell_count" else (MIN_CELL, ceiling)
              for r in hidden]  # fmt: skip
    for i, (low, high) in enumerate(bounds):
        others_low = sum(lo for j, (lo, _) in enumerate(bounds) if j != i)
        others_high = sum(hi for j, (_, hi) in enumerate(bounds) if j != i)
        feasible = range(max(low, leftover - others_high), min(high, leftover - others_low) + 1)
        assert len(feasible) >= 2, f"hidden bin {hidden[i]['bin']} is determined: {list(feasible)}"


def _lone_survival_time(admitted: pd.DataFrame) -> tuple[int, float]:
    """A survival time held by one patient only, with enough events and censorings on both sides of it for
    every bin below to pass; and an upper histogram edge (between two whole days) above it."""
    times, events = admitted["survival_days"], admitted["event"].astype(bool)
    counts = times.value_counts()
    for e in sorted(int(v) for v in counts[counts == 1].index):
        upto = times <= e
        later = times[~upto & events]
        if min(int((upto & events).sum()), int((upto & ~events).sum()), int((~upto).sum())) < MIN_CELL:
            continue
        if len(later) >= 4 * MIN_CELL:
            hi = float(later.median()) + 0.5
            if min(int((times > hi).sum()), int((later > hi).sum()), int((later < hi).sum())) >= MIN_CELL:
                return e, hi
    raise AssertionError("the cohort holds no lone survival time to test with")


def test_an_edge_splits_the_same_rows_in_a_histogram_and_kaplan_meier(
    http: httpx.Client, idp: LoopbackTestIssuer, admitted: pd.DataFrame
) -> None:
    """Attack (as a reviewer ran it): e is a survival time held by one patient. Kaplan–Meier with edges [e]
    gives the events and censorings at or below e; a histogram of survival_days with edges [e, hi] gave the
    rows below e, and the same histogram of the rows with an event the events below e. The first two
    differed by that one patient, and the events not at all, so the patient was censored at e. Both kinds
    close their bins on the same side, (a, b]: the same edge splits the same rows in each."""
    present = admitted[admitted["survival_days"].notna() & admitted["event"].notna()]
    e, hi = _lone_survival_time(present)
    times, events = present["survival_days"], present["event"].astype(bool)
    km_params = {"time": "survival_days", "event": "event", "edges": [e]}
    (km,) = released(http, idp, spec("kaplan_meier", params=km_params), "edge-atk")["rows"]
    assert (km["lower"], km["upper"], km["at_risk"]) == (None, e, len(present))
    assert km["events"] == int(((times <= e) & events).sum())
    assert km["events"] + km["censored"] == int((times <= e).sum())

    hist_params = {"column": "survival_days", "edges": [e, hi]}
    hist = released(http, idp, spec("histogram", params=hist_params), "edge-atk")["rows"]
    happened = {"column": "event", "op": "=", "value": True}
    with_event = spec("histogram", params=hist_params, filters=happened)
    hist_events = released(http, idp, with_event, "edge-atk")["rows"]
    assert [r["bin"] for r in hist] == [r["bin"] for r in hist_events] == [0, 1, 2]
    assert not any(r["suppressed"] for r in [*hist, *hist_events])
    # The bin up to e holds the rows Kaplan–Meier's first bin holds, and those with an event its events.
    assert hist[0]["count"] == km["events"] + km["censored"]
    assert hist_events[0]["count"] == km["events"]
    assert hist[1]["count"] + hist[2]["count"] == km["at_risk"] - km["events"] - km["censored"]


# -- quantiles -----------------------------------------------------------------------------------------------

LONE = "LU"  # the country of one patient only, in the cohort of `lone_site`
OTHER = "(other)"
MEDIAN = {"column": "bmi", "probs": [0.5]}


def with_text_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    """`table` with the text column `name` replaced by `values` (a cohort edited to hold a small group)."""
    position = table.schema.get_field_index(name)
    return table.set_column(position, table.schema.field(position), pa.array(values, pa.string()))


def site_of(folder: Path, idp: LoopbackTestIssuer, generate: Callable[..., pa.Table]) -> Site:
    """A site built as `build_site` builds one, from the cohort `generate` makes instead of the usual one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_site, "generate_site", generate)
        return build_site(folder, idp.issuer_url)


def one_patient_from_lu(index: int, rows: int, seed: int) -> pa.Table:
    """The synthetic cohort with one admitted German patient who recovered moved to LU, where no one else
    is from (what the reviewer did by hand)."""
    table = generate_site(index, rows, seed)
    countries = table.column("country").to_pylist()
    columns = zip(
        countries,
        table.column("consent_duo").to_pylist(),
        table.column("consent_withdrawn").to_pylist(),
        table.column("outcome").to_pylist(),
        strict=True,
    )
    patient = next(
        i
        for i, (country, duo, withdrawn, outcome) in enumerate(columns)
        if country == "DE" and duo == "DUO:0000042" and not withdrawn and outcome == "recovered"
    )
    assert LONE not in countries
    countries[patient] = LONE
    return with_text_column(table, "country", countries)


@pytest.fixture(scope="module")
def lone_site(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Site:
    return site_of(tmp_path_factory.mktemp("lone"), idp, one_patient_from_lu)


@pytest.fixture(scope="module")
def lone_admitted(lone_site: Site) -> pd.DataFrame:
    frame = admitted_rows(lone_site)
    assert int((frame["country"] == LONE).sum()) == 1
    return frame


@pytest.fixture(scope="module")
def lone_http(lone_site: Site, lone_admitted: pd.DataFrame) -> Iterator[httpx.Client]:
    """A client of `lone_site`'s gateway, started once `lone_admitted` has read (and closed) the store."""
    with running_gateway(lone_site.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _same_protection(group: dict[str, Any], cell: dict[str, Any], label: Any) -> None:
    """A quantiles group shows its size exactly when the count's cell does, hidden for the same reason,
    and shows quantiles only when it is a released group of real levels."""
    assert group["suppressed"] == cell["suppressed"], (label, group, cell)
    assert group["suppression_reason"] == cell["suppression_reason"], (label, group, cell)
    assert group["n"] == cell["count"], (label, group, cell)
    if group["suppressed"] or OTHER in (label if isinstance(label, tuple) else (label,)):
        assert group["q0.5"] is None, (label, group)


def test_quantiles_release_no_group_size_that_a_count_hides(
    lone_http: httpx.Client, idp: LoopbackTestIssuer, lone_admitted: pd.DataFrame
) -> None:
    """Attack (as a reviewer ran it): one patient is the only one from LU. A count by country hides the
    merged rare level and, as its complement, BE. Quantiles by country used to drop the rare group and
    protect n against what was left, releasing every other group's n: the ungrouped n (2720) minus their
    sum (2719) gave the rare group's single patient, and BE's hidden count came back with it. Quantiles now
    merge rare levels into "(other)" as counts do and hide exactly the sizes the count hides; "(other)" and
    hidden groups show no quantile."""
    sizes = lone_admitted.groupby("country").size()
    median_of = lone_admitted.groupby("country")["bmi"].median()
    sub = "quantile-lone"
    count = released(lone_http, idp, spec("count", group_by=["country"]), sub)
    grouped = released(lone_http, idp, spec("quantiles", group_by=["country"], params=MEDIAN), sub)
    (everyone,) = released(lone_http, idp, spec("quantiles", params=MEDIAN), sub)["rows"]
    assert everyone["n"] == len(lone_admitted)

    cells = {r["country"]: r for r in count["rows"] if r["margin"] is None}
    groups = {r["country"]: r for r in grouped["rows"]}
    assert OTHER in cells and LONE not in cells  # what the count shows: the rare level merged, unnamed
    assert groups.keys() == cells.keys()
    for country, group in groups.items():
        _same_protection(group, cells[country], country)
        if not group["suppressed"] and country != OTHER and group["n"] * 0.5 >= MIN_CELL:
            assert group["q0.5"] == pytest.approx(median_of[country])
    assert groups["DE"]["q0.5"] is not None
    assert groups[OTHER]["suppression_reason"] == "below min_cell_count"
    hidden = [c for c, g in groups.items() if g["suppressed"]]
    assert len(hidden) >= 2
    # The attacker's subtraction gives the hidden groups together, never one of them.
    leftover = everyone["n"] - sum(g["n"] for g in groups.values() if not g["suppressed"])
    hidden_sizes = {c: int(sizes[c]) if c != OTHER else int(sizes[LONE]) for c in hidden}
    assert leftover == sum(hidden_sizes.values())
    assert all(leftover != size for size in hidden_sizes.values())


def test_quantiles_by_two_columns_cannot_be_differenced_with_a_coarser_grouping(
    lone_http: httpx.Client, idp: LoopbackTestIssuer, lone_admitted: pd.DataFrame
) -> None:
    """Attack: among patients from DE or LU, quantiles by country and outcome used to drop the LU patient's
    group and release every German group (died 455, readmitted 294, recovered 1885), which the crosstab
    hides; quantiles by outcome alone (recovered 1886) then told that the LU patient recovered. Now the
    two-column quantiles hide what the crosstab hides, so every outcome line with a hidden group has two."""
    within = {"column": "country", "op": "in", "value": ["DE", LONE]}
    keys = ["country", "outcome"]
    sub = "quantile-lone-2d"
    crosstab = released(lone_http, idp, spec("crosstab", group_by=keys, filters=within), sub)
    finer = released(lone_http, idp, spec("quantiles", group_by=keys, params=MEDIAN, filters=within), sub)
    body = spec("quantiles", group_by=["outcome"], params=MEDIAN, filters=within)
    coarser = {r["outcome"]: r for r in released(lone_http, idp, body, sub)["rows"]}

    cells = {(r["country"], r["outcome"]): r for r in crosstab["rows"] if r["margin"] is None}
    groups = {(r["country"], r["outcome"]): r for r in finer["rows"]}
    assert groups.keys() == cells.keys() and not any(country == LONE for country, _ in groups)
    for key, group in groups.items():
        _same_protection(group, cells[key], key)
    assert any(cells[key]["suppressed"] for key in cells if key[0] == "DE")  # the test proves something
    for outcome, total in coarser.items():
        line = [g for (_, o), g in groups.items() if o == outcome]
        hidden = [g for g in line if g["suppressed"]]
        assert len(hidden) != 1, outcome
        released_part = sum(g["n"] for g in line if not g["suppressed"])
        assert hidden or released_part == total["n"]


# -- consent classes -----------------------------------------------------------------------------------------

ETHICS = "DUO:0000021"  # ethics approval required: admitted when the purpose carries an approval id
AREA = "DUO:0000022"  # geographic restriction: admitted when requester and destination are in the site's area
APPROVED = {**PURPOSE, "ethics_approval_id": "EC-2026-117"}
BMI = {"column": "bmi"}
IN_DE = {"org": "org-charite", "country": "DE"}  # a requester whose organisation is in the site's area


def one_patient_per_modifier(index: int, rows: int, seed: int) -> pa.Table:
    """The synthetic cohort as the reviewer edited it: no patient holds DUO:0000021 but one, whose consent
    is "DUO:0000042 DUO:0000021", and one other patient's is "DUO:0000042 DUO:0000022", which no one else
    holds: two consent classes of one patient each, admitted or not by the request's purpose modifiers."""
    table = generate_site(index, rows, seed)
    consent = [
        " ".join(code for code in value.split(" ") if code != ETHICS)
        for value in table.column("consent_duo").to_pylist()
    ]
    withdrawn = table.column("consent_withdrawn").to_pylist()
    first, second = [i for i, (c, w) in enumerate(zip(consent, withdrawn, strict=True)) if c == "DUO:0000042"
                     and not w][:2]  # fmt: skip
    assert not any(AREA in c for c in consent)
    consent[first], consent[second] = f"DUO:0000042 {ETHICS}", f"DUO:0000042 {AREA}"
    return with_text_column(table, "consent_duo", consent)


@pytest.fixture(scope="module")
def classes_site(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Site:
    return site_of(tmp_path_factory.mktemp("classes"), idp, one_patient_per_modifier)


@pytest.fixture(scope="module")
def classes_entry(classes_site: Site) -> Any:
    """The catalog entry of `classes_site`'s cohort (read before its gateway holds the store)."""
    with Store(classes_site.settings.store_url) as store:
        entry = store.latest("cohort")
    assert entry is not None
    return entry


@pytest.fixture(scope="module")
def classes_rows(classes_site: Site, classes_entry: Any) -> pd.DataFrame:
    """Every row of `classes_site`'s cohort as stored (read-only, store closed after)."""
    path = classes_site.settings.store_url.removeprefix("duckdb:///")
    with duckdb.connect(path, read_only=True) as con:
        frame: pd.DataFrame = con.execute(f'select * from "{classes_entry.table_name}"').df()
    return frame


@pytest.fixture(scope="module")
def classes_http(classes_site: Site, classes_rows: pd.DataFrame) -> Iterator[httpx.Client]:
    with running_gateway(classes_site.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def rule_rows(
    site: Site, entry: Any, rows: pd.DataFrame, body: dict[str, Any], org: str, country: str
) -> pd.DataFrame:
    """The rows the consent rule the policy sets for `body` on `entry`, asked by a researcher of `org` in
    `country`, admits, before any rule on the size of consent classes."""
    from gateway.auth import Principal
    from gateway.decision import PolicyDecisionPoint
    from gateway.pipeline import decision_input
    from gateway.query import parse_query_spec

    researcher = Principal(
        sub="x", org=org, country=country, roles=frozenset({"researcher"}), visas=(), issuer="test"
    )
    decision = PolicyDecisionPoint(site.settings).decide(
        decision_input(researcher, parse_query_spec(body), entry)
    )
    assert decision.obligations is not None
    rule = decision.obligations.consent_filter
    keep = [rule.admits(c, w) for c, w in zip(rows["consent_duo"], rows["consent_withdrawn"], strict=True)]
    return rows[keep]


def large_classes(rows: pd.DataFrame, admitted: pd.DataFrame) -> pd.DataFrame:
    """`admitted` without the consent classes (values of the consent column) that fewer than MIN_CELL rows
    not marked withdrawn hold in `rows`."""
    sizes = rows[~rows["consent_withdrawn"]].groupby("consent_duo").size()
    return admitted[admitted["consent_duo"].map(sizes).fillna(0) >= MIN_CELL]


def _unfiltered_pair(
    http: httpx.Client,
    idp: LoopbackTestIssuer,
    first: dict[str, Any],
    second: dict[str, Any],
    sub: str,
    **who: str,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The summaries of bmi and the crosstabs by sex and smoking under two requests differing only in
    what their purpose or destination admits."""
    answers = []
    for extra in (first, second):
        for kind, fields in (("summary", {"params": BMI}), ("crosstab", {"group_by": ["sex", "smoking"]})):
            response = http.post(
                "/v1/queries", json={**spec(kind), **fields, **extra},
                headers=bearer(idp, "researcher", sub=sub, **who),
            )  # fmt: skip
            assert response.status_code == 200, response.text
            answers.append(response.json())
    return answers[0], answers[2], answers[1], answers[3]


def test_an_ethics_approval_id_cannot_single_out_a_consent_class_of_one(
    classes_http: httpx.Client,
    idp: LoopbackTestIssuer,
    classes_site: Site,
    classes_entry: Any,
    classes_rows: pd.DataFrame,
) -> None:
    """Attack (as a reviewer ran it): the same unfiltered summary without and with an ethics approval id.
    The rule with the id admits the one patient whose consent requires ethics approval (a class of one)
    as well; the query-set rule lets both through, and the sums differed by that patient's bmi (the
    crosstabs by their other values). A consent class of fewer than min_cell_count rows is now never
    admitted, so both answers rest on the same rows."""
    without = rule_rows(classes_site, classes_entry, classes_rows, spec("count"), "org-aphp", "FR")
    approved = rule_rows(
        classes_site, classes_entry, classes_rows, spec("count", purpose=APPROVED), "org-aphp", "FR"
    )
    patient = approved[~approved.index.isin(without.index)]
    assert len(patient) == 1 and patient["consent_duo"].iloc[0] == f"DUO:0000042 {ETHICS}"  # the attack
    summary, approved_summary, crosstab, approved_crosstab = _unfiltered_pair(
        classes_http, idp, {}, {"purpose": APPROVED}, "ethics-atk"
    )
    (row,), (approved_row,) = summary["rows"], approved_summary["rows"]
    assert approved_row["n"] - row["n"] != 1
    assert approved_row["sum"] - row["sum"] != pytest.approx(float(patient["bmi"].iloc[0]))
    expected = large_classes(classes_rows, approved)
    assert len(expected) == len(without) == len(approved) - 1
    assert row == approved_row
    assert row["n"] == len(expected) and row["sum"] == pytest.approx(float(expected["bmi"].sum()))
    assert crosstab["rows"] == approved_crosstab["rows"]


def test_a_destination_cannot_single_out_a_consent_class_of_one(
    classes_http: httpx.Client,
    idp: LoopbackTestIssuer,
    classes_site: Site,
    classes_entry: Any,
    classes_rows: pd.DataFrame,
) -> None:
    """Attack (as a reviewer ran it): a researcher of an organisation in DE asks the same unfiltered
    summary for the destination DE, then FR. DE satisfies the geographic restriction (DUO:0000022) that one
    patient alone holds, FR does not: the two populations differed by exactly that patient. That class of
    one is now admitted under neither."""
    here = rule_rows(classes_site, classes_entry, classes_rows, spec("count", destination="DE"), **IN_DE)
    abroad = rule_rows(classes_site, classes_entry, classes_rows, spec("count", destination="FR"), **IN_DE)
    patient = here[~here.index.isin(abroad.index)]
    assert len(patient) == 1 and patient["consent_duo"].iloc[0] == f"DUO:0000042 {AREA}"  # the attack
    summary_de, summary_fr, crosstab_de, crosstab_fr = _unfiltered_pair(
        classes_http, idp, {"destination": "DE"}, {"destination": "FR"}, "area-atk", **IN_DE
    )
    (row_de,), (row_fr,) = summary_de["rows"], summary_fr["rows"]
    assert row_de["sum"] - row_fr["sum"] != pytest.approx(float(patient["bmi"].iloc[0]))
    expected = large_classes(classes_rows, here)
    assert len(expected) == len(abroad) == len(here) - 1
    assert row_de == row_fr and row_de["n"] == len(expected)
    assert crosstab_de["rows"] == crosstab_fr["rows"]


def test_a_glm_session_leaves_out_the_same_consent_classes(
    classes_http: httpx.Client,
    idp: LoopbackTestIssuer,
    classes_site: Site,
    classes_entry: Any,
    classes_rows: pd.DataFrame,
) -> None:
    """The ethics attack on a GLM session: its loader builds its own consent predicate, and each
    iteration's n (and sums) would differ by the class of one between the two purposes. It leaves out
    the same small classes a query does."""
    approved = rule_rows(
        classes_site, classes_entry, classes_rows, spec("count", purpose=APPROVED), "org-aphp", "FR"
    )
    model = {"outcome": "bmi", "family": "gaussian", "numeric": ["systolic_bp"]}
    answers = []
    for purpose in (PURPOSE, APPROVED):
        headers = bearer(idp, "researcher", sub="glm-ethics-atk")
        body = {"dataset": "cohort", "agreement": OPEN, "purpose": purpose, "model": model}
        opened = classes_http.post("/v1/glm/sessions", json=body, headers=headers)
        assert opened.status_code == 200, opened.text
        path = f"/v1/glm/sessions/{opened.json()['session']}/iterations"
        step = classes_http.post(path, json={"agreement": OPEN, "beta": [25.0, 0.0]}, headers=headers)
        assert step.status_code == 200, step.text
        answers.append(step.json())
        classes_http.delete(f"/v1/glm/sessions/{opened.json()['session']}", headers=headers)
    without, with_id = answers
    assert without["n"] == with_id["n"] == len(large_classes(classes_rows, approved))
    assert without["deviance"] == pytest.approx(with_id["deviance"], rel=1e-12)
    assert without["xtwz"] == pytest.approx(with_id["xtwz"], rel=1e-12)
