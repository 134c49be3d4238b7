"""How a validation error's location becomes the `field` of a problem, and which title the problem gets:
pydantic's union member names never show, and a field named like one (`time`) keeps its name."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from gateway.problems import _field, _union_places, _validation_title


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: StrictBool | int | str
    levels: list[StrictBool | int | str] | str = "x"
    time: datetime.time | None = None


def _fields(errors: list[dict[str, Any]], spec_body: bool = False) -> list[str]:
    unions = _union_places(errors)
    return [_field(e, spec_body, unions)[1] for e in errors]


def _errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Pydantic's errors for `data`, located in the body as FastAPI locates them."""
    with pytest.raises(ValidationError) as caught:
        _Body.model_validate(data)
    return [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]


def test_the_members_of_a_union_a_value_matched_none_of_are_not_named() -> None:
    fields = _fields(_errors({"level": [], "levels": [1, {}]}))
    assert set(fields) == {"level", "levels.1", "levels"} and len(fields) == 3 + 3 + 1


def test_a_field_named_like_a_member_keeps_its_name() -> None:
    assert _fields(_errors({"level": 1, "time": "noon"})) == ["time"]
    assert _fields(_errors({"level": [], "time": "noon"})) == ["level"] * 3 + ["time"]
    assert _fields(_errors({})) == ["level"]  # missing
    assert _fields(_errors({"level": 1, "int": 5, "str": 6})) == ["int", "str"]  # unexpected


def test_a_spec_value_is_named_by_its_path_without_union_members() -> None:
    # As pydantic would locate a filter value that matched none of the scalar types, in a leaf or a list.
    leaf = ("body", "count", "filters", "condition", "value")
    errors = [{"loc": (*leaf, tag), "type": "x"} for tag in ("bool", "constrained-int", "float", "str")]
    assert _fields(errors, spec_body=True) == ["filters.value"] * 4
    listed = ("body", "count", "filters", "and", "and", 1, "condition", "value", "list[union[bool,str]]", 0)
    errors = [{"loc": (*listed, tag), "type": "x"} for tag in ("bool", "str")]
    errors.append({"loc": (*listed[:-2], "str"), "type": "x"})
    assert _fields(errors, spec_body=True) == ["filters.and[1].value[0]"] * 2 + ["filters.and[1].value"]


def test_parameters_are_named_by_their_name() -> None:
    assert _fields([{"loc": ("query", "hours"), "type": "int_parsing"}], spec_body=True) == ["hours"]


def test_the_title_says_which_part_of_the_request_is_invalid() -> None:
    assert _validation_title({"body"}, spec_body=True) == "The request body is not a valid query"
    assert _validation_title({"body"}, spec_body=False) == "The request body is not valid"
    assert _validation_title({"query"}, spec_body=True) == "A query parameter is not valid"
    assert _validation_title({"path"}, spec_body=False) == "A path parameter is not valid"
    assert _validation_title({"body", "query"}, spec_body=True) == "The request is not valid"
