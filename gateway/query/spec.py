"""The typed query spec researchers send (the HTTP body): dataset, agreement, purpose, kind, filters, groups.

A spec is one of six models told apart by `kind` (an explicit allow-list; a federated GLM is not a query
spec but a session, see gateway.federation.glm_site). Filters are a small boolean tree: a leaf
`{"column", "op", "value"}` or a node `{"and": [...]}`, `{"or": [...]}`, `{"not": node}`, at most 5
levels deep with at most 32 leaves. Nothing here knows the
dataset's columns or types: `gateway.query.compile` checks those against the catalog and the obligations.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Final, Literal

import rfc8785
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audit.events import identifier_problem
from gateway.decision.models import MAX_DUO_CODES, CountryCode, Purpose, QueryFacts
from gateway.query.columns import timestamp_spelling
from gateway.query.errors import FieldProblem, QuerySpecError
from pseudonymize.disclosure.rules import QUANTILE_MAX_PROB, QUANTILE_MIN_PROB, QUANTILE_PROB_STEP

KINDS = ("count", "crosstab", "summary", "histogram", "quantiles", "kaplan_meier")
OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "between", "is_null")
MAX_DEPTH = 5
MAX_LEAVES = 32
MAX_IN_VALUES = 100
MAX_GROUP_BY = 4
MIN_PROB, MAX_PROB, PROB_STEP = QUANTILE_MIN_PROB, QUANTILE_MAX_PROB, QUANTILE_PROB_STEP
MAX_PROBS = 5
# RFC 8785 numbers are IEEE doubles: it takes integers up to 2**53 - 1 in magnitude (ECMAScript's safe
# integers), and larger ones would not hash the same everywhere.
SAFE_INT = 2**53 - 1
_MAX_TEXT = 256

Kind = Literal["count", "crosstab", "summary", "histogram", "quantiles", "kaplan_meier"]
Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "between", "is_null"]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="a dataset column")]
DatasetId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="a catalog dataset id")]


def _recordable_agreement(value: str) -> str:
    problem = identifier_problem(value)
    if problem is not None:
        raise ValueError(f"an agreement id is recorded in the audit log as a label, and this one {problem}")
    return value


# Agreement ids are labels (DSA-2026-014): the audit log records them, and only such text.
AgreementId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        description="the data-sharing agreement id: a label, not a number of six digits or more, nor an "
        "opaque string of 32 characters or more",
    ),
    AfterValidator(_recordable_agreement),
]
SafeInt = Annotated[int, Field(strict=True, ge=-SAFE_INT, le=SAFE_INT)]
"""An integer canonical JSON (RFC 8785) takes: at most 2**53 - 1 in magnitude."""
Scalar = (
    StrictBool
    | SafeInt
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | Annotated[str, Field(max_length=_MAX_TEXT)]
)
# Strict: a number, as the schema says (lax validation would take "1.5" and true).
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Prob = Annotated[float, Strict(), Field(ge=MIN_PROB, le=MAX_PROB, allow_inf_nan=False)]


MAX_MEMBERS: Final = 32
"""The most members an object of a spec may have: more than any of its objects has fields."""


def few_members(value: Any) -> Any:
    """Refuse an object of more than MAX_MEMBERS members at once: each unknown member would be validated
    and reported in turn (300,000 took 4-5 s of a worker, whatever the error list shows)."""
    if isinstance(value, dict) and len(value) > MAX_MEMBERS:
        raise ValueError(f"the object has {len(value)} members; at most {MAX_MEMBERS} are read")
    return value


def bounded_purpose(value: Any) -> Any:
    """A purpose's object and its `duo` list refused at once when far too large: a list's items are validated
    before its length is checked, and each bad one reported (a million codes took 7-12 s of a worker)."""
    few_members(value)
    duo = value.get("duo") if isinstance(value, dict) else None
    if isinstance(duo, list) and len(duo) > 16 * MAX_DUO_CODES:  # a few more are each named by validation
        raise ValueError(f"purpose.duo lists {len(duo)} codes; at most {MAX_DUO_CODES} are read")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_members(cls, value: Any) -> Any:
        return few_members(value)


SCALAR_OPS: Final = ("=", "!=", "<", "<=", ">", ">=")
"""The ops that compare with one string, number or boolean."""


def _when_op(ops: tuple[str, ...], value: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """A JSON Schema rule: a condition whose op is one of `ops` has a `value` of the schema `value`."""
    then: dict[str, Any] = {"properties": {"value": value}}
    if required:
        then["required"] = ["value"]
    return {"if": {"properties": {"op": {"enum": list(ops)}}, "required": ["op"]}, "then": then}


def _condition_schema(schema: dict[str, Any]) -> None:
    """The value each op takes (`Condition._shape_for_op`), stated in the schema by `if`/`then` rules on
    the op; the schema accepts what the validation accepts."""
    for choice in schema["properties"]["value"]["anyOf"]:
        if choice.get("type") == "array":
            choice.update(minItems=1, maxItems=MAX_IN_VALUES)
    schema["allOf"] = [
        _when_op(("in",), {"type": "array", "minItems": 1, "maxItems": MAX_IN_VALUES}, required=True),
        _when_op(("between",), {"type": "array", "minItems": 2, "maxItems": 2}, required=True),
        _when_op(("is_null",), {"type": ["boolean", "null"]}, required=False),
        _when_op(SCALAR_OPS, {"type": ["boolean", "number", "string"]}, required=True),
    ]


class Condition(_Spec):
    """A leaf: `column op value`. `in` takes 1..100 values, `between` [low, high] (inclusive), `is_null`
    true (missing) or false (present); the others one scalar. A condition on a missing value is false."""

    model_config = ConfigDict(json_schema_extra=_condition_schema)

    column: ColumnName
    op: Op
    value: Scalar | list[Scalar] | None = Field(default=None, validate_default=True)

    @field_validator("value", mode="before")
    @classmethod
    def _json_scalars(cls, value: Any) -> Any:
        # One clear message instead of one per member of the value's union type.
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"value[{i}]" if isinstance(value, list) else "value"
            if isinstance(item, bool) or (item is None and not isinstance(value, list)):
                continue
            if isinstance(item, int):
                if abs(item) > SAFE_INT:
                    raise ValueError(f"{where} is an integer beyond 2**53 - 1")
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise ValueError(f"{where} is not a finite number")
            elif isinstance(item, str):
                if len(item) > _MAX_TEXT:
                    raise ValueError(f"{where} is longer than {_MAX_TEXT} characters")
            else:
                raise ValueError(f"{where} must be a string, number or boolean")
        return value

    @field_validator("value")
    @classmethod
    def _shape_for_op(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op is None:  # the op itself is wrong; that error is already reported
            return value
        if op == "is_null":
            if value is None or value is True:
                return None  # `{"op": "is_null"}` and `"value": true` are one question
            if value is False:
                return False
            raise ValueError("is_null takes no value, or true (missing) or false (present)")
        if op == "in":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:
                raise ValueError(f"'in' needs a list of 1 to {MAX_IN_VALUES} values")
            return value
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError("'between' needs a list of two values [low, high]")
            return value
        if value is None or isinstance(value, list):
            raise ValueError(f"{op!r} needs one string, number or boolean")
        return value


class And(_Spec):
    """Every child holds."""

    and_: list[Filter] = Field(alias="and", min_length=1, max_length=MAX_LEAVES)


class Or(_Spec):
    """At least one child holds."""

    or_: list[Filter] = Field(alias="or", min_length=1, max_length=MAX_LEAVES)


class Not(_Spec):
    """The child does not hold (a row with a missing value in it is selected)."""

    not_: Filter = Field(alias="not")


def _filter_tag(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("and", "or", "not"):
            if key in value:
                return key
        return "condition"
    tags: dict[type[BaseModel], str] = {And: "and", Or: "or", Not: "not"}
    return tags.get(type(value), "condition")


Filter = Annotated[
    Annotated[Condition, Tag("condition")]
    | Annotated[And, Tag("and")]
    | Annotated[Or, Tag("or")]
    | Annotated[Not, Tag("not")],
    Discriminator(_filter_tag),
]


def iter_conditions(node: Filter, path: str = "filters") -> Iterator[tuple[str, Condition]]:
    """Every leaf of a filter tree with its path in the spec ("filters.and[1]"), depth first."""
    if isinstance(node, Condition):
        yield path, node
    elif isinstance(node, And):
        for i, child in enumerate(node.and_):
            yield from iter_conditions(child, f"{path}.and[{i}]")
    elif isinstance(node, Or):
        for i, child in enumerate(node.or_):
            yield from iter_conditions(child, f"{path}.or[{i}]")
    else:
        yield from iter_conditions(node.not_, f"{path}.not")


def _children(node: Any) -> list[Any] | None:
    """A filter node's children as sent (parsed JSON, or models built in Python), told apart as
    `_filter_tag` tells them; `None` for a node that has none: a condition, or anything the validation
    will refuse (an empty `and`, a value that is no object)."""
    if isinstance(node, dict):
        if "and" in node:
            children = node["and"]
        elif "or" in node:
            children = node["or"]
        elif "not" in node:
            return [node["not"]]
        else:
            return None
        return children if isinstance(children, list) and children else None
    if isinstance(node, And):
        return node.and_
    if isinstance(node, Or):
        return node.or_
    if isinstance(node, Not):
        return [node.not_]
    return None


def _beyond_limits(value: Any) -> str | None:
    """Why a filter tree is beyond its limits, or `None`; walked before any of it is validated, since
    validating a body of 100,000 conditions and reporting each one's faults would hold a worker for
    seconds. The walk stops at the first node past `MAX_DEPTH` or the first condition past `MAX_LEAVES`
    (a node listing more children is refused at once), so it visits a few hundred nodes at most. A
    childless node that is no condition counts as one: it is refused either way."""
    too_many = f"filters have more than {MAX_LEAVES} conditions; at most {MAX_LEAVES} are allowed"
    leaves = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > MAX_DEPTH:
            return f"filters nest deeper than {MAX_DEPTH} levels"
        children = _children(node)
        if children is None:
            leaves += 1
            if leaves > MAX_LEAVES:
                return too_many
        elif len(children) > MAX_LEAVES:
            return too_many
        else:
            stack.extend((child, level + 1) for child in children)
    return None


class ColumnParams(_Spec):
    """Parameters of `summary`: the numeric column whose n, sum and sum of squares are computed."""

    column: ColumnName


class HistogramParams(_Spec):
    """Parameters of `histogram`: a numeric column and 2..101 strictly increasing bin edges."""

    column: ColumnName
    edges: list[Number] = Field(min_length=2, max_length=101)

    @field_validator("edges")
    @classmethod
    def _increasing(cls, edges: list[float]) -> list[float]:
        for i in range(1, len(edges)):
            if not edges[i] > edges[i - 1]:
                raise ValueError(f"edges must increase strictly: edges[{i}] is not above edges[{i - 1}]")
        return edges


class QuantilesParams(_Spec):
    """Parameters of `quantiles`: a numeric column and 1 to 5 distinct probabilities, multiples of 0.05 in
    [0.05, 0.95] (closer to 0 or 1 a quantile is one patient's value)."""

    column: ColumnName
    probs: list[Prob] = Field(min_length=1, max_length=MAX_PROBS)

    @field_validator("probs")
    @classmethod
    def _distinct(cls, probs: list[float]) -> list[float]:
        if len(set(probs)) != len(probs):
            raise ValueError("probs must be distinct")
        # A coarse grid (pseudonymize.disclosure.rules says why).
        if any(abs(p / PROB_STEP - round(p / PROB_STEP)) > 1e-9 for p in probs):
            raise ValueError(f"probs must be multiples of {PROB_STEP}")
        # Each answer column is named after its point of the grid (`q0.15`), which a value within the
        # tolerance above is taken for: two values on one point would ask one quantile twice, under one name.
        first: dict[int, int] = {}
        for i, p in enumerate(probs):
            j = first.setdefault(round(p / PROB_STEP), i)
            if j != i:
                point = round(round(p / PROB_STEP) * PROB_STEP, 10)
                raise ValueError(f"probs must be distinct: probs[{j}] and probs[{i}] are both {point:g}")
        return probs


class KaplanMeierParams(_Spec):
    """Parameters of `kaplan_meier`: a numeric time column, an event column (boolean, or numeric with 0 for
    censored) and 1..100 strictly increasing bin edges above 0: bins (−∞, e₁], (e₁, e₂], …, (eₖ₋₁, eₖ]."""

    time: ColumnName
    event: ColumnName
    # Above 0 as the schema states it: the first edge, and so every edge, as they increase.
    edges: list[Number] = Field(
        min_length=1, max_length=100, json_schema_extra={"items": {"type": "number", "exclusiveMinimum": 0}}
    )

    @field_validator("edges")
    @classmethod
    def _increasing(cls, edges: list[float]) -> list[float]:
        if not edges[0] > 0:
            raise ValueError("edges must start above 0")
        for i in range(1, len(edges)):
            if not edges[i] > edges[i - 1]:
                raise ValueError(f"edges must increase strictly: edges[{i}] is not above edges[{i - 1}]")
        return edges


def _group_by_schema(schema: dict[str, Any], model: type[Any]) -> None:
    """A kind's bounds on `group_by` (`min_group_by`, `max_group_by`, each column once), stated in its
    schema as its validation holds them; a kind that needs a group_by column requires the field."""
    low, high = model.min_group_by, model.max_group_by
    group_by = schema["properties"]["group_by"]
    group_by.update(maxItems=high, uniqueItems=True)
    group_by["description"] = (
        f"the columns to group by, each named once: {low} to {high}"
        if high
        else "none: this kind has no groups"
    )
    if low:
        group_by["minItems"] = low
        group_by.pop("default", None)
        schema["required"] = [*schema.get("required", []), "group_by"]


class BaseQuery(_Spec):
    """What every kind shares. `destination` is the ISO 3166-1 alpha-2 country the answer goes to; the
    pipeline takes the requester's country when it is absent."""

    model_config = ConfigDict(json_schema_extra=_group_by_schema)

    dataset: DatasetId
    agreement: AgreementId
    purpose: Purpose
    destination: CountryCode | None = None
    filters: Filter | None = Field(
        default=None,
        description="a condition, or an `and`, `or` or `not` node of conditions and nodes: at most "
        f"{MAX_DEPTH} levels deep and {MAX_LEAVES} conditions in all, each `and` and `or` of 1 to "
        f"{MAX_LEAVES} children, each object of at most {MAX_MEMBERS} members",
    )
    group_by: tuple[ColumnName, ...] = Field(default=(), max_length=MAX_GROUP_BY, validate_default=True)

    kind: Kind
    min_group_by: ClassVar[int] = 0
    max_group_by: ClassVar[int] = MAX_GROUP_BY

    @field_validator("filters", mode="before")
    @classmethod
    def _within_limits(cls, value: Any) -> Any:
        problem = _beyond_limits(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("purpose", mode="before")
    @classmethod
    def _few_purpose_members(cls, value: Any) -> Any:
        return bounded_purpose(value)

    @field_validator("group_by", mode="before")
    @classmethod
    def _few_group_by(cls, value: Any) -> Any:
        # A tuple's items are validated before its length is checked: a list of 100,000 bad names would be
        # validated whole, and each reported.
        if isinstance(value, list | tuple) and len(value) > cls.max_group_by:
            raise ValueError(f"needs {cls.min_group_by} to {cls.max_group_by} group_by columns")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("group_by names a column twice")
        if not cls.min_group_by <= len(value) <= cls.max_group_by:
            raise ValueError(f"needs {cls.min_group_by} to {cls.max_group_by} group_by columns")
        return value

    @property
    def params_column(self) -> str | None:
        """The column a kind's parameters analyse, if any."""
        params = getattr(self, "params", None)
        return params.column if params is not None else None

    def conditions(self) -> list[tuple[str, Condition]]:
        """Every filter leaf with its path in the spec."""
        return list(iter_conditions(self.filters)) if self.filters is not None else []

    def columns_touched(self) -> tuple[str, ...]:
        """Every column the query reads (filters, group_by, the analysed column), sorted, for the policy."""
        names = {c.column for _, c in self.conditions()} | set(self.group_by)
        if self.params_column is not None:
            names.add(self.params_column)
        return tuple(sorted(names))

    def query_facts(self) -> QueryFacts:
        """The `query` part of the policy input."""
        dumped = self.model_dump(mode="json", by_alias=True, include={"filters"})
        return QueryFacts(
            kind=self.kind,
            columns=self.columns_touched(),
            filters=dumped["filters"],
            group_by=self.group_by,
        )

    def canonical_json(self) -> bytes:
        """RFC 8785 bytes of the spec: key order, whitespace, defaults and `in`-list order do not matter."""
        dumped = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return bytes(rfc8785.dumps(_normalize(dumped)))

    def query_hash(self) -> str:
        """SHA-256 hex of `canonical_json()`: equal for the same question however it was written."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def repeat_key(self, consent: bytes) -> str:
        """SHA-256 hex of what decides this query's answer: the spec without its purpose and destination,
        and `consent`, the canonical bytes of the consent filter its purpose was given (the rows the query
        may see). Askings of one key get the same answer however they are labelled (another ethics
        approval id, destination or spelling of the purpose), so they count as the same query against
        an agreement's limit of identical queries."""
        dumped = self.model_dump(
            mode="json", by_alias=True, exclude_defaults=True, exclude={"purpose", "destination"}
        )
        digest = hashlib.sha256(rfc8785.dumps(_normalize(dumped)))
        digest.update(b"\n" + consent)
        return digest.hexdigest()


def _leaf(node: Any, ops: tuple[str, ...]) -> bool:
    return isinstance(node, dict) and set(node) == {"column", "op", "value"} and node["op"] in ops


def _merge_or(children: list[Any]) -> list[Any]:
    """`=` and `in` conditions of one column, joined by `or`, as one `in` (already normalized children)."""
    values: dict[str, dict[bytes, Any]] = {}
    rest = []
    for child in children:
        if _leaf(child, ("=", "in")):
            listed = child["value"] if child["op"] == "in" else [child["value"]]
            values.setdefault(child["column"], {}).update((bytes(rfc8785.dumps(v)), v) for v in listed)
        else:
            rest.append(child)
    merged = [_normalize({"column": c, "op": "in", "value": list(vs.values())}) for c, vs in values.items()]
    return merged + rest


def _merge_and(children: list[Any]) -> list[Any]:
    """`>= a` and `<= b` of one column, joined by `and`, as `between [a, b]` (each bound given once)."""
    bounds: dict[str, dict[str, list[Any]]] = {}
    for child in children:
        if _leaf(child, (">=", "<=")):
            bounds.setdefault(child["column"], {}).setdefault(child["op"], []).append(child)
    out = []
    for child in children:
        if _leaf(child, (">=", "<=")):
            ops = bounds[child["column"]]
            if len(ops.get(">=", [])) == 1 and len(ops.get("<=", [])) == 1:
                if child["op"] == ">=":
                    low, high = ops[">="][0]["value"], ops["<="][0]["value"]
                    out.append(_normalize({"column": child["column"], "op": "between", "value": [low, high]}))
                continue
        out.append(child)
    return out


def _one_spelling(value: Any) -> Any:
    """A filter leaf's value (or list of values) with each timestamp in the spelling the compiler reads the
    same (`columns.timestamp_spelling`): an instant in UTC, so `+01:00`, `Z` and `+00:00` spellings of one
    instant count as one query, as a zoned column compares them. Dates need nothing: the compiler takes
    only 'YYYY-MM-DD', one spelling per day.

    The spec does not know its columns' types, so a text value written exactly as a timestamp is reduced
    too: two such texts naming one instant then count as one query. That errs on the side the limit is
    for (more askings counted as identical, never fewer). A value already in this spelling is left as
    written, so the query hash and the count of a query that uses it are what they were."""
    if isinstance(value, list):
        return [timestamp_spelling(v) if isinstance(v, str) else v for v in value]
    return timestamp_spelling(value) if isinstance(value, str) else value


def _normalize(value: Any) -> Any:
    """One spelling of what a spec asks, for the identical-query count: a filter's timestamp values in one
    spelling (`_one_spelling`), `in` lists sorted and unique, `in` of one value and `between` of one value
    as `=`, `and`/`or` flattened, sorted and unique (one child: the child), and `not` of `not` undone. A
    respelled query is the same query against the agreement's limit."""
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _normalize(v) for k, v in value.items()}
    if "column" in out and "op" in out and "value" in out:
        out["value"] = _one_spelling(out["value"])
    if out.get("op") == "in" and isinstance(out.get("value"), list):
        unique = {bytes(rfc8785.dumps(v)): v for v in out["value"]}
        out["value"] = [unique[k] for k in sorted(unique)]
        if len(out["value"]) == 1:
            out = {**out, "op": "=", "value": out["value"][0]}
    if out.get("op") == "between" and isinstance(out.get("value"), list) and len(out["value"]) == 2:
        low, high = out["value"]
        if rfc8785.dumps(low) == rfc8785.dumps(high):
            out = {**out, "op": "=", "value": low}
    for junction in ("and", "or"):
        if set(out) == {junction} and isinstance(out[junction], list):
            flat: list[Any] = []
            for child in out[junction]:
                flat += child[junction] if isinstance(child, dict) and set(child) == {junction} else [child]
            flat = _merge_or(flat) if junction == "or" else _merge_and(flat)
            children = {bytes(rfc8785.dumps(c)): c for c in flat}
            kept = [children[k] for k in sorted(children)]
            return kept[0] if len(kept) == 1 else {junction: kept}
    if set(out) == {"not"} and isinstance(out["not"], dict) and set(out["not"]) == {"not"}:
        return out["not"]["not"]
    return out


class CountQuery(BaseQuery):
    """The number of rows, optionally per group (0..4 group_by columns)."""

    kind: Literal["count"]


class CrosstabQuery(BaseQuery):
    """Counts per combination of 1..3 group_by columns (margins are the disclosure step's job)."""

    kind: Literal["crosstab"]
    min_group_by: ClassVar[int] = 1
    max_group_by: ClassVar[int] = 3


class SummaryQuery(BaseQuery):
    """n, sum and sum of squares of a numeric column's present values, optionally per group."""

    kind: Literal["summary"]
    params: ColumnParams


class HistogramQuery(BaseQuery):
    """Counts of a numeric column's present values per bin, optionally per group."""

    kind: Literal["histogram"]
    params: HistogramParams


class QuantilesQuery(BaseQuery):
    """Continuous quantiles (percentile_cont) of a numeric column's present values, optionally per group."""

    kind: Literal["quantiles"]
    params: QuantilesParams


class KaplanMeierQuery(BaseQuery):
    """Events, censorings and rows at risk per time bin of the present (time, event) pairs; no groups
    (merging bins per group would leak through the differences)."""

    kind: Literal["kaplan_meier"]
    params: KaplanMeierParams
    max_group_by: ClassVar[int] = 0

    @property
    def params_column(self) -> str | None:
        """The time column."""
        return self.params.time

    def columns_touched(self) -> tuple[str, ...]:
        """Filters' columns, the time and the event column."""
        return tuple(sorted({*super().columns_touched(), self.params.event}))


QuerySpec = Annotated[
    CountQuery | CrosstabQuery | SummaryQuery | HistogramQuery | QuantilesQuery | KaplanMeierQuery,
    Field(discriminator="kind"),
]
QUERY_SPEC: TypeAdapter[QuerySpec] = TypeAdapter(QuerySpec)


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a spec path ("filters.and[1].value"), union tags removed."""
    items = list(loc)
    if items and items[0] in KINDS:  # the spec's own tag
        items = items[1:]
    parts: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        # A filter node's tag precedes its field of the same name; a leaf's tag is "condition".
        elif item == "condition" or (
            item in ("and", "or", "not") and i + 1 < len(items) and items[i + 1] == item
        ):
            continue
        else:
            parts.append(item)
    return ".".join(parts)


_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


def parse_query_spec(data: Any) -> QuerySpec:
    """Validate a JSON document (already parsed) as a spec; QuerySpecError names every bad field."""
    try:
        return QUERY_SPEC.validate_python(data)
    except ValidationError as exc:
        problems = [
            FieldProblem("kind" if e["type"] in _TAG_ERRORS else field_path(_named_loc(e)), _message(e))
            for e in exc.errors(include_url=False)
        ]
        first = problems[0]
        raise QuerySpecError(first.message, first.field, problems) from None


_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _named_loc(error: Any) -> tuple[int | str, ...]:
    """The error's location; an unknown key not even shaped as a field name is not repeated (it may be what
    a caller pasted: a name, a record number)."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden" and loc and not _FIELD_NAME.match(str(loc[-1])):
        return (*loc[:-1], "(unknown field)")
    return loc


def _message(error: Any) -> str:
    if error["type"] == "union_tag_not_found":
        return f"kind is required: one of {', '.join(KINDS)}"
    if error["type"] == "union_tag_invalid":
        return f"unknown kind: expected one of {', '.join(KINDS)}"  # never the tag sent: it may be anything
    message: str = error["msg"]
    return message.removeprefix("Value error, ")
