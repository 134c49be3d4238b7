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


def check_weight_dominance(total: float, largest: float, rules: DisclosureRules) -> None:
    """Raise GlmDisclosureError when one row carries more than 1/min_cell_count of an iteration's working
    weight (a dominance rule, as for magnitude tables).

    The working weights follow β, which the researcher chooses: a β under which one patient's linear
    predictor sits where the weight peaks and everyone else's far from it makes XᵀWX and XᵀWz that
    patient's own covariates and outcome. With no row above 1/k of the total, the sums rest on at least k
    rows' worth of weight, as a released cell rests on k rows."""
    k = rules.min_cell_count
    if not (total > 0 and largest * k <= total):
        raise GlmDisclosureError(
            f"at these coefficients a few rows carry the iteration's weight (one row more than 1/{k} of it, "
            f"min_cell_count); the sums would describe those rows, so this iteration is refused"
        )
