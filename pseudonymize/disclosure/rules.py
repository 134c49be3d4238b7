"""Disclosure thresholds: the rules every released number passes, mapped from the policy's obligations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from pseudonymize.disclosure.errors import InvalidRules

# The design's defaults (DESIGN.md "Disclosure control"); a DSA may only tighten them, which the policy
# enforces before the obligations reach us. These are the only literal thresholds in disclosure control.
DEFAULT_MIN_CELL_COUNT: Final = 10
DEFAULT_ROUND_TO: Final = 1
DEFAULT_KEEP_ZERO_CELLS: Final = False

# The quantiles a query may ask for at all: interior ones on a coarse grid. Closer to 0 or 1 a quantile is
# one patient's value, and two close probabilities interpolate between the same two patients' values and
# together solve for both. The query spec refuses other probabilities as it validates (a 422 naming the
# field); a quantile whose group is too small on either side is withheld at release (`protect_quantiles`).
QUANTILE_MIN_PROB: Final = 0.05
QUANTILE_MAX_PROB: Final = 0.95
QUANTILE_PROB_STEP: Final = 0.05


class ThresholdObligations(Protocol):
    """What a decision's obligations provide; duck-typed so `pseudonymize` never imports `gateway`."""

    @property
    def min_cell_count(self) -> int: ...

    @property
    def round_to(self) -> int: ...

    @property
    def keep_zero_cells(self) -> bool: ...


@dataclass(frozen=True)
class DisclosureRules:
    """Thresholds for one answer: the smallest releasable cell, the rounding base, whether 0 may show as 0."""

    min_cell_count: int
    round_to: int = DEFAULT_ROUND_TO
    keep_zero_cells: bool = DEFAULT_KEEP_ZERO_CELLS

    def __post_init__(self) -> None:
        for name in ("min_cell_count", "round_to"):
            value = getattr(self, name)
            # bool is an int subclass; True as a threshold is a mapping bug, not a setting.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRules(f"{name} must be an integer of at least 1")
        if not isinstance(self.keep_zero_cells, bool):
            raise InvalidRules("keep_zero_cells must be true or false")

    @classmethod
    def site_defaults(cls) -> DisclosureRules:
        """The design's defaults: cells below 10 suppressed, no rounding, zeros suppressed."""
        return cls(DEFAULT_MIN_CELL_COUNT, DEFAULT_ROUND_TO, DEFAULT_KEEP_ZERO_CELLS)

    @classmethod
    def from_obligations(cls, obligations: ThresholdObligations) -> DisclosureRules:
        """The rules a decision's obligations require (already the tighter of site and agreement)."""
        return cls(obligations.min_cell_count, obligations.round_to, obligations.keep_zero_cells)

    def is_small(self, count: int) -> bool:
        """True when a count may not be released: below the minimum, unless it is a zero the DSA lets show."""
        if count == 0 and self.keep_zero_cells:
            return False
        return count < self.min_cell_count

    def round(self, count: int) -> int:
        """A released count rounded half up to the nearest multiple of round_to (1 leaves it exact)."""
        r = self.round_to
        return ((count + r // 2) // r) * r
