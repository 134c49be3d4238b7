"""Spec files: every bad input names the file, the field and, where it can, the line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pseudonymize.errors import SpecError
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
