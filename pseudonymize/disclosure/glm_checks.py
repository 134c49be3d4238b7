"""Disclosure checks a site runs before every federated GLM iteration releases XᵀWX and XᵀWz.

The information matrix of a model with a binary column holds that column's count on its diagonal (for a
gaussian model exactly, for the others weighted), so a binary covariate or outcome category is a released
cell and passes the cell rule. Few rows or many parameters let the matrix and score pin single rows, so
the site also needs `glm_min_rows` rows and at most `glm_max_parameter_ratio × rows` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

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
