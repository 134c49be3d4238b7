"""The query API: typed specs, their compilation to SQLAlchemy Core with obligations applied, execution.

The pipeline calls, in order: `parse_query_spec` (or FastAPI validates the `QuerySpec` body),
`spec.query_facts()` for the policy, `latest_entry` and `compile_query` with the decision's obligations,
then `execute` on an engine from `store_engine`.
"""

from gateway.query.catalog import catalog_columns, latest_entry
from gateway.query.compile import RESERVED_NAMES, CompiledQuery, compile_query, quantile_name
from gateway.query.errors import (
    ColumnNotAllowed,
    ExecutionError,
    FieldProblem,
    QueryError,
    QuerySpecError,
    UnknownColumn,
    UnsupportedStore,
)
from gateway.query.execute import QueryOutcome, execute, store_engine
from gateway.query.population import PopulationCache
from gateway.query.spec import (
    KINDS,
    OPS,
    QUERY_SPEC,
    And,
    BaseQuery,
    ColumnParams,
    Condition,
    CountQuery,
    CrosstabQuery,
    Filter,
    HistogramParams,
    HistogramQuery,
    KaplanMeierParams,
    KaplanMeierQuery,
    Not,
    Or,
    QuantilesParams,
    QuantilesQuery,
    QuerySpec,
    SummaryQuery,
    parse_query_spec,
)

__all__ = [
    "KINDS",
    "OPS",
    "QUERY_SPEC",
    "RESERVED_NAMES",
    "And",
    "BaseQuery",
    "ColumnNotAllowed",
    "ColumnParams",
    "CompiledQuery",
    "Condition",
    "CountQuery",
    "CrosstabQuery",
    "ExecutionError",
    "FieldProblem",
    "Filter",
    "HistogramParams",
    "HistogramQuery",
    "KaplanMeierParams",
    "KaplanMeierQuery",
    "Not",
    "Or",
    "PopulationCache",
    "QuantilesParams",
    "QuantilesQuery",
    "QueryError",
    "QueryOutcome",
    "QuerySpec",
    "QuerySpecError",
    "SummaryQuery",
    "UnknownColumn",
    "UnsupportedStore",
    "catalog_columns",
    "compile_query",
    "execute",
    "latest_entry",
    "parse_query_spec",
    "quantile_name",
    "store_engine",
]
