"""A site's side of a federated GLM: the model spec, the design matrix, sessions and one iteration's sums.

A researcher (through the coordinator, with their own token) opens a session at a site for one dataset,
agreement, purpose and model. The site asks its policy (query kind "glm"), applies the consent filter and
recorded withdrawals exactly as a query does, and loads the model's complete rows into memory here, at the
site. Every site builds the same design matrix from the spec: an intercept, the numeric columns in order,
then one dummy per non-reference level of each categorical column (the first listed level is the
reference). Rows with a missing model value, a category outside the listed levels, or a prior weight that
is missing or not above 0 are left out (as glm's na.omit; zero weights would not count in N anyway).

Each iteration the session (only its opener's `sub`, only under its agreement) takes β, re-applies
withdrawals recorded since it opened, re-runs the disclosure checks, audits `glm.iteration` and returns
XᵀWX, XᵀWz, the deviance, the Pearson χ² and n (see gateway.federation.glm_fit). A session ends at its
iteration cap, after `IDLE_SECONDS` without use, on DELETE, or at the first failed check.

Policy `needs_approval` for a GLM is answered "approval pending" and opens nothing: a fit is a dialogue
of many releases, and this gateway has no steward queue for sessions yet. A session whose decision sets a
publication moratorium (DUO:0000024) says until when as it opens, as a query's answer does.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pandas as pd
import rfc8785
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, field_validator, model_validator

from audit import EventType, register
from audit.events import COUNT, DIGEST, LABEL, REASONS
from connectors.utf8 import is_text
from gateway.auth import Principal
from gateway.decision import Decision, Obligations
from gateway.decision.models import CountryCode, Purpose, QueryFacts
from gateway.federation.glm_fit import (
    DISCLOSURE_TITLE,
    INTERCEPT,
    MORATORIUM,
    Family,
    SiteStatistics,
    SiteStopped,
    moratorium_day,
)
from gateway.pipeline import QueryPipeline, hashed, owner, sha256_label
from gateway.query.columns import DatasetColumn, python_value
from gateway.query.consent import consent_predicate
from gateway.query.execute import store_failure
from gateway.query.spec import AgreementId, ColumnName, DatasetId, SafeInt, bounded_purpose, few_members
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime
from pseudonymize.disclosure import DisclosureRules
from pseudonymize.disclosure.glm_checks import (
    CategoryColumn,
    GlmDisclosureError,
    check_glm_joint_cells,
    check_glm_release,
    check_glm_rows,
    check_glm_value_counts,
    check_linear_predictor,
    check_weight_spread,
)
from pseudonymize.pseudonym import token_spellings
from pseudonymize.store import CatalogEntry

MAX_ITERATIONS = 50
IDLE_SECONDS = 900.0
MAX_OPEN_SESSIONS = 5  # per researcher: each session holds its rows in this process's memory
MAX_PARAMETERS = 100
_EPS = 1e-10
_BLOCK_ROWS = 8192

register(
    EventType(
        "glm.session_opened",
        "a researcher opened a federated GLM session at this site",
        required={"query_hash": DIGEST, "session": DIGEST, "parameters": COUNT},
        optional={"rows": COUNT, "coordinator": LABEL},
    )
)
register(
    EventType(
        "glm.session_closed",
        "a federated GLM session ended",
        required={"query_hash": DIGEST, "session": DIGEST, "iterations": COUNT, "reason": LABEL},
    )
)
register(
    EventType(
        "glm.refused",
        "a GLM session was not opened, or an iteration was refused (no session, a failed check, the cap)",
        required={"stage": LABEL, "reasons": REASONS},
        optional={"query_hash": DIGEST, "session": DIGEST, "iteration": COUNT},
    )
)

Level = StrictBool | SafeInt | Annotated[str, Field(min_length=1, max_length=256)]
"""A categorical level: a value of the column, which the request's canonical JSON (its hash) must hold."""


def session_digest(session_id: str) -> str:
    """How the audit log names a session: the id is a handle the researcher holds, so only its digest."""
    return sha256_label(hashlib.sha256(session_id.encode()).hexdigest())


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_members(cls, value: Any) -> Any:
        return few_members(value)


class CategoricalCovariate(_Model):
    """A categorical column and its levels; the first is the reference, the others get one dummy each."""

    column: ColumnName
    levels: list[Level] = Field(min_length=2, max_length=50, json_schema_extra={"uniqueItems": True})

    @field_validator("levels")
    @classmethod
    def _distinct(cls, levels: list[Level]) -> list[Level]:
        if len({(type(v), v) for v in levels}) != len(levels):
            raise ValueError("levels must be distinct")
        if not all(is_text(v) for v in levels if isinstance(v, str)):
            raise ValueError("a level is not text (a lone surrogate)")
        return levels


class GlmModel(_Model):
    """The model every site builds identically: outcome, family, covariates, optional offset and weights."""

    outcome: ColumnName
    family: Family
    numeric: list[ColumnName] = Field(default_factory=list, max_length=MAX_PARAMETERS)
    categorical: list[CategoricalCovariate] = Field(default_factory=list, max_length=20)
    offset: ColumnName | None = None
    weights: ColumnName | None = None
    intercept: bool = True

    @model_validator(mode="after")
    def _columns_once(self) -> GlmModel:
        named = self.columns()
        if len(set(named)) != len(named):
            raise ValueError("a column appears twice in the model")
        if not self.parameter_names():
            raise ValueError("the model has no parameter")
        if len(self.parameter_names()) > MAX_PARAMETERS:
            raise ValueError(f"the model has more than {MAX_PARAMETERS} parameters")
        return self

    def columns(self) -> list[str]:
        """Every column the model reads."""
        return [column for column, _ in self.column_fields()]

    def column_fields(self) -> list[tuple[str, str]]:
        """Every column the model reads, with where the request names it (`model.numeric[1]`)."""
        fields = [(self.outcome, "model.outcome")]
        fields += [(c, f"model.numeric[{i}]") for i, c in enumerate(self.numeric)]
        fields += [(c.column, f"model.categorical[{i}].column") for i, c in enumerate(self.categorical)]
        fields += [
            (c, f"model.{name}") for name, c in (("offset", self.offset), ("weights", self.weights)) if c
        ]
        return fields

    def parameter_names(self) -> list[str]:
        """(Intercept), numeric columns, then `column[level]` per non-reference level."""
        names = [INTERCEPT] if self.intercept else []
        names += list(self.numeric)
        names += [f"{c.column}[{level}]" for c in self.categorical for level in c.levels[1:]]
        return names


class GlmSessionRequest(_Model):
    """The body that opens a session at one site."""

    dataset: DatasetId
    agreement: AgreementId
    purpose: Purpose
    destination: CountryCode | None = None
    model: GlmModel

    @field_validator("purpose", mode="before")
    @classmethod
    def _bounded_purpose(cls, value: Any) -> Any:
        return bounded_purpose(value)

    def query_facts(self) -> QueryFacts:
        """The `query` part of the policy input: kind glm and the model's columns."""
        return QueryFacts(kind="glm", columns=tuple(sorted(self.model.columns())), filters=None, group_by=())

    def query_hash(self) -> str:
        """SHA-256 of the RFC 8785 form of the request."""
        return hashlib.sha256(rfc8785.dumps(self.model_dump(mode="json"))).hexdigest()


class IterationRequest(_Model):
    """One iteration: the agreement the session was opened under and β (one number per parameter)."""

    agreement: AgreementId
    # Strict: numbers only, as the schema says (lax validation would take "1.5" and true).
    beta: list[StrictFloat] = Field(min_length=1, max_length=MAX_PARAMETERS)

    @field_validator("beta")
    @classmethod
    def _finite(cls, beta: list[float]) -> list[float]:
        if not all(math.isfinite(b) for b in beta):
            raise ValueError("beta must hold finite numbers")
        return beta


@dataclass
class GlmArrays:
    """The in-memory design at a site: X, y, offset, prior weights and (for withdrawals) pseudonyms."""

    x: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    weights: np.ndarray
    patients: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def without(self, withdrawn: set[str]) -> GlmArrays:
        """The rows whose patient did not withdraw."""
        if self.patients is None or not withdrawn:
            return self
        keep = ~np.isin(self.patients, token_spellings(withdrawn))
        return GlmArrays(
            self.x[keep], self.y[keep], self.offset[keep], self.weights[keep], self.patients[keep]
        )


def iteration_statistics(
    data: GlmArrays, beta: np.ndarray, family: Family, rules: DisclosureRules | None = None
) -> SiteStatistics:
    """One IRLS step's sums at β (glm.fit's formulas; see gateway.federation.glm_fit). With `rules`,
    GlmDisclosureError when the working weight rests on fewer than min_cell_count rows' worth
    (`check_weight_spread`) or a row's linear predictor saturates the model (`check_linear_predictor`)."""
    p = data.x.shape[1]
    xtwx, xtwz = np.zeros((p, p)), np.zeros(p)
    deviance = pearson = weight = weight_sq = largest = 0.0
    # Blocks small enough that each one's temporaries stay in cache: 2–3× faster than whole columns.
    for start in range(0, data.rows, _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        block = _block_sums(data.x[rows], data.y[rows], data.offset[rows], data.weights[rows], beta, family)
        xtwx += block[0]
        xtwz += block[1]
        deviance += block[2]
        pearson += block[3]
        weight += block[4]
        weight_sq += block[5]
        largest = max(largest, block[6])
    if rules is not None:
        if family != "gaussian":  # a Gaussian step weighs every row as its prior weight, whatever β
            check_linear_predictor(largest)
        check_weight_spread(weight, weight_sq, rules)
    return SiteStatistics(xtwx=xtwx, xtwz=xtwz, deviance=deviance, pearson_chi2=pearson, n=data.rows)


def _block_sums(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, w: np.ndarray, beta: np.ndarray, family: Family
) -> tuple[np.ndarray, np.ndarray, float, float, float, float, float]:
    with np.errstate(over="ignore", under="ignore"):  # a far β saturates μ; the clip below bounds it
        return _sums_at(x, y, offset, w, beta, family)


def _sums_at(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, w: np.ndarray, beta: np.ndarray, family: Family
) -> tuple[np.ndarray, np.ndarray, float, float, float, float, float]:
    eta = x @ beta + offset
    if family == "gaussian":
        mu, dmu, var = eta, np.ones_like(eta), np.ones_like(eta)
        deviance = float(np.sum(w * (y - mu) ** 2))
    elif family == "binomial":
        mu = np.clip(1.0 / (1.0 + np.exp(-eta)), _EPS, 1 - _EPS)
        dmu = var = mu * (1 - mu)
        deviance = float(-2.0 * np.sum(w * (y * np.log(mu) + (1 - y) * np.log1p(-mu))))
    else:
        mu = np.exp(np.minimum(eta, 700.0))
        dmu = var = mu
        with np.errstate(divide="ignore", invalid="ignore"):
            ylogy = np.where(y > 0, y * np.log(y / mu), 0.0)
        deviance = float(2.0 * np.sum(w * (ylogy - (y - mu))))
    working_weights = w * dmu * dmu / var
    z = (eta - offset) + (y - mu) / dmu
    weighted = x * working_weights[:, None]
    # How far β takes the linear predictor towards where the model saturates (both tails for the
    # binomial), the offset left out: the site's own data sets that.
    reach = eta - offset
    largest = float(np.max(np.abs(reach) if family == "binomial" else reach)) if reach.size else 0.0
    return (
        weighted.T @ x, weighted.T @ z, deviance, float(np.sum(w * (y - mu) ** 2 / var)),
        float(working_weights.sum()), float(np.sum(working_weights * working_weights)), largest,
    )  # fmt: skip


def _first_dummy(model: GlmModel) -> int:
    """Where the dummies start: they are the design's last columns, categorical by categorical."""
    return len(model.parameter_names()) - sum(len(cov.levels) - 1 for cov in model.categorical)


def binary_cells(data: GlmArrays, model: GlmModel) -> dict[str, int]:
    """Rows per category of every binary column of the design and of a binomial outcome."""
    cells: dict[str, int] = {}
    names = model.parameter_names()
    n = data.rows
    dummy_rows = data.x[:, _first_dummy(model) :].sum(axis=0)  # one pass over the rows for every dummy
    for cov in model.categorical:
        in_levels, dummy_rows = np.split(dummy_rows, [len(cov.levels) - 1])
        for level, count in zip(cov.levels[1:], in_levels, strict=True):
            cells[f"{cov.column}={level}"] = int(count)
            cells[f"{cov.column}!={level}"] = n - int(count)
        cells[f"{cov.column}={cov.levels[0]} (reference)"] = n - int(in_levels.sum())
    for column in model.numeric:
        few = few_values(data.x[:, names.index(column)], 2)
        if few is not None and len(few[0]) == 2:
            # Named by rank, never by value: the values are the data's, not the request's.
            for rank, count in zip(("lower", "higher"), few[1], strict=True):
                cells[f"{column} ({rank} value)"] = count
    if model.family == "binomial":
        events = int(np.sum(data.y == 1))
        cells[f"{model.outcome}=1"] = events
        cells[f"{model.outcome}=0"] = n - events
    return cells


def few_values(values: np.ndarray, limit: int) -> tuple[list[float], list[int]] | None:
    """The distinct values of `values` in ascending order and the rows at each, or None when there are
    more than `limit`. A handful of passes rather than a sort: most model columns are continuous, which the
    first rows already show."""
    head = values[:4096]
    if len(np.unique(head)) > limit:
        return None
    found: dict[float, int] = {}
    rest = values
    while rest.size:
        if len(found) == limit:
            return None
        value = rest[0]
        left = rest[rest != value]
        found[float(value)] = rest.size - left.size
        rest = left
    ordered = sorted(found)
    return ordered, [found[v] for v in ordered]


_OUTCOME = "model.outcome"


def category_columns(data: GlmArrays, model: GlmModel) -> list[CategoryColumn]:
    """The columns whose joint tables the sums give (`check_glm_joint_cells`): each categorical covariate
    with all its levels, each numeric column with two values among the rows, and the outcome when it is
    binary (always for a binomial model). Numeric values are named "lower" and "higher", never shown."""
    names = model.parameter_names()
    columns: list[CategoryColumn] = []
    first = _first_dummy(model)
    for i, cov in enumerate(model.categorical):
        last = first + len(cov.levels) - 1
        # A row's level: 0 for the reference, else the one dummy at 1 (each exactly 0.0 or 1.0).
        codes = data.x[:, first:last] @ np.arange(1.0, len(cov.levels))
        labels = tuple(f"model.categorical[{i}]={level}" for level in cov.levels)
        columns.append(CategoryColumn(labels, codes.astype(np.intp)))
        first = last
    for i, column in enumerate(model.numeric):
        two = _two_valued(data.x[:, names.index(column)], f"model.numeric[{i}]")
        if two is not None:
            columns.append(two)
    if model.family == "binomial":
        columns.append(CategoryColumn((f"{_OUTCOME}=0", f"{_OUTCOME}=1"), (data.y == 1).astype(np.intp)))
    else:
        outcome = _two_valued(data.y, _OUTCOME)
        if outcome is not None:
            columns.append(outcome)
    return columns


def _two_valued(values: np.ndarray, name: str) -> CategoryColumn | None:
    few = few_values(values, 2)
    if few is None or len(few[0]) != 2:
        return None
    higher = (values == few[0][1]).astype(np.intp)
    return CategoryColumn((f"{name} (lower value)", f"{name} (higher value)"), higher)


def value_counts(data: GlmArrays, model: GlmModel) -> dict[str, list[int]]:
    """Rows at each value of every numeric covariate and outcome with at most three values among the rows
    (`check_glm_value_counts`), by the column's name in the request."""
    names = model.parameter_names()
    columns = {f"model.numeric[{i}]": data.x[:, names.index(c)] for i, c in enumerate(model.numeric)}
    columns[_OUTCOME] = data.y
    counts = {}
    for name, values in columns.items():
        few = few_values(values, 3)
        if few is not None:
            counts[name] = few[1]
    return counts


def check_release(data: GlmArrays, model: GlmModel, obligations: Obligations) -> None:
    """The disclosure checks on a session's rows, when it opens and before every iteration (withdrawals
    change the rows); GlmDisclosureError names the failing rule."""
    rules = DisclosureRules.from_obligations(obligations)
    check_glm_release(
        data.rows,
        len(model.parameter_names()),
        binary_cells(data, model),
        rules,
        min_rows=obligations.glm_min_rows,
        max_parameter_ratio=obligations.glm_max_parameter_ratio,
    )
    check_glm_joint_cells(category_columns(data, model), rules)
    check_glm_value_counts(value_counts(data, model), rules)


class GlmDataError(ValueError):
    """The site's rows do not fit the model (an outcome outside the family's range); `field` names it."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


def _restrictions(frame: pd.DataFrame, model: GlmModel) -> dict[str, np.ndarray]:
    """What each restriction of the model keeps of `frame`'s rows with the outcome present: every other
    column present, a categorical column at its levels, the weights above zero."""
    restrictions: dict[str, np.ndarray] = {}
    for column in model.columns():
        if column != model.outcome:
            restrictions[f"column {column}"] = frame[column].notna().to_numpy(dtype=bool)
    for cov in model.categorical:
        restrictions[f"levels of {cov.column}"] = frame[cov.column].isin(cov.levels).to_numpy(dtype=bool)
    if model.weights is not None:
        positive = pd.to_numeric(frame[model.weights], errors="coerce").fillna(0) > 0
        restrictions[f"weights {model.weights} above zero"] = positive.to_numpy(dtype=bool)
    return restrictions


def check_rows(frame: pd.DataFrame, model: GlmModel, rules: DisclosureRules) -> None:
    """The query-set rule for a model (`check_glm_rows`): the rows with its outcome, those it keeps, and
    those each of its restrictions alone leaves out (GlmDisclosureError)."""
    population = frame[model.outcome].notna().to_numpy(dtype=bool)
    restrictions = _restrictions(frame, model)
    kept = population.copy()
    for mask in restrictions.values():
        kept &= mask
    left_out_by = {}
    for name, mask in restrictions.items():
        others = population.copy()
        for other, other_mask in restrictions.items():
            if other != name:
                others &= other_mask
        left_out_by[name] = int(np.count_nonzero(others & ~mask))
    check_glm_rows(int(np.count_nonzero(population)), int(np.count_nonzero(kept)), left_out_by, rules)


def design(frame: pd.DataFrame, model: GlmModel, patient_column: str | None = None) -> GlmArrays:
    """The design matrix of the model's complete rows of `frame` (columns already typed by the store)."""
    keep = frame[model.outcome].notna().to_numpy(dtype=bool)
    for mask in _restrictions(frame, model).values():
        keep &= mask
    rows = frame[keep]
    n = len(rows)
    parts: list[np.ndarray] = [np.ones(n)] if model.intercept else []
    parts += [rows[c].to_numpy(dtype=float) for c in model.numeric]
    for cov in model.categorical:
        values = rows[cov.column].to_numpy(dtype=object)
        parts += [(values == level).astype(float) for level in cov.levels[1:]]
    x = np.column_stack(parts) if n else np.zeros((0, len(model.parameter_names())))
    try:
        y = rows[model.outcome].to_numpy(dtype=float)
    except (TypeError, ValueError):  # a text or date column as a binomial outcome
        raise GlmDataError(
            f"outcome {model.outcome!r} must be numbers (binomial: 0/1 or boolean)", "model.outcome"
        ) from None
    if model.family == "binomial" and not np.isin(y, (0.0, 1.0)).all():
        raise GlmDataError(f"binomial outcome {model.outcome!r} must be 0/1 or boolean", "model.outcome")
    if model.family == "poisson" and (y < 0).any():
        raise GlmDataError(f"poisson outcome {model.outcome!r} must not be negative", "model.outcome")
    offset = rows[model.offset].to_numpy(dtype=float) if model.offset else np.zeros(n)
    weights = rows[model.weights].to_numpy(dtype=float) if model.weights else np.ones(n)
    # As text: a DuckDB store returns its UUID tokens as uuid.UUID objects, which equal no string.
    patients = (
        np.array([None if pd.isna(p) else str(p) for p in rows[patient_column]], dtype=object)
        if patient_column
        else None
    )
    return GlmArrays(x, y, offset, weights, patients)


@dataclass
class GlmSession:
    """One open session at this site."""

    id: str
    sub: str
    """The owner (`gateway.pipeline.owner`, as a queued query's)."""
    request: GlmSessionRequest
    query_hash: str
    obligations: Obligations
    entry: CatalogEntry
    data: GlmArrays
    withdrawn: set[str]
    bundle_digest: str = ""
    """The policy bundle the session was decided under: iterations stop once the site's policy changes."""
    iterations: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def publication_moratorium_until(self) -> str | None:
        """The last day of the publication moratorium (DUO:0000024) the session's rows are under, as the
        decision's obligations set it (YYYY-MM-DD), or None."""
        until = self.obligations.publication_moratorium_until
        return until.isoformat() if until is not None else None


# compare_digest takes ASCII text only: owners are compared as bytes ("surrogatepass": a subject is any text
# a token's JSON can hold).
_OWNER = "utf-8", "surrogatepass"


class GlmSessions:
    """The sessions open in this gateway process (a fit's iterations must reach the same process)."""

    def __init__(
        self,
        *,
        max_iterations: int = MAX_ITERATIONS,
        idle_seconds: float = IDLE_SECONDS,
        max_open: int = MAX_OPEN_SESSIONS,
    ) -> None:
        self.max_iterations = max_iterations
        self.idle_seconds = idle_seconds
        self.max_open = max_open
        self._open: dict[str, GlmSession] = {}

    def room_for(self, owner: str) -> bool:
        """True while `owner` holds fewer than `max_open` sessions."""
        self._expire()
        return sum(1 for s in self._open.values() if s.sub == owner) < self.max_open

    def add(self, session: GlmSession) -> None:
        self._expire()
        self._open[session.id] = session

    def get(self, session_id: str, sub: str, agreement: str) -> GlmSession | None:
        """The session if it is open, belongs to `sub` and was opened under `agreement`."""
        self._expire()
        session = self._open.get(session_id)
        if (
            session is None
            or not secrets.compare_digest(session.sub.encode(*_OWNER), sub.encode(*_OWNER))
            or session.request.agreement != agreement
        ):
            return None
        return session

    def owned(self, session_id: str, sub: str) -> GlmSession | None:
        """The session if it is open and belongs to `sub` (any agreement)."""
        session = self._open.get(session_id)
        if session is None or not secrets.compare_digest(session.sub.encode(*_OWNER), sub.encode(*_OWNER)):
            return None
        return session

    def remove(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._open)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._open.values() if now - s.last_used > self.idle_seconds]:
            del self._open[sid]


class GlmSiteService:
    """Opens sessions, runs iterations and closes sessions for one site; every step audited."""

    def __init__(self, runtime: SiteRuntime, sessions: GlmSessions) -> None:
        self.rt = runtime
        self.sessions = sessions
        self.pipeline = QueryPipeline(runtime)

    async def open(
        self,
        principal: Principal,
        request: GlmSessionRequest,
        request_id: str,
        *,
        coordinator: str | None = None,
    ) -> dict[str, Any]:
        """Decide, load the model's rows, check them; a session id, or `pending_approval` (nothing opened).

        `coordinator` is the peer whose verified assertion came with the request, for the audit entry."""
        query_hash = hashed(request)
        try:
            if not self.sessions.room_for(owner(principal)):
                raise Refusal(
                    "limit",
                    "Too many open GLM sessions",
                    [f"at most {self.sessions.max_open} open GLM sessions per researcher; close one first"],
                    stage="limit",
                )
            entry = self.rt.catalog.latest(request.dataset)
            if entry is None:
                raise Refusal(
                    "not_found",
                    "Unknown dataset",
                    [f"this site has no dataset {request.dataset!r}"],
                    field="dataset",
                )
            decision = await self.pipeline.decide_only(principal, request, entry, request_id, query_hash)
            if decision.decision == "needs_approval":
                await self._refused(principal, request_id, "approval", list(decision.reasons), query_hash)
                return {"status": "pending_approval", "reasons": list(decision.reasons)}
            session = await self._session(principal, request, entry, decision, query_hash)
        except Exception as exc:  # whatever stops a session ends as an audited refusal, never a 500
            refusal = exc if isinstance(exc, Refusal) else Refusal(
                "unavailable", "The session could not be opened", [type(exc).__name__], stage="execute"
            )  # fmt: skip
            refusal.request_id = request_id
            refusal.audited = True
            await self._refused(
                principal, request_id, refusal.stage, refusal.reasons or [refusal.title], query_hash
            )
            if refusal is exc:
                raise
            raise refusal from None
        self.sessions.add(session)
        await self.rt.record(
            "glm.session_opened",
            {
                "query_hash": sha256_label(query_hash),
                "session": session_digest(session.id),
                "parameters": len(request.model.parameter_names()),
                "rows": session.data.rows,
                **({"coordinator": coordinator} if coordinator else {}),
            },
            principal=principal,
            request_id=request_id,
        )
        return {
            "status": "open",
            "session": session.id,
            "parameters": request.model.parameter_names(),
            "max_iterations": self.sessions.max_iterations,
            **({MORATORIUM: until} if (until := session.publication_moratorium_until) is not None else {}),
        }

    async def iterate(
        self, principal: Principal, session_id: str, body: IterationRequest, request_id: str
    ) -> dict[str, Any]:
        """One iteration at β within an open session of this researcher and agreement."""
        session = self.sessions.get(session_id, owner(principal), body.agreement)
        if session is None:
            reasons = [
                "no open GLM session with this id for you under this agreement; β is only accepted "
                "within a session you opened"
            ]
            await self._refused(principal, request_id, "session", reasons, None)
            raise Refusal("not_found", "No such GLM session", reasons, stage="session", audited=True)
        async with session.lock:
            session.last_used = time.monotonic()
            number = session.iterations + 1
            try:
                if number > self.sessions.max_iterations:
                    raise Refusal(
                        "limit",
                        "GLM iteration limit reached",
                        [f"a session allows {self.sessions.max_iterations} iterations"],
                        stage="limit",
                    )
                names = session.request.model.parameter_names()
                if len(body.beta) != len(names):
                    raise Refusal(
                        "bad_request",
                        "Wrong number of coefficients",
                        [f"beta needs {len(names)} numbers, one per parameter"],
                        stage="validate",
                        field="beta",
                    )
                if (
                    not await self.rt.policy.current_soon()
                    or self.rt.policy.bundle.digest != session.bundle_digest
                ):
                    # The session's terms were decided under a policy the site no longer runs (an agreement
                    # suspended, a threshold tightened): its rows leave no more sums under them.
                    raise Refusal(
                        "forbidden",
                        "The site's policy changed",
                        ["the site's policy changed since this session was opened; open a new session"],
                        stage="decide",
                    )
                await self._apply_withdrawals(session)
                beta = np.asarray(body.beta, dtype=float)
                rules = DisclosureRules.from_obligations(session.obligations)
                try:
                    # The session's rows, then the weights β gives them.
                    check_release(session.data, session.request.model, session.obligations)
                    stats = await asyncio.to_thread(
                        iteration_statistics, session.data, beta, session.request.model.family, rules
                    )
                except GlmDisclosureError as exc:
                    raise Refusal("forbidden", DISCLOSURE_TITLE, [exc.reason], stage="disclosure") from None
                if not stats.finite():
                    raise Refusal(
                        "bad_request", "Coefficients out of range",
                        ["at these coefficients the sums overflow; send β of a fit that converges"],
                        stage="validate", field="beta",
                    )  # fmt: skip
            except Refusal as refusal:
                refusal.request_id = request_id
                refusal.audited = True
                await self._refused(
                    principal,
                    request_id,
                    refusal.stage,
                    refusal.reasons,
                    session.query_hash,
                    session=session.id,
                    iteration=number,
                )
                if refusal.kind != "bad_request":
                    await self._close(principal, session, f"refused-{refusal.stage}", request_id)
                raise
            session.iterations = number
            digest = hashlib.sha256(rfc8785.dumps(body.beta)).hexdigest()
            await self.rt.record(
                "glm.iteration",
                {
                    "query_hash": sha256_label(session.query_hash),
                    "iteration": number,
                    "family": session.request.model.family,
                    "parameters_digest": sha256_label(digest),
                    "rows": stats.n,
                },
                principal=principal,
                request_id=request_id,
            )
        return {"session": session.id, "iteration": number, **stats.to_dict()}

    async def close(self, principal: Principal, session_id: str, request_id: str) -> bool:
        """End the researcher's session; False when there is none."""
        session = self.sessions.owned(session_id, owner(principal))
        if session is None:
            return False
        await self._close(principal, session, "closed", request_id)
        return True

    # -- steps ---------------------------------------------------------------------------------------------

    async def _session(
        self,
        principal: Principal,
        request: GlmSessionRequest,
        entry: CatalogEntry,
        decision: Decision,
        query_hash: str,
    ) -> GlmSession:
        obligations = decision.obligations
        assert obligations is not None
        if obligations.dp is not None:
            raise Refusal(
                "forbidden",
                "Differential privacy required",
                [
                    f"{request.agreement} requires differential privacy; this gateway does not fit "
                    "noisy models, so the GLM is refused"
                ],
                stage="decide",
            )
        if obligations.round_to > 1:
            # XᵀWX's intercept entry is the exact row count, and a binomial score the exact case count:
            # sums a session releases cannot be rounded without breaking the fit, so there is no session.
            raise Refusal(
                "forbidden",
                "Rounded counts required",
                [
                    f"{request.agreement} requires counts rounded to multiples of {obligations.round_to}, "
                    "which a GLM's exact sums (its row and case counts) cannot honour, so the GLM is refused"
                ],
                stage="decide",
            )
        allowed = set(obligations.allowed_columns)
        for column, place in request.model.column_fields():
            if column not in allowed:
                raise Refusal(
                    "forbidden",
                    "Column not allowed",
                    [f"the agreement does not grant column {column!r}"],
                    stage="plan",
                    field=place,
                )
        withdrawn = set()
        if entry.patient_column is not None:
            withdrawn = set(
                await asyncio.to_thread(self.rt.state.withdrawn, entry.dataset, entry.key_context)
            )
        frame = await asyncio.to_thread(self._load, request, entry, obligations, sorted(withdrawn))
        try:
            data = design(frame, request.model, entry.patient_column)
        except GlmDataError as exc:
            raise Refusal(
                "bad_request", "The data do not fit the model", [str(exc)], stage="plan", field=exc.field
            ) from None
        try:
            check_rows(frame, request.model, DisclosureRules.from_obligations(obligations))
            check_release(data, request.model, obligations)
        except GlmDisclosureError as exc:
            raise Refusal("forbidden", DISCLOSURE_TITLE, [exc.reason], stage="disclosure") from None
        return GlmSession(
            uuid.uuid4().hex, owner(principal), request, query_hash, obligations, entry, data, withdrawn,
            bundle_digest=decision.bundle_digest,
        )  # fmt: skip

    def _load(
        self,
        request: GlmSessionRequest,
        entry: CatalogEntry,
        obligations: Obligations,
        withdrawn: Sequence[str],
    ) -> pd.DataFrame:
        catalog = {c["name"]: DatasetColumn(c["name"], c["type"]) for c in entry.columns}
        model = request.model
        for column, place in model.column_fields():
            if column not in catalog:
                raise Refusal(
                    "bad_request",
                    "Unknown column",
                    [f"the dataset has no column {column!r}"],
                    stage="plan",
                    field=place,
                )
            numeric_role = column != model.outcome or model.family != "binomial"
            is_categorical = any(c.column == column for c in model.categorical)
            if (
                numeric_role
                and not is_categorical
                and catalog[column].type_class not in ("int", "float", "bool")
            ):
                raise Refusal(
                    "bad_request",
                    "Column is not numeric",
                    [f"column {column!r} is {catalog[column].arrow_type}, not numeric"],
                    stage="plan",
                    field=place,
                )
        for i, cov in enumerate(model.categorical):
            for level in cov.levels:
                try:
                    python_value(catalog[cov.column], level)
                except ValueError as exc:
                    raise Refusal(
                        "bad_request",
                        "Invalid level",
                        [str(exc)],
                        stage="plan",
                        field=f"model.categorical[{i}].levels",
                    ) from None
        table = sa.table(entry.table_name, *(sa.column(c.name, c.sa_type()) for c in catalog.values()))
        rule = obligations.consent_filter
        dialect = self.rt.store.dialect.name
        for name in (rule.consent_column, rule.withdrawn_column):
            if name not in catalog:
                raise Refusal(
                    "unavailable",
                    "Consent columns missing",
                    [f"the dataset lacks consent column {name!r}"],
                    stage="plan",
                )
        # As a query's: consent classes below min_cell_count are left out, whatever the rule admits, and
        # counted without the recorded withdrawals (read only for a dataset with a patient column).
        patient = entry.patient_column if withdrawn else None
        tokens = withdrawn if patient is not None else ()
        classes = self.rt.consent_values.get(
            self.rt.store, entry.table_name, rule.consent_column, rule.withdrawn_column,
            patient_column=patient, withdrawals=tokens,
        )  # fmt: skip
        where = consent_predicate(
            rule,
            table.c[rule.consent_column],
            table.c[rule.withdrawn_column],
            dialect,
            min_cell_count=obligations.min_cell_count,
            classes=classes,
            patient=table.c[patient] if patient is not None else None,
            withdrawals=tokens,
        )
        wanted = list(
            dict.fromkeys([*model.columns(), *([entry.patient_column] if entry.patient_column else [])])
        )
        query = sa.select(*(table.c[c] for c in wanted)).where(where)
        try:
            with self.rt.store.connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.SQLAlchemyError as exc:
            raise Refusal(
                "unavailable", "The store could not answer", [store_failure(exc)], stage="execute"
            ) from None
        frame = pd.DataFrame([tuple(r) for r in rows], columns=wanted)
        for cov in model.categorical:
            # Levels arrive as JSON scalars; compare them with the column's own Python values.
            frame[cov.column] = frame[cov.column].astype(object)
        return frame

    async def _apply_withdrawals(self, session: GlmSession) -> None:
        entry = session.entry
        if entry.patient_column is None:
            return
        now = set(await asyncio.to_thread(self.rt.state.withdrawn, entry.dataset, entry.key_context))
        new = now - session.withdrawn
        if new:
            session.data = session.data.without(new)
            session.withdrawn = now

    async def _close(self, principal: Principal, session: GlmSession, reason: str, request_id: str) -> None:
        self.sessions.remove(session.id)
        await self.rt.record(
            "glm.session_closed",
            {
                "query_hash": sha256_label(session.query_hash),
                "session": session_digest(session.id),
                "iterations": session.iterations,
                "reason": reason,
            },
            principal=principal,
            request_id=request_id,
        )

    async def _refused(
        self,
        principal: Principal,
        request_id: str,
        stage: str,
        reasons: list[str],
        query_hash: str | None,
        *,
        session: str | None = None,
        iteration: int | None = None,
    ) -> None:
        payload: dict[str, Any] = {"stage": stage, "reasons": reasons or ["refused"]}
        if query_hash is not None:
            payload["query_hash"] = sha256_label(query_hash)
        if session is not None:
            payload["session"] = session_digest(session)
        if iteration is not None:
            payload["iteration"] = iteration
        await self.rt.record(
            "glm.refused", payload, principal=principal, request_id=request_id, cover_reasons=True
        )


class InMemoryGlmSite:
    """A site over arrays already in memory (benchmarks and unit tests): the same sums, no policy."""

    def __init__(self, site: str, names: list[str], data: GlmArrays, family: Family) -> None:
        self.site = site
        self.names = names
        self.data = data
        self.family: Family = family
        self.publication_moratorium_until: str | None = None

    async def open(self) -> list[str]:
        return list(self.names)

    async def iterate(self, beta: Sequence[float], iteration: int) -> SiteStatistics:
        return await asyncio.to_thread(
            iteration_statistics, self.data, np.asarray(beta, dtype=float), self.family
        )

    async def close(self) -> None:
        return None


class LocalGlmSite:
    """The coordinator's own site, driven in-process through the same service its HTTP routes use."""

    def __init__(
        self, service: GlmSiteService, principal: Principal, request: GlmSessionRequest, request_id: str
    ) -> None:
        self.site = service.rt.settings.site_id
        self.service = service
        self.principal = principal
        self.request = request
        self.request_id = request_id
        self.session: str | None = None
        self.publication_moratorium_until: str | None = None

    async def open(self) -> list[str]:
        try:
            body = await self.service.open(self.principal, self.request, self.request_id)
        except Refusal as refusal:
            raise SiteStopped(self.site, _state(refusal), refusal.reasons or [refusal.title], 0) from None
        if body["status"] == "pending_approval":
            raise SiteStopped(self.site, "approval_pending", body["reasons"], 0)
        self.session = str(body["session"])
        self.publication_moratorium_until = moratorium_day(body.get(MORATORIUM))
        return list(body["parameters"])

    async def iterate(self, beta: Sequence[float], iteration: int) -> SiteStatistics:
        assert self.session is not None
        body = IterationRequest(agreement=self.request.agreement, beta=list(beta))
        try:
            answer = await self.service.iterate(self.principal, self.session, body, self.request_id)
        except Refusal as refusal:
            self.session = None
            raise SiteStopped(
                self.site, _state(refusal), refusal.reasons or [refusal.title], iteration
            ) from None
        return SiteStatistics.from_dict(answer, len(beta))

    async def close(self) -> None:
        if self.session is not None:
            await self.service.close(self.principal, self.session, self.request_id)
            self.session = None


def _state(refusal: Refusal) -> Any:
    if refusal.stage == "disclosure":
        return "suppressed"
    if refusal.kind == "forbidden":
        return "denied"
    return "unreachable" if refusal.kind == "unavailable" else "refused"
