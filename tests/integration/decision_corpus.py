"""A seeded corpus of decision inputs over the example policy data, mixing allowed and denied requests."""

from __future__ import annotations

import json
import random
from typing import Any

from gateway.decision.models import DecisionInput

_ORGS = ["org-charite", "org-aphp", "org-ucsf", "org-kyoto", "org-pharmaco", "org-unknown"]
_COUNTRIES = ["DE", "FR", "US", "JP", "GB", "BR", "RU", "NL"]
_PURPOSES: list[dict[str, Any]] = [
    {"duo": ["DUO:0000006"]},
    {"duo": ["DUO:0000042"]},
    {"duo": ["DUO:0000011"]},
    {"duo": ["DUO:0000007"], "disease": "MONDO:0005148"},
    {"duo": ["DUO:0000007"], "disease": "MONDO:0007254"},
    {"duo": ["DUO:0000007"]},
    {"duo": ["DUO:0000006"], "ethics_approval_id": "EC-2026-077"},
]
_DATASETS: list[dict[str, Any]] = [
    {"id": "ds-diabetes-de", "duo": ["DUO:0000042"]},
    {"id": "ds-diabetes-de", "duo": ["DUO:0000006", "DUO:0000021"]},
    {"id": "ds-diabetes-de", "duo": ["DUO:0000042", "DUO:0000045", "DUO:0000046"]},
    {"id": "ds-diabetes-de", "duo": ["DUO:0000042", "DUO:0000024"], "moratorium_until": "2026-09-30"},
    {"id": "ds-diabetes-de", "duo": ["DUO:0000042", "DUO:0000025"], "use_until": "2026-04-30"},
    {"id": "ds-diabetes-de", "duo": ["DUO:0000042", "DUO:0000022"]},
    {"id": "ds-genomes-de", "duo": ["DUO:0000042", "DUO:0000020", "DUO:0000029"]},
    {"id": "ds-oncology-de", "duo": ["DUO:0000007"], "diseases": ["MONDO:0004992"]},
    {"id": "ds-oncology-de", "duo": ["DUO:0000042", "DUO:0000019"]},
]
_COLUMNS = ["age_band", "sex", "bmi", "hba1c", "outcome", "stage", "variant_class", "zip_code"]
_KINDS = ["count", "crosstab", "summary", "glm", "kaplan_meier", "quantiles", "sql"]
_DSAS = ["DSA-2026-014", "DSA-2026-021", "DSA-2025-007", "DSA-0000-000"]
_NOWS = ["2026-05-01T10:00:00Z", "2026-07-01T00:00:00Z", "2025-06-01T08:30:00+02:00", "2027-01-15T12:00:00Z"]


_TEMPLATES: list[dict[str, Any]] = [
    {
        "requester": {"sub": "r-1", "org": "org-aphp", "country": "FR", "roles": ["researcher"]},
        "purpose": {"duo": ["DUO:0000006"], "ethics_approval_id": "EC-2026-077"},
        "dsa": "DSA-2026-014",
        "dataset": {"id": "ds-diabetes-de", "duo": ["DUO:0000042"]},
        "query": {"kind": "count", "columns": ["sex"], "group_by": ["age_band"]},
        "destination": {"country": "FR"},
        "now": "2026-05-01T10:00:00Z",
    },
    {
        "requester": {"sub": "r-2", "org": "org-pharmaco", "country": "DE", "roles": ["researcher"]},
        "purpose": {"duo": ["DUO:0000007"], "disease": "MONDO:0007254"},
        "dsa": "DSA-2026-021",
        "dataset": {"id": "ds-oncology-de", "duo": ["DUO:0000007"], "diseases": ["MONDO:0004992"]},
        "query": {"kind": "kaplan_meier", "columns": ["survival_days"], "group_by": ["stage"]},
        "destination": {"country": "DE"},
        "now": "2026-05-01T10:00:00Z",
    },
    {
        "requester": {"sub": "r-3", "org": "org-ucsf", "country": "US", "roles": ["researcher"]},
        "purpose": {"duo": ["DUO:0000006"]},
        "dsa": "DSA-2026-014",
        "dataset": {"id": "ds-diabetes-de", "duo": ["DUO:0000006"]},
        "query": {"kind": "glm", "columns": ["hba1c", "bmi"], "group_by": []},
        "destination": {"country": "US"},
        "now": "2026-03-15T09:00:00-05:00",
    },
]


def _mutate(doc: dict[str, Any], rng: random.Random) -> None:
    """Change one dimension of a request to a value drawn from the pools above."""
    dimension = rng.randrange(9)
    if dimension == 0:
        doc["requester"]["org"] = rng.choice(_ORGS)
    elif dimension == 1:
        doc["requester"]["country"] = rng.choice(_COUNTRIES)
    elif dimension == 2:
        doc["destination"]["country"] = rng.choice(_COUNTRIES)
    elif dimension == 3:
        doc["purpose"] = dict(rng.choice(_PURPOSES))
    elif dimension == 4:
        doc["dataset"] = {**rng.choice(_DATASETS)}
    elif dimension == 5:
        doc["query"]["kind"] = rng.choice(_KINDS)
    elif dimension == 6:
        doc["query"]["group_by"] = rng.sample(_COLUMNS, rng.randint(0, 2))
    elif dimension == 7:
        doc["dsa"] = rng.choice(_DSAS)
    else:
        doc["now"] = rng.choice(_NOWS)


def corpus(size: int, seed: int = 2026) -> list[DecisionInput]:
    """`size` inputs drawn with a fixed seed: allowed templates with zero, one or two dimensions changed."""
    rng = random.Random(seed)
    out = []
    for n in range(size):
        template = _TEMPLATES[n % len(_TEMPLATES)]
        doc = json.loads(json.dumps(template))
        for _ in range(rng.choice([0, 0, 1, 1, 1, 2, 2])):
            _mutate(doc, rng)
        doc["requester"]["sub"] = f"researcher-{rng.randint(1, 50)}"
        if rng.random() < 0.05:
            doc["requester"]["roles"] = ["steward"]
        doc["dataset"] = {**doc["dataset"], "jurisdiction": "DE", "columns": _COLUMNS[:7]}
        doc["query"]["filters"] = {
            "op": "and",
            "args": [{"column": rng.choice(_COLUMNS[:5]), "op": ">=", "value": 1}],
        }
        out.append(DecisionInput.model_validate(doc))
    return out
