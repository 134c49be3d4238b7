"""Compile a checked query spec to SQLAlchemy Core selects over one dataset table, obligations applied.

`main` answers the question; `selected` counts the rows the filters and the consent filter keep and
`population` the rows the consent filter keeps (both for the query-set-size rule; for a statistic, only
rows with its analysed columns present); `sizes` gives both in one scan. Column names come only from the
catalog, values only as bound parameters.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.sql.visitors import ExternallyTraversible, replacement_traverse

from gateway.decision.models import ConsentFilter, Obligations
from gateway.lru import LruMap
from gateway.query.columns import DatasetColumn, edge_value, python_value
from gateway.query.consent import ConsentClasses, consent_predicate
from gateway.query.errors import ColumnNotAllowed, QueryError, QuerySpecError, UnknownColumn
from gateway.query.spec import (
    And,
    Condition,
    Filter,
    HistogramQuery,
    KaplanMeierQuery,
    Not,
    Or,
    QuantilesQuery,
    QuerySpec,
    SummaryQuery,
)
from pseudonymize.disclosure.grid import MAX_GRID_CELLS

AnySelect = sa.Select[*tuple[Any, ...]]
# The columns an answer has besides its groups, in any kind: the executor's, the released table's
# (gateway.release) and a federation's pooled table's (gateway.federation). Rows are keyed by column name,
# so a group column of one of these names would lose its values to the statistic; it is refused in every
# kind, as a federated quantiles query asks its sites for histograms of its groups. A quantile's own
# columns (`q0.25`, `q0.25_lower`) hold a dot, which no column name does.
RESERVED_NAMES = (
    "n", "sum", "sum_sq", "bin", "lower", "upper", "events",
    "count", "suppressed", "suppression_reason", "margin", "mean", "variance", "at_risk", "censored",
    "bin_width", "survival", "std_err", "ci_lower", "ci_upper",
)  # fmt: skip
_ORDERED_OPS = ("<", "<=", ">", ">=", "between")

MAX_GROUPS: Final = MAX_GRID_CELLS
"""The most rows a grouped `main` (or `counted_together`) may give: each is a cell of the grid disclosure
control lays out, which it refuses beyond MAX_GRID_CELLS cells. The store gives at most one row more, enough
to know the query is refused: a group-by on continuous columns has about as many groups as rows, and
fetching them all only to refuse them held a thread for seconds. PostgreSQL sends a statement's every row
to the client, so its grouped `main` has a LIMIT (`_selects`); DuckDB keeps the rows on its side until they
are fetched, and a DuckDB statement fetches no more (duckdb_dialect.run's `at_most`): a LIMIT cost a small
query there about 20 µs of DuckDB's time."""


@dataclass(frozen=True)
class CompiledQuery:
    """The selects of one query and what `execute` needs to shape the result.

    The selects are built when first asked (`build`): a DuckDB store that keeps the text of this shape
    (duckdb_dialect.run) runs `values` without them. Building a small query's select took 110-160 µs,
    reading and checking its values alone 20 µs. `selected` and `sizes` are built when first asked too:
    with the population known, a count or a cross-tabulation runs `main` alone."""

    kind: str
    build: Callable[[], tuple[AnySelect, sa.ColumnElement[bool] | None]]
    """`main` and `keep`, built from this query's own spec and values."""
    population: AnySelect
    group_by: tuple[str, ...]
    output: tuple[tuple[str, str], ...]
    """(name, pandas dtype) of each column of `main`, in order."""
    table: sa.FromClause
    consent: sa.ColumnElement[bool]
    """The consent predicate (withdrawals included): the rows the query may see."""
    bins: tuple[tuple[float | None, float | None], ...] = ()
    """Histogram only: (lower, upper) of each bin index; None is an open end."""
    shape: tuple[Any, ...] | None = None
    """Everything the SQL text of these selects depends on: every input of `compile_query` but the
    filters' values, of which only the types and the list lengths count. Two queries of one shape compile
    to the same text, with the same bound values except `values` (see duckdb_dialect.run)."""
    values: Mapping[str, Any] = field(default_factory=dict)
    """The filters' values, by the name of the parameter each is bound as (`filter_value_0`...)."""
    counted: sa.ColumnElement[bool] | None = None
    """The rows the query-set-size rule counts when they are fewer than `consent`'s (`selected`, `sizes`,
    and `population` likewise): a statistic's rows with its analysed columns present."""

    # Built on first use and kept in the instance's dict, as functools.cached_property would, but without
    # its lock: on Python 3.11 that lock is one per property for every instance, so the pool threads would
    # build their queries' selects one at a time.
    def _lazy(self, name: str, make: Callable[[], Any]) -> Any:
        value = self.__dict__.get(name)
        if value is None:
            value = self.__dict__[name] = make()
        return value

    @property
    def main(self) -> AnySelect:
        """The select that answers the question."""
        main: AnySelect = self._lazy("_built", self.build)[0]
        return main

    @property
    def keep(self) -> sa.ColumnElement[bool] | None:
        """The spec's filters, None without any."""
        keep: sa.ColumnElement[bool] | None = self._lazy("_built", self.build)[1]
        return keep

    @property
    def _counted(self) -> sa.ColumnElement[bool]:
        return self.consent if self.counted is None else self.counted

    @property
    def selected(self) -> AnySelect:
        """The count of rows the filters and the consent filter keep."""

        def make() -> AnySelect:
            where = self._counted if self.keep is None else sa.and_(self._counted, self.keep)
            return sa.select(sa.func.count().label("selected")).select_from(self.table).where(where)

        selected: AnySelect = self._lazy("_selected", make)
        return selected

    @property
    def sizes(self) -> AnySelect:
        """`selected` and the population's size in one scan."""

        def make() -> AnySelect:
            counted = sa.func.count().filter(self.keep) if self.keep is not None else sa.func.count()
            sizes = sa.select(counted.label("selected"), sa.func.count().label("population"))
            return sizes.select_from(self.table).where(self._counted)

        sizes: AnySelect = self._lazy("_sizes", make)
        return sizes


TOGETHER_KINDS: Final = frozenset({"count", "crosstab"})
"""The kinds whose queries of one shape can run as one statement (`counted_together`)."""


def counted_together(queries: Sequence[CompiledQuery]) -> AnySelect:
    """Counts or cross-tabulations of one shape, each with filters, as one select over the consent
    predicate's rows: the groups, then for the i-th query a count `n<i>` of the rows its filters keep,
    with its filter values bound as `<name>_q<i>` (`together_values`). The i-th query's rows are the
    groups whose `n<i>` is above zero, which is what its own `main` gives: a GROUP BY yields a group only
    for rows it kept, and a filter that is NULL for a row keeps it in neither. Without groups, both give
    one row, whatever the count.

    DuckDB binds, plans and optimizes one statement instead of one per query, which is most of a small
    query's time (docs/queries.md, "Performance")."""
    first = queries[0]
    if first.kind not in TOGETHER_KINDS or first.keep is None:
        raise ValueError("only counts and cross-tabulations with filters run together")
    if any(q.shape != first.shape or q.shape is None for q in queries):
        raise ValueError("queries run together must share one shape")
    table = first.table
    group_cols = [table.c[name].label(f"g{i}") for i, (name, _) in enumerate(first.output[:-1])]
    counts = [
        sa.func.count().filter(_bound_apart(first.keep, query.values, i)).label(f"n{i}")
        for i, query in enumerate(queries)
    ]
    return sa.select(*group_cols, *counts).select_from(table).where(first.consent).group_by(*group_cols)


def together_hint(spec: QuerySpec, dataset_table: str) -> tuple[Any, ...] | None:
    """Before compiling: equal for queries that may share a statement (`counted_together`), from what the
    spec alone decides (the version table, kind, groups and filter tree without its values); None for one
    that never does. Queries with one hint can still differ in what their decisions add (columns, consent
    rule); those then run alone."""
    if spec.kind not in TOGETHER_KINDS or spec.filters is None:
        return None
    return (dataset_table, spec.kind, tuple(spec.group_by), _filter_shape(spec.filters))


def together_values(queries: Sequence[CompiledQuery]) -> dict[str, Any]:
    """The filter values of `counted_together(queries)`, by parameter name."""
    return {
        _own_name(name, i): value for i, query in enumerate(queries) for name, value in query.values.items()
    }


def _own_name(name: str, i: int) -> str:
    """The i-th query's name for its filter parameter `name` in a statement run together."""
    return f"{name}_q{i}"


def _bound_apart(keep: sa.ColumnElement[bool], values: Mapping[str, Any], i: int) -> sa.ColumnElement[bool]:
    """`keep` (built from one query of the shape) with each filter parameter renamed for the i-th query
    and bound to that query's own value."""

    def rebind(element: ExternallyTraversible, **_: Any) -> ExternallyTraversible | None:
        if isinstance(element, sa.BindParameter) and element.key in values:
            return sa.bindparam(
                _own_name(element.key, i),
                values[element.key],
                type_=element.type,
                expanding=element.expanding,
            )
        return None

    return replacement_traverse(keep, {}, rebind)


def quantile_name(prob: float) -> str:
    """The result column of one quantile: 0.25 -> 'q0.25'."""
    return f"q{prob:g}"


def compile_query(
    spec: QuerySpec,
    dataset_table: str,
    columns: Sequence[tuple[str, str]],
    obligations: Obligations,
    dialect_name: str,
    *,
    patient_column: str | None = None,
    withdrawn: Sequence[str] = (),
    consent_classes: ConsentClasses | None = None,
) -> CompiledQuery:
    """Check `spec` against the dataset's catalog columns (name, Arrow type name) and the obligations,
    and build its selects for `dialect_name` ('duckdb' or 'postgresql').

    `withdrawn` are pseudonyms of patients who withdrew consent after ingest (in `patient_column`, the
    catalog entry's `patient_column`); their rows are excluded like the consent filter excludes rows.
    `consent_classes`, when known, are all the distinct values of the consent column in the table with
    their counts on the rows not marked withdrawn (see `consent_predicate`). Either way, a class held by
    fewer than the obligations' min_cell_count rows once the rows of `withdrawn` are left out is not
    admitted: classes read by `ConsentValueCache` are counted again without them, once per set of
    withdrawals (one read of the store, by the first query after a withdrawal); other classes give way to
    the per-row predicate when there are withdrawals."""
    version_columns = tuple((name, arrow) for name, arrow in columns)
    catalog, table = _dataset_table(dataset_table, version_columns)
    allowed = set(obligations.allowed_columns)
    consented_by = functools.partial(
        _consented, dataset_table, version_columns, obligations.consent_filter, obligations.min_cell_count,
        dialect_name,
    )  # fmt: skip
    try:
        consent, population, consented = consented_by(consent_classes, patient_column, tuple(withdrawn))
    except sa.exc.SQLAlchemyError:
        # The classes could not be counted again without new withdrawals: this query takes the per-row
        # predicate, and the next one tries the count again (an exception is not cached).
        consent, population, consented = consented_by(None, patient_column, tuple(withdrawn))
    shape = (
        spec.kind,
        tuple(spec.group_by),
        _frozen(spec.params.model_dump()) if hasattr(spec, "params") else None,
        _filter_shape(spec.filters) if spec.filters is not None else None,
        obligations.allowed_columns,
        consented,
    )
    # The filters' values, read and checked (a date's spelling, a `between`'s order) on every query.
    reader = _Resolver(catalog, allowed, table, dialect_name)
    if spec.filters is not None:
        _filter_values(spec.filters, "filters", reader)

    build: Callable[[], tuple[AnySelect, sa.ColumnElement[bool] | None]]
    checked = _CHECKED.get(shape)
    if checked is not None:
        output, bins = checked
        build = functools.partial(_build, spec, catalog, allowed, table, dialect_name, consent)
    else:
        # A shape not yet built is built now, so every check of its columns and parameters runs here.
        resolve = _Resolver(catalog, allowed, table, dialect_name)
        main, keep, output, bins = _selects(spec, resolve, consent)
        if _spelled(resolve.values) != _spelled(reader.values):
            raise RuntimeError("the filters' values were read two ways")
        _CHECKED.put(shape, (output, bins))
        build = functools.partial(_given, main, keep)
    counted = None
    analysed = _analysed_columns(spec)
    if analysed:
        # A statistic rests on the rows where its columns are present: the query-set-size rule counts
        # those, or a filter leaving out one patient would pass on the strength of rows missing the value.
        counted, population = _present(table, consent, analysed)
    return CompiledQuery(
        spec.kind, build, population, spec.group_by, output, table, consent, bins,
        shape=shape, values=reader.values, counted=counted,
    )  # fmt: skip


def _analysed_columns(spec: QuerySpec) -> tuple[str, ...]:
    """The columns whose missing values leave a row out of the statistic `spec` asks for."""
    if isinstance(spec, KaplanMeierQuery):
        return (spec.params.time, spec.params.event)
    if isinstance(spec, SummaryQuery | HistogramQuery | QuantilesQuery):
        return (spec.params.column,)
    return ()


@functools.lru_cache(maxsize=256)
def _present(
    table: sa.TableClause, consent: sa.ColumnElement[bool], names: tuple[str, ...]
) -> tuple[sa.ColumnElement[bool], AnySelect]:
    """The consented rows with `names` present, and the select counting them. `table` and `consent` come
    from `_consented`'s cache, so a query of a known version, rule and columns gets the same objects, and
    the population cache finds its key without building it anew."""
    present = sa.and_(consent, *(table.c[name].is_not(None) for name in names))
    return present, sa.select(sa.func.count().label("population")).select_from(table).where(present)


# Shapes whose selects were built without error, with the output columns and bins they gave. Every check
# of a query but those of its filters' values depends on its shape alone, so a query of a shape found here
# passes them, and its selects are built only if a run needs them (CompiledQuery.build).
_CHECKED: Final = LruMap[tuple[Any, ...], tuple[tuple[tuple[str, str], ...], tuple[Any, ...]]](1024)


def _build(
    spec: QuerySpec,
    catalog: dict[str, DatasetColumn],
    allowed: set[str],
    table: sa.TableClause,
    dialect_name: str,
    consent: sa.ColumnElement[bool],
) -> tuple[AnySelect, sa.ColumnElement[bool] | None]:
    """`main` and `keep` of a query whose shape was built before."""
    main, keep, _, _ = _selects(spec, _Resolver(catalog, allowed, table, dialect_name), consent)
    return main, keep


def _given(
    main: AnySelect, keep: sa.ColumnElement[bool] | None
) -> tuple[AnySelect, sa.ColumnElement[bool] | None]:
    return main, keep


def _spelled(values: Mapping[str, Any]) -> list[tuple[str, type, str]]:
    """Values compared by name, type and repr (NaN is not equal to itself, 1 equals 1.0 and True)."""
    return [(name, type(value), repr(value)) for name, value in values.items()]


def _selects(
    spec: QuerySpec, resolve: _Resolver, consent: sa.ColumnElement[bool]
) -> tuple[AnySelect, sa.ColumnElement[bool] | None, tuple[tuple[str, str], ...], tuple[Any, ...]]:
    """`main`, `keep`, the output columns and the bins of `spec`, every column and parameter checked.
    Beyond DuckDB, a grouped `main` gives at most MAX_GROUPS + 1 rows (which groups the store picks is of
    no matter: a query with more is refused whichever they are). Without groups, `main` is one row, or one
    per bin (at most 102)."""
    main, keep, output, bins = _unlimited_selects(spec, resolve, consent)
    if spec.group_by and resolve.dialect != "duckdb":
        # A literal: the limit is one constant, not a value to bind on every run.
        main = main.limit(sa.literal_column(str(MAX_GROUPS + 1)))
    return main, keep, output, bins


def _unlimited_selects(
    spec: QuerySpec, resolve: _Resolver, consent: sa.ColumnElement[bool]
) -> tuple[AnySelect, sa.ColumnElement[bool] | None, tuple[tuple[str, str], ...], tuple[Any, ...]]:
    """`_selects` without the limit on the groups."""
    table = resolve.table
    keep = _filter(spec.filters, "filters", resolve, negated=False) if spec.filters is not None else None
    where = sa.and_(consent, keep) if keep is not None else consent

    groups = [resolve.grouping(name, f"group_by[{i}]") for i, name in enumerate(spec.group_by)]
    group_cols = [table.c[c.name].label(f"g{i}") for i, c in enumerate(groups)]
    group_out = tuple((c.name, c.pandas_dtype()) for c in groups)

    n_rows = sa.func.count().label("n")

    if isinstance(spec, KaplanMeierQuery):
        main, output = _kaplan_meier(spec, table, resolve, where)
        return main, keep, output, ()

    if not isinstance(spec, SummaryQuery | HistogramQuery | QuantilesQuery):
        main = sa.select(*group_cols, n_rows).select_from(table).where(where).group_by(*group_cols)
        return main, keep, (*group_out, ("n", "int64")), ()

    target = resolve.analysed(spec.params.column)
    value: sa.ColumnElement[float] = sa.cast(
        target.compared(table.c[target.name], resolve.dialect), sa.Double()
    )
    present = sa.and_(where, table.c[target.name].is_not(None))

    if isinstance(spec, SummaryQuery):
        # The variance is the store's own var_samp (DuckDB and PostgreSQL update centred sums row by row):
        # sum_sq - sum**2/n cancels catastrophically when the mean is large beside the spread (epoch
        # seconds, counts per litre). NULL for a group of one row, as the released variance is.
        main = sa.select(
            *group_cols,
            n_rows,
            sa.func.sum(value).label("sum"),
            sa.func.sum(value * value).label("sum_sq"),
            sa.func.var_samp(value, type_=sa.Double()).label("variance"),
        )
        main = main.select_from(table).where(present).group_by(*group_cols)
        output = (
            *group_out, ("n", "int64"), ("sum", "float64"), ("sum_sq", "float64"), ("variance", "float64"),
        )  # fmt: skip
        return main, keep, output, ()

    if isinstance(spec, QuantilesQuery):
        quantiles = [
            sa.func.percentile_cont(sa.literal(p, sa.Double()), type_=sa.Double())
            .within_group(value)
            .label(f"q{i}")
            for i, p in enumerate(spec.params.probs)
        ]
        main = sa.select(*group_cols, n_rows, *quantiles)
        main = main.select_from(table).where(present).group_by(*group_cols)
        output = (*group_out, ("n", "int64"), *((quantile_name(p), "float64") for p in spec.params.probs))
        return main, keep, output, ()

    edges = spec.params.edges
    # Bin 0 is (-inf, e0], bin i is (e(i-1), e(i)], the last bin (e(k-1), +inf): every present value
    # falls in exactly one bin, so the bins add up to the summary's n and hide no tail. Closed on the
    # right as Kaplan-Meier's bins are (`_kaplan_meier`), so one edge splits the same rows in both kinds:
    # closed on different sides, their difference at an edge would count the rows on it.
    binned = _binned(value, target, edges)
    rows = sa.select(*group_cols, binned).select_from(table).where(present).subquery("binned")
    outer_groups = [rows.c[f"g{i}"] for i in range(len(groups))]
    main = sa.select(*outer_groups, rows.c.bin, n_rows).group_by(*outer_groups, rows.c.bin)
    bounds: list[float | None] = [None, *edges, None]
    bins = tuple((bounds[i], bounds[i + 1]) for i in range(len(edges) + 1))
    output = (*group_out, ("bin", "int64"), ("n", "int64"))
    return main, keep, output, bins


def _kaplan_meier(
    spec: KaplanMeierQuery, table: sa.TableClause, resolve: _Resolver, where: sa.ColumnElement[bool]
) -> tuple[AnySelect, tuple[tuple[str, str], ...]]:
    """Rows and events per time bin: bin j < k holds times in (e(j-1), e(j)], bin 0 from −∞, bin k beyond
    the last edge; closed on the right like a histogram's bins, so an event or censoring at an edge is in
    the bin a histogram of the times puts it in. Rows with a missing time or event are left out."""
    time = resolve.analysed(spec.params.time, "params.time")
    event = resolve.column(spec.params.event, "params.event")
    if event.type_class not in ("bool", "int", "float"):
        raise QuerySpecError(
            f"column {event.name!r} is {event.arrow_type}, not boolean or numeric", "params.event"
        )
    value: sa.ColumnElement[float] = sa.cast(time.compared(table.c[time.name], resolve.dialect), sa.Double())
    happened: sa.ColumnElement[bool] = (
        # A literal, not a bare 0: SQLAlchemy would name that parameter after the column, and a column
        # named like the filters' parameters (filter_value) would clash with them.
        table.c[event.name].is_(sa.true())
        if event.type_class == "bool"
        else table.c[event.name] != sa.literal(0, table.c[event.name].type)
    )
    binned = _binned(value, time, spec.params.edges)
    flag = sa.case((happened, 1), else_=0).label("happened")
    present = sa.and_(where, table.c[time.name].is_not(None), table.c[event.name].is_not(None))
    rows = sa.select(binned, flag).select_from(table).where(present).subquery("binned")
    main = sa.select(
        rows.c.bin, sa.func.count().label("n"), sa.func.sum(rows.c.happened).label("events")
    ).group_by(rows.c.bin)
    return main, (("bin", "int64"), ("n", "int64"), ("events", "int64"))


def _binned(value: sa.ColumnElement[float], column: DatasetColumn, edges: Sequence[float]) -> sa.Label[int]:
    """The bin index of `value` (`column` read as a double): bin i up to and including edge i, the last
    beyond every edge. Each edge compares as a filter value on `column` does (`edge_value`), so a bin
    (−∞, e] counts the rows the filter `column <= e` selects; edges that round to one value leave the
    bins between them empty."""
    return sa.case(
        *((value <= sa.literal(edge_value(column, e), sa.Double()), i) for i, e in enumerate(edges)),
        else_=len(edges),
    ).label("bin")


@functools.lru_cache(maxsize=256)
def _consented(
    dataset_table: str,
    columns: tuple[tuple[str, str], ...],
    rule: ConsentFilter,
    min_cell_count: int,
    dialect_name: str,
    consent_classes: ConsentClasses | None,
    patient_column: str | None,
    withdrawn: tuple[str, ...],
) -> tuple[sa.ColumnElement[bool], AnySelect, bytes]:
    """The consent predicate (withdrawals included, consent classes below `min_cell_count` left out) and
    the population select of a version table, built once per rule, min_cell_count, consent classes and
    withdrawals: no query changes them, and the reused select keeps its SQLAlchemy cache key, which the
    population cache looks up on every query. Callers must not mutate.

    With withdrawals, the classes are first counted without the withdrawn patients' rows
    (`ConsentClasses.without_withdrawals`, which reads the store once per set of withdrawals and raises
    SQLAlchemyError when it cannot): a class that withdrawals took below `min_cell_count` is left out.

    Third, a SHA-256 digest of all the arguments, which stands for them in `CompiledQuery.shape`: a kept
    shape then holds 32 bytes instead of its own copy of every withdrawn pseudonym."""
    catalog, table = _dataset_table(dataset_table, columns)
    resolve = _Resolver(catalog, set(), table, dialect_name)
    consent_column = resolve.consent(
        rule.consent_column, "string", "obligations.consent_filter.consent_column"
    )
    withdrawn_column = resolve.consent(
        rule.withdrawn_column, "bool", "obligations.consent_filter.withdrawn_column"
    )
    patient = None
    if withdrawn:
        if patient_column is None:
            raise QueryError(
                "withdrawals cannot be applied: the dataset names no patient column", "patient_column"
            )
        patient = resolve.consent(patient_column, "string", "patient_column")
        if consent_classes is not None:
            consent_classes = consent_classes.without_withdrawals(patient_column, withdrawn)
    consent = consent_predicate(
        rule,
        consent_column,
        withdrawn_column,
        dialect_name,
        min_cell_count=min_cell_count,
        classes=consent_classes,
        patient=patient,
        withdrawals=withdrawn,
    )
    population = sa.select(sa.func.count().label("population")).select_from(table).where(consent)
    # Strings, None and tuples of them have an unambiguous repr; the rule is spelled as its JSON. The
    # classes are those the predicate lists, counted without the withdrawals: they decide its values.
    arguments = (dataset_table, columns, rule.model_dump_json(), min_cell_count, dialect_name,
                 consent_classes, patient_column, withdrawn)  # fmt: skip
    return consent, population, hashlib.sha256(repr(arguments).encode()).digest()


@functools.lru_cache(maxsize=256)
def _dataset_table(
    name: str, columns: tuple[tuple[str, str], ...]
) -> tuple[dict[str, DatasetColumn], sa.TableClause]:
    """The catalog's columns and the table clause of a dataset version, built once per version: published
    versions never change, and rebuilding them cost a tenth of a small query. Callers must not mutate."""
    catalog = {col: DatasetColumn(col, arrow) for col, arrow in columns}
    return catalog, sa.table(name, *(sa.column(c.name, c.sa_type()) for c in catalog.values()))


class _Resolver:
    """Checks every column the spec names against the obligations and the catalog."""

    def __init__(
        self, catalog: dict[str, DatasetColumn], allowed: set[str], table: sa.TableClause, dialect: str
    ) -> None:
        self.catalog = catalog
        self.allowed = allowed
        self.table = table
        self.dialect = dialect
        self.values: dict[str, Any] = {}
        """The filters' values by the name each is bound as."""

    def bind(self, value: Any, column: DatasetColumn) -> sa.BindParameter[Any]:
        """A filter value as a parameter named by its place among the filters' values: `filter_value_0`...

        Only filter values are bound this way, and they are the only values `CompiledQuery.shape` leaves
        out: a select compiled for one query of a shape can be run with another's `values`."""
        return sa.bindparam(self.record(value), value, type_=column.sa_type())

    def record(self, value: Any) -> str:
        """Keep a filter value under the name of its place among the filters' values."""
        name = f"filter_value_{len(self.values)}"
        self.values[name] = value
        return name

    def column(self, name: str, field: str) -> DatasetColumn:
        # Allowed first: whether a column the agreement does not grant exists is not the requester's business.
        if name not in self.allowed:
            raise ColumnNotAllowed(name, field)
        if name not in self.catalog:
            raise UnknownColumn(name, field)
        return self.catalog[name]

    def consent(self, name: str, type_class: str, field: str) -> sa.ColumnClause[Any]:
        if name not in self.catalog:
            raise UnknownColumn(name, field)
        column = self.catalog[name]
        if column.type_class != type_class:
            raise QueryError(f"consent column {name!r} has type {column.arrow_type}, not {type_class}", field)
        return self.table.c[name]

    def grouping(self, name: str, field: str) -> DatasetColumn:
        column = self.column(name, field)
        if name in RESERVED_NAMES:
            raise QuerySpecError(
                f"cannot group by {name!r}: answers use that name for a column of their own", field
            )
        if column.type_class == "other":
            raise QuerySpecError(
                f"column {name!r} has type {column.arrow_type}, which cannot be grouped", field
            )
        return column

    def analysed(self, name: str, field: str = "params.column") -> DatasetColumn:
        column = self.column(name, field)
        if not column.numeric:
            raise QuerySpecError(f"column {name!r} is {column.arrow_type}, not numeric", field)
        return column


def _filter(node: Filter, path: str, resolve: _Resolver, negated: bool) -> sa.ColumnElement[bool]:
    if isinstance(node, And):
        return sa.and_(*(_filter(c, f"{path}.and[{i}]", resolve, negated) for i, c in enumerate(node.and_)))
    if isinstance(node, Or):
        return sa.or_(*(_filter(c, f"{path}.or[{i}]", resolve, negated) for i, c in enumerate(node.or_)))
    if isinstance(node, Not):
        return sa.not_(_filter(node.not_, f"{path}.not", resolve, not negated))
    return _condition(node, path, resolve, negated)


# The comparison operators by spec op, applied to the one that is asked (each builds a SQL expression).
_COMPARISONS: Final[dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


def _filter_values(node: Filter, path: str, resolve: _Resolver) -> None:
    """Read and check the filters' values into `resolve.values`, in the order `_filter` binds them."""
    if isinstance(node, And):
        for i, child in enumerate(node.and_):
            _filter_values(child, f"{path}.and[{i}]", resolve)
    elif isinstance(node, Or):
        for i, child in enumerate(node.or_):
            _filter_values(child, f"{path}.or[{i}]", resolve)
    elif isinstance(node, Not):
        _filter_values(node.not_, f"{path}.not", resolve)
    else:
        for value in _leaf(node, path, resolve)[1]:
            resolve.record(value)


def _leaf(leaf: Condition, path: str, resolve: _Resolver) -> tuple[DatasetColumn, list[Any]]:
    """A condition's column and its values coerced to the column's type, every check of the two made."""
    column = resolve.column(leaf.column, f"{path}.column")
    if leaf.op == "is_null":
        return column, []
    if column.type_class == "bool" and leaf.op in _ORDERED_OPS:
        raise QuerySpecError(f"{leaf.op!r} does not apply to boolean column {column.name!r}", f"{path}.op")
    if column.type_class == "other":
        raise QuerySpecError(
            f"column {column.name!r} has type {column.arrow_type}, which filters cannot compare",
            f"{path}.column",
        )

    def coerced(value: object, where: str) -> Any:
        try:
            return python_value(column, value)
        except ValueError as exc:
            raise QuerySpecError(str(exc), where) from None

    if leaf.op == "in":
        assert isinstance(leaf.value, list)
        return column, [coerced(v, f"{path}.value[{i}]") for i, v in enumerate(leaf.value)]
    if leaf.op == "between":
        assert isinstance(leaf.value, list)
        low, high = (coerced(v, f"{path}.value[{i}]") for i, v in enumerate(leaf.value))
        if low > high:
            raise QuerySpecError("between needs low <= high", f"{path}.value")
        return column, [low, high]
    return column, [coerced(leaf.value, f"{path}.value")]


def _condition(leaf: Condition, path: str, resolve: _Resolver, negated: bool) -> sa.ColumnElement[bool]:
    column, values = _leaf(leaf, path, resolve)
    col: sa.ColumnElement[Any] = resolve.table.c[column.name]
    if leaf.op == "is_null":
        return col.is_(None) if leaf.value is None else col.is_not(None)
    col = column.compared(col, resolve.dialect)
    if column.type_class == "string" and leaf.op in _ORDERED_OPS:
        # Byte order everywhere: PostgreSQL's locale collation would order text differently from DuckDB.
        col = col.collate("C") if resolve.dialect == "postgresql" else col
    bound = [resolve.bind(value, column) for value in values]
    predicate: sa.ColumnElement[bool]
    if leaf.op == "in":
        predicate = col.in_(bound)
    elif leaf.op == "between":
        predicate = col.between(bound[0], bound[1])
    else:
        predicate = _COMPARISONS[leaf.op](col, bound[0])
    # A comparison with a missing value is unknown; under a `not` unknown would stay unknown and drop the
    # row, so it is made false there: `not F` then selects exactly the rows `F` does not.
    return sa.and_(col.is_not(None), predicate) if negated else predicate


def _filter_shape(node: Filter) -> tuple[Any, ...]:
    """The filter tree without its values: each leaf's column and op, and its value's type (per item for
    a list). `is_null` keeps its value, which chooses IS NULL or IS NOT NULL."""
    if isinstance(node, And):
        return ("and", tuple(_filter_shape(c) for c in node.and_))
    if isinstance(node, Or):
        return ("or", tuple(_filter_shape(c) for c in node.or_))
    if isinstance(node, Not):
        return ("not", _filter_shape(node.not_))
    value = node.value
    if node.op == "is_null":
        return ("leaf", node.column, node.op, value)
    kind = tuple(type(v) for v in value) if isinstance(value, list) else type(value)
    return ("leaf", node.column, node.op, kind)


def _frozen(value: Any) -> Any:
    """A JSON-like value as nested tuples, hashable; each scalar as its type and repr (1, 1.0 and True are
    equal in Python, and so are 0.0 and -0.0)."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return (type(value), repr(value))
