"""The per-dataset pseudonymization spec: one declared action for every column of the source.

A spec is a YAML or TOML file:

    dataset = "cohort"
    agreement = "DSA-2026-014"          # or: project = "…"; the context of the pseudonym key
    patient_key = "patient_id"          # the column whose HMAC drives date shifts
    duo = ["DUO:0000042"]               # the dataset's consent codes, recorded in the catalog
    # The parameters some codes need, recorded beside them (each only with its code):
    # diseases = ["MONDO:0005015"]      # DUO:0000007 (disease-specific research): required
    # moratorium_until = 2026-09-30     # DUO:0000024 (publication moratorium): required
    # use_until = 2027-12-31            # DUO:0000025 (time limit on use): required
    # geographic_area = ["DE", "AT"]    # DUO:0000022 (geographic restriction): the site's country if absent
    [date_shift]
    max_days = 180
    [k_anonymity]
    k = 5
    [columns]
    patient_id = { action = "pseudonym", identifier = "direct" }
    name = { action = "drop", identifier = "direct" }
    birth_date = { action = "generalize", method = "age", at = "admission_date", band = 5, as = "age_band",
                   identifier = "quasi" }
    sex = { action = "keep", identifier = "quasi" }
    admission_date = "date_shift"

Columns marked `identifier = "direct"` may only be pseudonymized or dropped; columns marked `quasi` are the
quasi-identifiers of the k-anonymity report (under their output names); `none` says a steward reviewed the
column and found no identifier in it. A text column kept unmarked is sampled at ingest, and refused when its
values look like direct identifiers (see `pseudonymize.identifiers`); `none` publishes it as it is.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pycountry
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pseudonymize.errors import SpecError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
_DUO = re.compile(r"^DUO:\d{7}$")
#: A disease term as the policy's duo.json keys it: an ontology CURIE such as MONDO:0005148.
_DISEASE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$")
_DISEASE_MAX = 256  # the longest name a decision input takes
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_COUNTRIES = frozenset(str(country.alpha_2) for country in pycountry.countries)
#: What a project's id is derived behind, so that `project: X` and `agreement: X` derive different keys.
PROJECT_CONTEXT = "project:"
#: Each dataset-level consent parameter and the DUO code that reads it (docs/policy.md, "What the policies
#: decide"). A parameter without its code would be recorded and never read.
CONSENT_PARAMETERS = {
    "diseases": "DUO:0000007",
    "geographic_area": "DUO:0000022",
    "moratorium_until": "DUO:0000024",
    "use_until": "DUO:0000025",
}
#: The parameters without which the policy cannot apply their code (it denies what the code would allow):
#: an absent geographic area is the site's own country.
_NEEDS_PARAMETER = ("diseases", "moratorium_until", "use_until")
#: direct: identifies a person (pseudonymize or drop it); quasi: feeds the k-anonymity report; none: reviewed,
#: not an identifier. A column left unmarked (None) has not been reviewed: the ingest scans it if it is kept.
Identifier = Literal["direct", "quasi", "none"]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    identifier: Identifier | None = None
    output: str | None = Field(default=None, alias="as")

    @field_validator("output")
    @classmethod
    def _output_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid column name")
        return value


class Keep(_Rule):
    action: Literal["keep"]


class Drop(_Rule):
    action: Literal["drop"]


class Pseudonym(_Rule):
    action: Literal["pseudonym"]


class DateShift(_Rule):
    action: Literal["date_shift"]


class AgeRule(_Rule):
    """Age at a reference date, in bands of `band` years (1 = whole years), top-coded at `top` ('90+')
    and, when `bottom` is set, bottom-coded below it ('<18')."""

    action: Literal["generalize"]
    method: Literal["age"]
    at: str = Field(description="a source date column, or a fixed date YYYY-MM-DD")
    band: int = Field(default=5, ge=1, le=50)
    top: int = Field(default=90, ge=1, le=120)
    bottom: int = Field(default=0, ge=0, le=120)

    @field_validator("at", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2020-01-01 as a date; the rule keeps its ISO text.
        return value.isoformat() if isinstance(value, date) else value

    @model_validator(mode="after")
    def _bottom_below_top(self) -> AgeRule:
        if self.bottom >= self.top:
            raise ValueError("bottom must be below top")
        return self


class PostcodeRule(_Rule):
    """Postcode truncated to its first `keep` characters; prefixes shared by fewer than `min_count`
    records of the dataset are replaced by '*'."""

    action: Literal["generalize"]
    method: Literal["postcode"]
    keep: int = Field(default=3, ge=0, le=10)
    min_count: int = Field(default=20, ge=1)


class DateRule(_Rule):
    """A date coarsened to its month (first day of the month) or its year (an integer)."""

    action: Literal["generalize"]
    method: Literal["date"]
    to: Literal["month", "year"]


class NumericRule(_Rule):
    """A number replaced by the label of its bin: fixed `width` from `start`, or explicit `edges`."""

    action: Literal["generalize"]
    method: Literal["numeric"]
    width: float | None = Field(default=None, gt=0)
    start: float = 0.0
    edges: list[float] | None = None

    @model_validator(mode="after")
    def _one_binning(self) -> NumericRule:
        if (self.width is None) == (self.edges is None):
            raise ValueError("give exactly one of width and edges")
        if self.edges is not None and (len(self.edges) < 2 or self.edges != sorted(set(self.edges))):
            raise ValueError("edges must be at least two strictly increasing numbers")
        if not all(math.isfinite(x) for x in [*(self.edges or []), self.start, self.width or 0.0]):
            raise ValueError("edges, start and width must be finite numbers")
        return self


Generalize = Annotated[AgeRule | PostcodeRule | DateRule | NumericRule, Field(discriminator="method")]
ColumnRule = Keep | Drop | Pseudonym | DateShift | AgeRule | PostcodeRule | DateRule | NumericRule
_ACTIONS: dict[str, type[BaseModel]] = {
    "keep": Keep,
    "drop": Drop,
    "pseudonym": Pseudonym,
    "date_shift": DateShift,
}
_METHODS: dict[str, type[BaseModel]] = {
    "age": AgeRule,
    "postcode": PostcodeRule,
    "date": DateRule,
    "numeric": NumericRule,
}


class DateShiftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_days: int = Field(default=180, ge=1, le=3650)


class KAnonymityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(default=5, ge=2, le=1000)


class PseudonymizationSpec(BaseModel):
    """A validated spec. `columns` keeps the file's order; `rule(name)` gives one column's rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    agreement: str | None = None
    project: str | None = None
    patient_key: str | None = None
    duo: list[str] = Field(default_factory=list)
    diseases: list[str] = Field(default_factory=list)
    moratorium_until: date | None = None
    use_until: date | None = None
    geographic_area: list[str] | None = None
    description: str = ""
    date_shift: DateShiftOptions = DateShiftOptions()
    k_anonymity: KAnonymityOptions = KAnonymityOptions()
    columns: dict[str, ColumnRule]
    digest: str = Field(default="", description="SHA-256 of the spec file's bytes, set by load_spec")
    # A project's dataset first published before project contexts carried PROJECT_CONTEXT keeps its bare id.
    _bare_project_context: bool = PrivateAttr(default=False)

    @field_validator("dataset")
    @classmethod
    def _dataset_id(cls, value: str) -> str:
        # "__" separates a dataset from its version in table names (ds_<dataset>__v<n>).
        if not _DATASET.match(value) or "__" in value:
            raise ValueError("must be lower-case letters, digits, '-' and single '_', starting with a letter")
        return value

    @field_validator("agreement")
    @classmethod
    def _agreement_id(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(PROJECT_CONTEXT):
            raise ValueError(
                f"must not start with {PROJECT_CONTEXT!r}: that is how a project's key context is written"
            )
        return value

    @field_validator("duo")
    @classmethod
    def _duo_codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not _DUO.match(code):
                raise ValueError(f"{code!r} is not a DUO CURIE like 'DUO:0000042'")
        return value

    @field_validator("diseases")
    @classmethod
    def _disease_terms(cls, value: list[str]) -> list[str]:
        for term in value:
            if not _DISEASE.match(term) or len(term) > _DISEASE_MAX:
                raise ValueError(f"{term!r} is not a disease term like 'MONDO:0005148'")
        if len(set(value)) < len(value):
            raise ValueError("a disease term is listed twice")
        return value

    @field_validator("moratorium_until", "use_until", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        # YAML and TOML read an unquoted 2026-09-30 as a date; a timestamp is not a day.
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str) and _DATE.match(value) and _is_date(value):
            return date.fromisoformat(value)
        raise ValueError("must be a date YYYY-MM-DD")

    @field_validator("geographic_area")
    @classmethod
    def _countries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("lists no country: give the area's ISO 3166-1 alpha-2 codes, or leave it out")
        for code in value:
            if code not in _COUNTRIES:
                raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'DE')")
        if len(set(value)) < len(value):
            raise ValueError("a country is listed twice")
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _expand_rules(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        rules = {}
        for name, rule in value.items():
            try:
                rules[name] = _expand(rule)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                message = message.removeprefix("Value error, ")
                raise ValueError(f"columns.{name}{'.' + field if field else ''}: {message}") from None
            except ValueError as exc:
                raise ValueError(f"columns.{name}: {exc}") from None
        return rules

    @model_validator(mode="after")
    def _consistent(self) -> PseudonymizationSpec:
        if (self.agreement is None) == (self.project is None):
            raise ValueError("set exactly one of agreement and project (the pseudonym key's context)")
        outputs: dict[str, str] = {}
        for name, rule in self.columns.items():
            if not _NAME.match(name):
                raise ValueError(f"columns.{name}: not a valid column name")
            if rule.identifier == "direct" and rule.action not in ("pseudonym", "drop"):
                raise ValueError(
                    f"columns.{name}: a direct identifier may only be pseudonymized or dropped, "
                    f"not {rule.action}"
                )
            if rule.action == "drop":
                continue
            out = rule.output or name
            if out in outputs:
                raise ValueError(f"columns.{name}: output column {out!r} is also written by {outputs[out]!r}")
            outputs[out] = name
            if isinstance(rule, AgeRule) and not _is_date(rule.at) and rule.at not in self.columns:
                raise ValueError(f"columns.{name}.at: {rule.at!r} is neither a column nor a date YYYY-MM-DD")
        for name, code in CONSENT_PARAMETERS.items():
            given = getattr(self, name) not in (None, [])
            if given and code not in self.duo:
                raise ValueError(f"{name}: given, but duo does not include {code}, the code that reads it")
            if not given and code in self.duo and name in _NEEDS_PARAMETER:
                raise ValueError(
                    f"{name}: required when duo includes {code}, which the policy cannot apply without it"
                )
        if any(r.action == "date_shift" for r in self.columns.values()) and self.patient_key is None:
            raise ValueError("patient_key: required when a column is date_shift")
        if self.patient_key is not None and self.patient_key not in self.columns:
            raise ValueError(f"patient_key: {self.patient_key!r} is not a column of the spec")
        if self.patient_key is not None and self.columns[self.patient_key].action not in (
            "pseudonym",
            "drop",
        ):
            # The patient key identifies a person whatever the spec calls it.
            raise ValueError(
                f"columns.{self.patient_key}: the patient key may only be pseudonymized or dropped, "
                f"not {self.columns[self.patient_key].action}"
            )
        return self

    @property
    def key_context(self) -> str:
        """What the pseudonym key is derived for: the agreement's id as it is, or the project's behind
        `project:` (an agreement and a project of the same id must not share pseudonyms); see
        `continuing`."""
        if self.agreement is not None:
            return self.agreement
        if self.project is None:
            return ""
        return self.project if self._bare_project_context else PROJECT_CONTEXT + self.project

    def continuing(self, published_context: str | None) -> PseudonymizationSpec:
        """This spec for the next version of a dataset whose latest was published under `published_context`.

        Project contexts were once the project's bare id, as agreements' still are. A project's dataset
        published so keeps that context, and with it its tokens, its date shifts and the consent
        withdrawals recorded against them (a new context would need `--rekey`, which those withdrawals
        refuse). Every other spec, and a dataset not yet published, gets `key_context` as it is."""
        if self.project is None or published_context != self.project:
            return self
        bare = self.model_copy()
        bare._bare_project_context = True
        return bare

    def output_column(self, name: str) -> str | None:
        """The stored name of a source column, or None when it is dropped."""
        rule = self.columns[name]
        return None if rule.action == "drop" else (rule.output or name)

    @property
    def text_columns(self) -> list[str]:
        """Source columns whose values are identifiers or codes, to be read as text whatever they look like:
        pseudonymized columns, the patient key and postcodes (`00123` is not the number 123)."""
        return [
            name
            for name, rule in self.columns.items()
            if rule.action == "pseudonym" or name == self.patient_key or isinstance(rule, PostcodeRule)
        ]

    @property
    def quasi_identifiers(self) -> list[str]:
        """Output names of the columns marked as quasi-identifiers."""
        out = [self.output_column(n) for n, r in self.columns.items() if r.identifier == "quasi"]
        return [c for c in out if c is not None]


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _expand(rule: Any) -> Any:
    """Turn the short forms ('keep', {action=generalize, method=age}) into the tagged model instances."""
    if isinstance(rule, str):
        rule = {"action": rule}
    if not isinstance(rule, dict):
        raise ValueError("a column rule is an action name or a table with `action`")
    action = rule.get("action")
    if action == "generalize":
        method = rule.get("method")
        if method not in _METHODS:
            raise ValueError(f"unknown generalize method {method!r}; use one of {', '.join(_METHODS)}")
        return _METHODS[method].model_validate(rule)
    if action not in _ACTIONS:
        raise ValueError(
            f"unknown action {action!r}; use one of keep, drop, pseudonym, date_shift, generalize"
        )
    return _ACTIONS[action].model_validate(rule)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice: a later `name: keep` must not quietly win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_line(text: str, loc: tuple[str, ...]) -> int | None:
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if key.value == part:
                line, node = key.start_mark.line + 1, value
                break
        else:
            break
    return line


def _toml_line(text: str, loc: tuple[str, ...]) -> int | None:
    for part in reversed(loc):
        m = re.search(rf"^\s*{re.escape(part)}\s*=", text, re.MULTILINE)
        if m:
            return text.count("\n", 0, m.start()) + 1
    return None


def load_spec(path: Path | str) -> PseudonymizationSpec:
    """Read and validate a spec file; every problem is a SpecError naming the file, field and line."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
        text = raw_bytes.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(path, None, "spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, None, f"cannot read spec file: {exc}") from None
    is_toml = path.suffix.lower() == ".toml"
    try:
        data = tomllib.loads(text) if is_toml else yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except tomllib.TOMLDecodeError as exc:  # "Invalid value (at line 2, column 19)": no text of the file
        raise SpecError(path, None, f"not valid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        # PyYAML's own message quotes the file around the error: a data file given as the spec would
        # put a patient's record into the error and the audit log. Its problem and place only.
        problem = getattr(exc, "problem", None) or "the file cannot be read as YAML"
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise SpecError(path, None, f"not valid YAML: {problem}{column}", line) from None
    except ValueError as exc:  # a date that is no date (`2020-02-30`): PyYAML's constructor raises it bare
        raise SpecError(
            path, None, f"not valid YAML: a value that reads as a date is not one ({exc})"
        ) from None
    except RecursionError:
        raise SpecError(path, None, "not valid YAML: the document nests too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(path, None, "the spec must be a mapping of keys to values")
    try:
        spec = PseudonymizationSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"] if not str(p).endswith("Rule") and "[" not in str(p))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        m = re.match(r"^([A-Za-z_][\w.]*): (.*)$", message)
        if (m and not loc) or (m and m.group(1).split(".")[0] in ("columns", "patient_key", "duo")):
            loc, message = tuple(m.group(1).split(".")), m.group(2)
        line = _toml_line(text, loc) if is_toml else _yaml_line(text, loc)
        raise SpecError(path, ".".join(loc) or None, message, line) from None
    return spec.model_copy(update={"digest": hashlib.sha256(raw_bytes).hexdigest()})
