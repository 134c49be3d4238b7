"""Spec files: every bad input names the file, the field and, where it can, the line."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from pseudonymize.errors import SpecError
from pseudonymize.ingest import pseudonym_key
from pseudonymize.keys import SecretKey
from pseudonymize.spec import AgeRule, Keep, Pseudonym, load_spec
from pseudonymize.transform import compile_transform

HEAD = (
    "dataset: cohort\nagreement: DSA-1\npatient_key: pid\ncolumns:\n"
    "  pid: {action: pseudonym, identifier: direct}\n"
)


def spec(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return err.value


def test_example_spec_loads(tmp_path: Path) -> None:
    s = load_spec(
        spec(tmp_path, HEAD + "  sex: keep\n  dob: {action: generalize, method: age, at: 2020-01-01}\n")
    )
    assert isinstance(s.columns["pid"], Pseudonym)
    assert isinstance(s.columns["sex"], Keep)
    assert isinstance(s.columns["dob"], AgeRule)
    assert len(s.digest) == 64 and s.key_context == "DSA-1"


def test_unknown_action_names_column_and_line(tmp_path: Path) -> None:
    err = error(spec(tmp_path, HEAD + "  sex: {action: scramble}\n"))
    assert err.field == "columns.sex" and err.line == 6 and "unknown action 'scramble'" in str(err)


def test_unknown_generalize_method_and_unknown_option(tmp_path: Path) -> None:
    err = error(spec(tmp_path, HEAD + "  dob: {action: generalize, method: blur}\n"))
    assert err.field == "columns.dob" and "unknown generalize method 'blur'" in str(err)
    err = error(spec(tmp_path, HEAD + "  dob: {action: generalize, method: age, at: 2020-01-01, bands: 5}\n"))
    assert err.field == "columns.dob.bands" and "unknown key" in str(err)


def test_direct_identifier_can_never_be_kept(tmp_path: Path) -> None:
    err = error(spec(tmp_path, HEAD + "  name: {action: keep, identifier: direct}\n"))
    assert err.field == "columns.name" and err.line == 6
    assert "may only be pseudonymized or dropped, not keep" in str(err)
    err = error(spec(tmp_path, HEAD + "  zip: {action: generalize, method: postcode, identifier: direct}\n"))
    assert "not generalize" in str(err)


def test_date_shift_needs_patient_key(tmp_path: Path) -> None:
    body = "dataset: cohort\nagreement: DSA-1\ncolumns:\n  adm: date_shift\n"
    assert "required when a column is date_shift" in str(error(spec(tmp_path, body)))


def test_exactly_one_key_context(tmp_path: Path) -> None:
    neither = HEAD.replace("agreement: DSA-1\n", "")
    assert "exactly one of agreement and project" in str(error(spec(tmp_path, neither)))
    both = HEAD.replace("agreement: DSA-1\n", "agreement: DSA-1\nproject: P\n")
    assert "exactly one of agreement and project" in str(error(spec(tmp_path, both)))


def test_an_agreement_and_a_project_of_one_id_derive_different_keys(tmp_path: Path) -> None:
    master = SecretKey(bytes(range(32)))
    agreement = load_spec(spec(tmp_path, HEAD, "a.yaml"))
    project = load_spec(spec(tmp_path, HEAD.replace("agreement: DSA-1", "project: DSA-1"), "p.yaml"))
    assert agreement.key_context == "DSA-1"  # as agreements' datasets were published: their tokens stay
    assert project.key_context == "project:DSA-1"
    assert pseudonym_key(master, agreement) != pseudonym_key(master, project)
    err = error(spec(tmp_path, HEAD.replace("DSA-1", "project:DSA-1")))
    assert err.field == "agreement" and "must not start with 'project:'" in str(err)


def test_a_project_dataset_published_under_its_bare_id_continues_under_it(tmp_path: Path) -> None:
    project = load_spec(spec(tmp_path, HEAD.replace("agreement: DSA-1", "project: P-7")))
    assert project.continuing("P-7").key_context == "P-7"
    assert project.continuing("P-7").digest == project.digest
    for published in (None, "project:P-7", "P-8"):
        assert project.continuing(published).key_context == "project:P-7"
    agreement = load_spec(spec(tmp_path, HEAD, "a.yaml"))
    assert agreement.continuing("project:DSA-1") is agreement and agreement.key_context == "DSA-1"


def test_bad_values(tmp_path: Path) -> None:
    assert error(spec(tmp_path, HEAD.replace("cohort", "Cohort!"))).field == "dataset"
    err = error(spec(tmp_path, HEAD + "duo: [DUO-42]\n"))
    assert err.field == "duo" and "DUO CURIE" in str(err)
    err = error(spec(tmp_path, HEAD + "  bmi: {action: generalize, method: numeric, edges: [30, 20]}\n"))
    assert "strictly increasing" in str(err)
    err = error(
        spec(tmp_path, HEAD + "  dob: {action: generalize, method: age, at: 2020-01-01, bottom: 95}\n")
    )
    assert "bottom must be below top" in str(err)
    err = error(spec(tmp_path, HEAD + "  dob: {action: generalize, method: age, at: yesterday}\n"))
    assert err.field == "columns.dob.at"


def test_toml_errors_carry_lines(tmp_path: Path) -> None:
    body = (
        'dataset = "cohort"\nagreement = "DSA-1"\n[columns]\nsex = "keep"\n'
        'name = { action = "keep", identifier = "direct" }\n'
    )
    err = error(spec(tmp_path, body, "s.toml"))
    assert err.field == "columns.name" and err.line == 5 and str(err).startswith(f"{tmp_path}/s.toml:5:")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    assert "spec file not found" in str(error(tmp_path / "nope.yaml"))
    assert "not valid YAML" in str(error(spec(tmp_path, "columns: [unclosed\n")))
    # A data file given as the spec: the error names the place, never the text around it.
    record = 'patient_id,note,name\nMRN-4711,"Allergie: Penicillin",Anna Müller,1950-04-03\n'
    err = error(spec(tmp_path, record))
    assert "not valid YAML" in str(err) and err.line == 2
    assert "MRN-4711" not in str(err) and "Müller" not in str(err) and "Penicillin" not in err.audit_reason
    assert "must be a mapping" in str(error(spec(tmp_path, "- a\n- b\n")))
    # PyYAML raises a bare ValueError for a date that is none, and deep nesting exhausts the stack.
    assert "a value that reads as a date is not one" in str(error(spec(tmp_path, "at: 2020-02-30\n")))
    assert "nests too deeply" in str(error(spec(tmp_path, "a: " + "[" * 20_000 + "]" * 20_000 + "\n")))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"dataset: caf\xe9\n")
    assert "cannot read spec file" in str(error(bad))


def test_every_source_column_needs_a_rule(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + "  sex: keep\n"))
    schema = pa.schema([("pid", pa.string()), ("sex", pa.string()), ("ssn", pa.string())])
    with pytest.raises(SpecError, match=r"columns: source column 3 of 3 has no rule") as refused:
        compile_transform(s, schema, bytes(32), "s.yaml")
    # The header is not repeated: in a file without a header line it is the first patient's values.
    headerless = pa.schema([("pid", pa.string()), ("sex", pa.string()), ("Q7781X", pa.string())])
    with pytest.raises(SpecError) as leaked:
        compile_transform(s, headerless, bytes(32), "s.yaml")
    assert "ssn" not in str(refused.value) and "Q7781X" not in str(leaked.value)


def test_rule_for_a_column_the_source_lacks(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + "  sex: keep\n"))
    with pytest.raises(SpecError, match=r"columns.sex: the source has no such column"):
        compile_transform(s, pa.schema([("pid", pa.string())]), bytes(32), "s.yaml")


def test_actions_check_column_types(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + "  adm: date_shift\n"))
    schema = pa.schema([("pid", pa.string()), ("adm", pa.int64())])
    with pytest.raises(
        SpecError, match=r"columns.adm: date_shift: the source column is of type int64, not a date"
    ):
        compile_transform(s, schema, bytes(32), "s.yaml")
    s = load_spec(spec(tmp_path, HEAD + "  bmi: {action: generalize, method: numeric, width: 5}\n"))
    schema = pa.schema([("pid", pa.string()), ("bmi", pa.string())])
    with pytest.raises(SpecError, match=r"not a number"):
        compile_transform(s, schema, bytes(32), "s.yaml")


def test_duplicate_output_names(tmp_path: Path) -> None:
    err = error(spec(tmp_path, HEAD + "  a: keep\n  b: {action: keep, as: a}\n"))
    assert "also written by 'a'" in str(err)


def test_patient_key_can_never_be_kept(tmp_path: Path) -> None:
    body = "dataset: cohort\nagreement: DSA-1\npatient_key: pid\ncolumns:\n  pid: keep\n"
    err = error(spec(tmp_path, body))
    assert err.field == "columns.pid" and "patient key may only be pseudonymized or dropped" in str(err)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    body = HEAD + "  name: {action: drop, identifier: direct}\n  sex: keep\n  name: keep\n"
    err = error(spec(tmp_path, body))
    assert "a key is given twice" in str(err) and err.path.name == "s.yaml" and err.line == 8


def test_numeric_bins_need_finite_numbers(tmp_path: Path) -> None:
    err = error(spec(tmp_path, HEAD + "  bmi: {action: generalize, method: numeric, edges: [0, .inf]}\n"))
    assert err.field == "columns.bmi" and "finite" in str(err)


def test_nested_columns_cannot_be_kept(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + "  codes: keep\n"))
    schema = pa.schema([("pid", pa.string()), ("codes", pa.list_(pa.string()))])
    with pytest.raises(SpecError, match=r"columns.codes: keep: the source column is of nested type"):
        compile_transform(s, schema, bytes(32), "s.yaml")


def test_a_source_column_named_like_the_ingests_own_is_refused(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + "  __fedgate_po: keep\n"))
    schema = pa.schema([("pid", pa.string()), ("__fedgate_po", pa.int32())])
    with pytest.raises(SpecError, match="source column 2 of 2 has a name starting with '__fedgate'"):
        compile_transform(s, schema, bytes(32), "s.yaml")


CODES = "duo: [DUO:0000007, DUO:0000022, DUO:0000024, DUO:0000025]\n"
TERMS = {
    "diseases": "[MONDO:0005015, MONDO:0007254]",
    "geographic_area": "[DE, FR]",
    "moratorium_until": "2026-09-30",
    "use_until": "'2027-12-31'",
}


def terms(**changed: str | None) -> str:
    """The four dataset-level consent parameters as YAML lines, some changed or (None) left out."""
    given = {**TERMS, **changed}
    return "".join(f"{k}: {v}\n" for k, v in given.items() if v is not None)


def test_dataset_consent_parameters_load_beside_their_codes(tmp_path: Path) -> None:
    s = load_spec(spec(tmp_path, HEAD + CODES + terms()))
    assert s.diseases == ["MONDO:0005015", "MONDO:0007254"] and s.geographic_area == ["DE", "FR"]
    assert s.moratorium_until == date(2026, 9, 30) and s.use_until == date(2027, 12, 31)
    toml = (
        'dataset = "cohort"\nagreement = "DSA-1"\nduo = ["DUO:0000024", "DUO:0000025"]\n'
        'moratorium_until = 2026-09-30\nuse_until = "2027-12-31"\n[columns]\nsex = "keep"\n'
    )
    s = load_spec(spec(tmp_path, toml, "s.toml"))
    assert (s.moratorium_until, s.use_until) == (date(2026, 9, 30), date(2027, 12, 31))
    # None recorded: a spec without the codes, and an area left to the site's own country.
    plain = load_spec(spec(tmp_path, HEAD + "duo: [DUO:0000042, DUO:0000022]\n"))
    assert (plain.diseases, plain.geographic_area, plain.moratorium_until, plain.use_until) == (
        [], None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changed", "field", "message"),
    [
        ({"diseases": "[type 2 diabetes]"}, "diseases", "'type 2 diabetes' is not a disease term like"),
        ({"diseases": "[MONDO:0005015, MONDO:0005015]"}, "diseases", "a disease term is listed twice"),
        ({"diseases": "[42]"}, "diseases.0", "valid string"),
        ({"moratorium_until": "'2026-02-30'"}, "moratorium_until", "must be a date YYYY-MM-DD"),
        ({"moratorium_until": "30.09.2026"}, "moratorium_until", "must be a date YYYY-MM-DD"),
        ({"use_until": "2027-12-31 10:00:00"}, "use_until", "must be a date YYYY-MM-DD"),
        ({"use_until": "20271231"}, "use_until", "must be a date YYYY-MM-DD"),
        ({"geographic_area": "[UK]"}, "geographic_area", "'UK' is not an ISO 3166-1 alpha-2 country code"),
        ({"geographic_area": "[de]"}, "geographic_area", "'de' is not an ISO 3166-1 alpha-2 country code"),
        ({"geographic_area": "[]"}, "geographic_area", "lists no country"),
        ({"diseases": None}, "diseases", "required when duo includes DUO:0000007"),
        ({"moratorium_until": None}, "moratorium_until", "required when duo includes DUO:0000024"),
        ({"use_until": None}, "use_until", "required when duo includes DUO:0000025"),
    ],
)
def test_bad_consent_parameters_name_the_file_and_field(
    tmp_path: Path, changed: dict[str, str | None], field: str, message: str
) -> None:
    path = spec(tmp_path, HEAD + CODES + terms(**changed))
    err = error(path)
    assert err.field == field and message in err.message, str(err)
    assert str(err).startswith(f"{path}:")


def test_a_consent_parameter_without_its_code_is_refused(tmp_path: Path) -> None:
    for name, code in (
        ("diseases", "DUO:0000007"),
        ("geographic_area", "DUO:0000022"),
        ("moratorium_until", "DUO:0000024"),
        ("use_until", "DUO:0000025"),
    ):
        others = CODES.replace(f"{code}, ", "").replace(f", {code}", "")
        err = error(spec(tmp_path, HEAD + others + terms()))
        assert err.field == name and f"duo does not include {code}" in err.message, str(err)
        assert err.line == 6 + 1 + list(TERMS).index(name)  # the parameter's own line


def test_the_documented_consent_parameters_load(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "pseudonymization.md").read_text()
    block = doc.split("## Dataset-level consent", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    s = load_spec(spec(tmp_path, HEAD + block))
    assert s.duo == ["DUO:0000007", "DUO:0000024"] and s.diseases == ["MONDO:0005015"]
    assert s.moratorium_until == date(2026, 9, 30)
