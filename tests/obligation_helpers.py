"""Obligations as a policy decision carries them, for tests that compile queries or run disclosure control
without asking a policy engine."""

from __future__ import annotations

from gateway.decision.models import ConsentFilter, Obligations

ONE_CODE_CONSENT = ConsentFilter(
    withdrawn_column="consent_withdrawn",
    consent_column="consent_duo",
    separator=" ",
    require_any_of=(("DUO:0000006",),),
    allowed_codes=("DUO:0000006",),
)
"""A consent rule admitting patients whose consent names DUO:0000006 (health/medical/biomedical research)."""


def obligations(allowed: tuple[str, ...], consent: ConsentFilter, min_cell_count: int = 10) -> Obligations:
    """The site defaults, with `allowed` columns, the `consent` rule and `min_cell_count`."""
    return Obligations(
        min_cell_count=min_cell_count,
        round_to=1,
        keep_zero_cells=False,
        allowed_columns=allowed,
        consent_filter=consent,
        dp=None,
        max_identical_queries=10,
        glm_min_rows=10,
        glm_max_parameter_ratio=0.1,
        publication_moratorium_until=None,
    )
