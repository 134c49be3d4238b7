"""Disclosure checks a site runs before every federated GLM iteration releases XᵀWX and XᵀWz.

The information matrix of a model with a binary column holds that column's count on its diagonal (for a
gaussian model exactly, for the others weighted), so a binary covariate or outcome category is a released
cell and passes the cell rule. Its off-diagonal entries are second moments: the entry of two binary columns
is the count of rows in both, a cell of their two-way table, so every such table passes the cell rule too
(`check_glm_joint_cells`); and a column's n, Σx and Σx² give each value's count when it has at most three
values (`check_glm_value_counts`). Few rows or many parameters let the matrix and score pin single rows,
so the site also needs `glm_min_rows` rows and at most `glm_max_parameter_ratio × rows` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pseudonymize.disclosure.errors import DisclosureError
from pseudonymize.disclosure.rules import DisclosureRules


class GlmDisclosureError(DisclosureError):
    """A GLM iteration may not be released at this site; the reason names the rule, never a count."""


def check_glm_release(
    rows: int,
    parameters: int,
    binary_cells: Mapping[str, int],
    rules: DisclosureRules,
    *,
    min_rows: int,
    max_parameter_ratio: float,
) -> None:
    """Raise GlmDisclosureError unless a GLM iteration over `rows` rows may be released.

    `binary_cells` maps a label ("sex=F", "outcome=1", "grade=II (reference)") to the number of rows in
    that category of a binary covariate (a dummy or a two-valued column) or of the binomial outcome; both
    sides of every binary column must be listed by the caller."""
    if rows < min_rows:
        raise GlmDisclosureError(f"the model rests on fewer than {min_rows} rows at this site (glm_min_rows)")
    if parameters > max_parameter_ratio * rows:
        raise GlmDisclosureError(
            f"the model has {parameters} parameters, more than {max_parameter_ratio:g} × the rows at this "
            f"site allow (glm_max_parameter_ratio)"
        )
    small = sorted(label for label, count in binary_cells.items() if rules.is_small(count))
    if small:
        raise GlmDisclosureError(
            f"{', '.join(small)}: fewer than {rules.min_cell_count} rows at this site in that category "
            f"(min_cell_count); merge levels or drop the covariate"
        )


@dataclass(frozen=True)
class CategoryColumn:
    """A column of a model whose rows fall into categories: a categorical covariate (each listed level,
    the reference too), a column with two values among the model's rows, or a binary outcome.

    `labels` name the categories as the request does (`model.categorical[0]=G30.9`), never by a value
    only the data holds; `codes` holds each row's category, an index into `labels`."""

    labels: tuple[str, ...]
    codes: np.ndarray


MAX_NAMED_CELLS = 3
"""How many failing cells a refusal names: enough to act on, and short enough for the audit log."""

_JOINT_BLOCK_ROWS = 8192  # small enough to stay in cache, and < 2**24: float32 sums of 0/1 stay exact


def joint_counts(columns: Sequence[CategoryColumn]) -> np.ndarray:
    """Rows in each pair of categories, all columns' categories side by side (a symmetric matrix whose
    block for two columns is their crosstab).

    Two ways, the cheaper for the shape: a crosstab per pair of columns (one `bincount` over the rows
    each, best for a few columns however many levels), or one product of the category indicators (best
    for many two-category columns, as the cost grows with the categories squared, not the pairs)."""
    edges = np.cumsum([0, *(len(c.labels) for c in columns)])
    width = int(edges[-1])
    pairs = len(columns) * (len(columns) - 1) // 2
    # Per row, measured: a pair's bincount about 2 ns; the product about 25 ns, 2.5 ns a column and
    # width² / 50 ns.
    if 2 * pairs <= 25 + 2.5 * len(columns) + width * width / 50:
        return _counts_by_pair(columns, edges)
    return _counts_by_product(columns, edges)


def _counts_by_pair(columns: Sequence[CategoryColumn], edges: np.ndarray) -> np.ndarray:
    counts = np.zeros((edges[-1], edges[-1]))
    for i, a in enumerate(columns):
        counts[edges[i] : edges[i + 1], edges[i] : edges[i + 1]] = np.diag(
            np.bincount(a.codes, minlength=len(a.labels))
        )
        for j in range(i + 1, len(columns)):
            b = columns[j]
            table = np.bincount(a.codes * len(b.labels) + b.codes, minlength=len(a.labels) * len(b.labels))
            block = table.reshape(len(a.labels), len(b.labels))
            counts[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = block
            counts[edges[j] : edges[j + 1], edges[i] : edges[i + 1]] = block.T
    return counts


def _counts_by_product(columns: Sequence[CategoryColumn], edges: np.ndarray) -> np.ndarray:
    """MᵀM of the indicators, a block of rows at a time: float32 within a block is exact (every partial
    sum is an integer below 2²⁴), the blocks add up in float64."""
    rows = len(columns[0].codes) if columns else 0
    counts = np.zeros((edges[-1], edges[-1]))
    block = np.empty((_JOINT_BLOCK_ROWS, edges[-1]), dtype=np.float32)
    for start in range(0, rows, _JOINT_BLOCK_ROWS):
        size = min(_JOINT_BLOCK_ROWS, rows - start)
        hot = np.stack([c.codes[start : start + size] for c in columns], axis=1) + edges[:-1]
        block[:size] = 0
        np.put_along_axis(block[:size], hot, 1.0, axis=1)
        counts += block[:size].T @ block[:size]
    return counts


def check_glm_joint_cells(columns: Sequence[CategoryColumn], rules: DisclosureRules) -> None:
    """Raise GlmDisclosureError unless every cell of every two columns' joint table holds no row or at
    least min_cell_count rows.

    XᵀWX's entry for two binary columns is Σ wᵢ·aᵢ·bᵢ: at β = 0 every binomial weight is ¼, so the entry is
    the rows in both (a gaussian XᵀX holds it exactly), and with β on a numeric column alone it is the sum
    of those rows' weights, one patient's covariate when the cell holds one. With the intercept and the
    diagonal, every cell of the two columns' table follows, the reference levels' too (a reference is the
    intercept minus the other dummies), and a binary outcome's XᵀWz gives its cells with each covariate
    the same way. Two levels of one column share no row, so only tables of two different columns count;
    a cell with no row passes: it describes no patient, and two levels that never meet are common."""
    sizes = [len(c.labels) for c in columns]
    if len(sizes) < 2:
        return
    counts = joint_counts(columns)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    k = rules.min_cell_count
    small = (owner[:, None] < owner[None, :]) & (counts > 0) & (counts < k)
    if not small.any():
        return
    labels = [label for c in columns for label in c.labels]
    cells = [f"{labels[i]} with {labels[j]}" for i, j in zip(*np.nonzero(small), strict=True)]
    named = ", ".join(cells[:MAX_NAMED_CELLS]) + (" and others" if len(cells) > MAX_NAMED_CELLS else "")
    raise GlmDisclosureError(
        f"{named}: fewer than {k} rows at this site in that cell of the two columns' joint table "
        f"(min_cell_count), which the model's sums give; merge levels or drop a covariate"
    )


def check_glm_value_counts(columns: Mapping[str, Sequence[int]], rules: DisclosureRules) -> None:
    """Raise GlmDisclosureError when a column with at most three values among the model's rows has one
    that fewer than min_cell_count rows hold.

    `columns` maps a column's name in the request (`model.numeric[0]`, `model.outcome`) to the rows at each
    of its values; the caller lists only columns with at most three. An iteration's sums give n, Σx and
    Σx² of every numeric covariate (the intercept's row and the diagonal of XᵀX at β = 0) and of the
    outcome (XᵀWz's intercept entry and the deviance or Pearson χ²): three equations whose matrix over
    three known values is a Vandermonde matrix, so they solve for each value's count. A fourth value would
    need Σx³, which no sum holds at β = 0."""
    k = rules.min_cell_count
    small = sorted(name for name, counts in columns.items() if any(0 < c < k for c in counts))
    if small:
        raise GlmDisclosureError(
            f"{', '.join(small)}: a column with at most three values among the model's rows, one of them "
            f"held by fewer than {k} rows at this site (min_cell_count); the model's sums (n, Σx, Σx²) "
            f"give each value's count, so merge its values or drop it"
        )


def check_glm_rows(
    population: int, kept: int, left_out_by: Mapping[str, int], rules: DisclosureRules
) -> None:
    """Raise GlmDisclosureError unless the rows a model keeps may be described.

    `population` is every row the researcher may query with the model's outcome present; `kept` the rows
    the model keeps of them (every column present, categorical columns at their levels, weights above
    zero); `left_out_by` maps each of the model's restrictions ("column bmi", "levels of country") to the
    rows it alone leaves out of those the rest of the model keeps. Each is a filter the researcher chose:
    two models one restriction apart would otherwise give sums that differ by a few patients' values, the
    differencing the query-set rule (`check_query_set`) stops for the other kinds."""
    k = rules.min_cell_count
    if kept < k:
        raise GlmDisclosureError(
            f"the model keeps fewer than {k} rows with its outcome at this site (min_cell_count)"
        )
    if 0 < population - kept < k:
        raise GlmDisclosureError(
            f"the model leaves out fewer than {k} of the rows with its outcome (min_cell_count); comparing "
            f"it with a model that keeps them would describe those rows"
        )
    small = sorted(name for name, count in left_out_by.items() if 0 < count < k)
    if small:
        raise GlmDisclosureError(
            f"{', '.join(small)}: leaves out fewer than {k} of the rows the rest of the model keeps "
            f"(min_cell_count); comparing with the model without it would describe those rows"
        )


def check_weight_spread(total: float, total_sq: float, rules: DisclosureRules) -> None:
    """Raise GlmDisclosureError when an iteration's working weight rests on fewer than min_cell_count
    rows' worth: its effective sample size (Σw)² / Σw² is below the minimum.

    The working weights follow β, which the researcher chooses: a β under which one patient's linear
    predictor sits where the weight peaks and everyone else's far from it makes XᵀWX and XᵀWz that
    patient's own covariates and outcome. A fit's own steps spread the weight over many rows (a Poisson
    step that overshoots weighs the largest rows most, yet its effective size stays a fair share of n), so
    the rule refuses what only a chosen β does."""
    k = rules.min_cell_count
    if not (total > 0 and total * total >= k * total_sq):
        raise GlmDisclosureError(
            f"at these coefficients the iteration's weight rests on fewer than {k} rows' worth "
            f"(min_cell_count); the sums would describe those rows, so this iteration is refused"
        )


ETA_LIMIT = 20.0
"""The largest linear predictor a site computes sums at (binomial: |η|; Poisson: η). Beyond it a fitted
probability is within 2·10⁻⁹ of 0 or 1, where a fit is diverging rather than converging, and where two
chosen β that differ in one patient's side of a threshold would tell that patient's outcome apart."""


def check_linear_predictor(largest: float) -> None:
    """Raise GlmDisclosureError when some row's linear predictor is past `ETA_LIMIT`."""
    if not largest <= ETA_LIMIT:
        raise GlmDisclosureError(
            f"at these coefficients some rows' fitted values saturate (linear predictor beyond "
            f"{ETA_LIMIT:g}); a fit that converges does not go there, so this iteration is refused"
        )
