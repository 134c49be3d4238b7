"""Query-set size control: the filtered set and its complement must both be large (tracker defence)."""

from __future__ import annotations

from pseudonymize.disclosure.errors import ComplementTooSmall, InvalidAggregate, QuerySetTooSmall
from pseudonymize.disclosure.rules import DisclosureRules


def check_query_set(selected: int, population: int, rules: DisclosureRules) -> None:
    """Refuse a query whose selected rows, or the rows its filter leaves out, number 1..min_cell_count-1.

    `population` is every row the researcher may query in the dataset (after the consent filter);
    `selected` is what the researcher's filter keeps of it. A filter that leaves out nothing
    (`selected == population`, as an unfiltered query does) has an empty complement and answers exactly
    what the unfiltered query answers, so it is allowed; leaving out 1 to min_cell_count - 1 rows is refused,
    because subtracting the answer from the unfiltered one would describe that small group.
    """
    for name, value in (("selected", selected), ("population", population)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidAggregate(f"query-set size {name} must be a non-negative integer")
    if selected > population:
        raise InvalidAggregate("query-set size: the filtered set cannot be larger than the dataset")
    if selected < rules.min_cell_count:
        raise QuerySetTooSmall(rules.min_cell_count)
    left_out = population - selected
    if 0 < left_out < rules.min_cell_count:
        raise ComplementTooSmall(rules.min_cell_count)
