"""Synthetic cohorts: exact schema, determinism, value domains, site differences, realism, files and CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import statsmodels.formula.api as smf
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.duration.hazard_regression import PHReg
from typer.testing import CliRunner

import gateway.synth.writer as synth_writer
from gateway.cli import app
from gateway.settings import _SITE_ID
from gateway.synth import (
    CONSENTS,
    COUNTRY_ORDER,
    DIAGNOSIS_CODES,
    DUO_TERMS,
    SCHEMA,
    InvalidSynthArgument,
    OutputNotWritable,
    Site,
    generate_site,
    site_for_index,
    split_rows,
    write_cohorts,
)
from gateway.synth.cohort import site_batches
from gateway.synth.identifiers import MRN_SPACE, MrnPermutation
from gateway.synth.names import names_for

COLUMNS = [
    ("patient_id", pa.string()),
    ("name", pa.string()),
    ("birth_date", pa.date32()),
    ("sex", pa.string()),
    ("postcode", pa.string()),
    ("country", pa.string()),
    ("admission_date", pa.date32()),
    ("discharge_date", pa.date32()),
    ("icd10", pa.string()),
    ("hba1c", pa.float64()),
    ("bmi", pa.float64()),
    ("systolic_bp", pa.int32()),
    ("smoking", pa.string()),
    ("outcome", pa.string()),
    ("survival_days", pa.int32()),
    ("event", pa.bool_()),
    ("consent_duo", pa.string()),
    ("consent_withdrawn", pa.bool_()),
]

POSTCODE = {
    "DE": r"\d{5}",
    "FR": r"\d{5}",
    "US": r"\d{5}",
    "IT": r"\d{5}",
    "ES": r"\d{5}",
    "MX": r"\d{5}",
    "JP": r"\d{3}-\d{4}",
    "NL": r"[1-9]\d{3} [A-Z]{2}",
    "GB": r"[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}",
    "CA": r"[A-Z]\d[A-Z] \d[A-Z]\d",
    "AU": r"\d{4}",
    "AT": r"[1-9]\d{3}",
    "CH": r"[1-9]\d{3}",
    "BE": r"[1-9]\d{3}",
    "NZ": r"\d{4}",
}


@pytest.fixture(scope="module")
def federation() -> dict[str, pd.DataFrame]:
    """Every one of the ten site countries, 4,000 rows each, as DataFrames keyed by site id."""
    return {site_for_index(i).site_id: generate_site(i, 4_000, 11).to_pandas() for i in range(10)}


def ages(df: pd.DataFrame) -> pd.Series:
    return (pd.to_datetime(df.admission_date) - pd.to_datetime(df.birth_date)).dt.days / 365.25


# --- schema and determinism -------------------------------------------------------------------------------


def test_columns_and_types_are_exactly_the_documented_ones() -> None:
    table = generate_site(0, 300, 1)
    assert [(f.name, f.type) for f in table.schema] == COLUMNS
    assert table.schema == SCHEMA
    assert table.num_rows == 300


def test_same_arguments_give_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    first = write_cohorts(tmp_path / "a", 3, 3_000, 42)
    again = write_cohorts(tmp_path / "b", 3, 3_000, 42)
    other = write_cohorts(tmp_path / "c", 3, 3_000, 43)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.path.read_bytes() != c.path.read_bytes()


def test_written_file_holds_the_rows_generate_site_returns(tmp_path: Path) -> None:
    cohorts = write_cohorts(tmp_path, 2, 5_000, 9, chunk_rows=1_000)
    for index, cohort in enumerate(cohorts):
        written = pq.read_table(cohort.path)
        assert written.equals(generate_site(index, cohort.rows, 9, chunk_rows=1_000))
        assert pq.ParquetFile(cohort.path).metadata.num_row_groups == -(-cohort.rows // 1_000)


def test_a_chunk_does_not_depend_on_the_chunks_after_it() -> None:
    long = generate_site(0, 2_500, 5, chunk_rows=1_000)
    short = generate_site(0, 1_000, 5, chunk_rows=1_000)
    assert long.slice(0, 1_000).equals(short)
    assert len(long.column("patient_id").unique()) == 2_500


def test_mrns_are_a_permutation_of_eight_digit_numbers() -> None:
    permutation = MrnPermutation.from_rng(np.random.default_rng(0))
    rows = np.arange(0, 200_000, dtype=np.int64)
    mrns = permutation(rows)
    assert len(np.unique(mrns)) == len(rows)
    assert mrns.min() >= 0
    assert mrns.max() < MRN_SPACE
    # A keyed shuffle, not a counter: neighbouring rows get unrelated numbers.
    assert len(np.unique(np.diff(mrns[:1_000]))) > 990
    assert (permutation(rows[:10]) == mrns[:10]).all()


@settings(max_examples=25, deadline=None)
@given(
    site_index=st.integers(0, 25),
    rows=st.integers(1, 150),
    seed=st.integers(0, 2**63),
    chunk_rows=st.integers(1, 200),
)
def test_any_small_cohort_is_well_formed_and_reproducible(
    site_index: int, rows: int, seed: int, chunk_rows: int
) -> None:
    table = generate_site(site_index, rows, seed, chunk_rows=chunk_rows)
    assert table.schema == SCHEMA
    assert table.num_rows == rows
    assert table.equals(generate_site(site_index, rows, seed, chunk_rows=chunk_rows))
    df = table.to_pandas()
    assert df.patient_id.is_unique
    assert (df.discharge_date >= df.admission_date).all()
    assert set(df.sex) <= {"F", "M"}
    assert (df.event == (df.outcome == "died")).all()


# --- value domains ----------------------------------------------------------------------------------------


def test_values_stay_in_their_domains(federation: dict[str, pd.DataFrame]) -> None:
    df = pd.concat(federation.values(), ignore_index=True)
    assert set(df.sex) == {"F", "M"}
    assert set(df.smoking) == {"never", "former", "current"}
    assert set(df.outcome) == {"recovered", "readmitted", "died"}
    assert set(df.icd10) <= set(DIAGNOSIS_CODES)
    assert len(set(df.icd10)) >= 30
    assert (df.discharge_date >= df.admission_date).all()
    assert ages(df).between(17.99, 103.01).all()  # adults; birth dates are whole days
    assert df.bmi.between(15, 63).all()
    assert df.systolic_bp.between(80, 230).all()
    assert df.hba1c.dropna().between(4.0, 14.5).all()
    assert 0.03 < df.hba1c.isna().mean() < 0.25
    assert (df.survival_days >= 0).all()
    assert (df.event == (df.outcome == "died")).all()
    # A death during the stay ends the stay that day; survivors are followed at least through discharge.
    stay = (pd.to_datetime(df.discharge_date) - pd.to_datetime(df.admission_date)).dt.days
    assert (df.survival_days >= stay).all()
    assert (df.icd10[df.sex == "F"] != "C61").all()
    assert (df.icd10[df.sex == "M"] != "C50.9").all()


def test_patient_ids_are_site_mrns_unique_within_the_site(federation: dict[str, pd.DataFrame]) -> None:
    for site_id, df in federation.items():
        country = site_id.removeprefix("site-").upper()
        assert df.patient_id.str.fullmatch(rf"MRN-{country}-\d{{8}}").all()
        assert df.patient_id.is_unique


def test_postcodes_match_the_format_of_the_country_of_residence(federation: dict[str, pd.DataFrame]) -> None:
    df = pd.concat(federation.values(), ignore_index=True)
    for country, rows in df.groupby("country"):
        assert rows.postcode.str.fullmatch(POSTCODE[str(country)]).all(), country


def test_most_patients_live_in_the_site_country_a_few_abroad(federation: dict[str, pd.DataFrame]) -> None:
    for site_id, df in federation.items():
        home = site_id.removeprefix("site-").upper()
        abroad = (df.country != home).mean()
        assert 0.0 < abroad < 0.1, site_id
        assert df.country.str.fullmatch(r"[A-Z]{2}").all()


def test_names_are_given_and_family_names_of_the_residence_country(
    federation: dict[str, pd.DataFrame],
) -> None:
    for df in federation.values():
        for row in df.head(300).itertuples():
            names = names_for(str(row.country))
            given = names.female if row.sex == "F" else names.male
            assert any(row.name == f"{g} {f}" for g in given for f in names.family), (
                f"{row.name!r} is not a {row.sex} name from {row.country}"
            )


def test_consent_is_space_separated_valid_duo_curies(federation: dict[str, pd.DataFrame]) -> None:
    df = pd.concat(federation.values(), ignore_index=True)
    permissions = {"DUO:0000042", "DUO:0000006", "DUO:0000007"}
    for consent in df.consent_duo.unique():
        codes = consent.split(" ")
        assert " ".join(codes) == consent
        assert all(re.fullmatch(r"DUO:\d{7}", c) and c in DUO_TERMS for c in codes), consent
        assert codes[0] in permissions
    shares = df.consent_duo.value_counts(normalize=True)
    assert shares["DUO:0000042"] > 0.5
    assert set(shares.index) == set(CONSENTS)


def test_a_small_share_has_withdrawn_consent(federation: dict[str, pd.DataFrame]) -> None:
    for site_id, df in federation.items():
        assert 0.002 < df.consent_withdrawn.mean() < 0.035, site_id
    overall = pd.concat(federation.values()).consent_withdrawn.mean()
    assert 0.01 <= overall <= 0.02


# --- sites ------------------------------------------------------------------------------------------------


def test_sites_are_named_by_country_in_a_fixed_order() -> None:
    ids = [site_for_index(i).site_id for i in range(12)]
    assert ids[:10] == [f"site-{c.lower()}" for c in COUNTRY_ORDER]
    assert ids[10:] == ["site-de-2", "site-fr-2"]
    assert COUNTRY_ORDER[:5] == ("DE", "FR", "US", "JP", "IT")
    assert all(_SITE_ID.fullmatch(i) for i in ids)
    assert site_for_index(10).profile != site_for_index(0).profile


def test_rows_are_split_unevenly_and_completely() -> None:
    split = split_rows(10_000_000, 3)
    assert sum(split) == 10_000_000
    assert len(set(split)) == 3
    assert split_rows(10_000_000, 3) == split
    assert split_rows(5, 5) == [1, 1, 1, 1, 1]
    assert sum(split_rows(1_001, 12)) == 1_001


def test_sites_differ_in_case_mix(federation: dict[str, pd.DataFrame]) -> None:
    de, us, jp = federation["site-de"], federation["site-us"], federation["site-jp"]
    assert ages(jp).mean() > ages(us).mean() + 8
    assert us.icd10.isin(["E11.9", "E11.2", "E10.9"]).mean() > 1.3 * jp.icd10.isin(["E11.9", "E11.2"]).mean()
    assert (jp.icd10 == "C16.9").mean() > 3 * (de.icd10 == "C16.9").mean()
    assert (de.smoking == "current").mean() > (us.smoking == "current").mean() + 0.04
    assert us.bmi.mean() > jp.bmi.mean() + 4
    assert (de.consent_duo != "DUO:0000042").mean() > 1.5 * (us.consent_duo != "DUO:0000042").mean()


# --- realism ----------------------------------------------------------------------------------------------


def test_logistic_regression_of_event_finds_the_planted_risk_factors() -> None:
    df = generate_site(0, 30_000, 3).to_pandas().dropna(subset=["hba1c"])
    df["age"] = ages(df)
    df["died"] = df.event.astype(int)
    fit = smf.logit("died ~ age + C(sex) + C(smoking, Treatment('never')) + bmi + hba1c", data=df).fit(disp=0)
    for term in ("age", "C(sex)[T.M]", "C(smoking, Treatment('never'))[T.current]", "bmi", "hba1c"):
        assert fit.params[term] > 0, term
        assert fit.pvalues[term] < 1e-3, term


def test_survival_depends_on_age_and_diagnosis() -> None:
    df = generate_site(1, 20_000, 4).to_pandas()
    df["age"] = ages(df)
    df["cancer"] = df.icd10.str.startswith("C").astype(float)
    fit = PHReg.from_formula(
        "survival_days ~ age + cancer", data=df, status=df.event.astype(int).to_numpy()
    ).fit()
    assert fit.params[0] > 0.03  # age: roughly +0.055 log hazard per year was planted
    assert fit.params[1] > 0.5  # cancer
    assert max(fit.pvalues) < 1e-6


# --- files ------------------------------------------------------------------------------------------------


def test_csv_output_reads_back_to_the_same_table(tmp_path: Path) -> None:
    (cohort,) = write_cohorts(tmp_path, 1, 2_000, 8, fmt="csv")
    assert cohort.path == tmp_path / "site-de" / "patients.csv"
    options = pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=False)
    back = pacsv.read_csv(cohort.path, convert_options=options)
    assert back.cast(SCHEMA).equals(generate_site(0, 2_000, 8))


def test_cohorts_report_their_files_and_progress(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []

    def progress(site: Site, written: int, site_rows: int) -> None:
        seen.append((site.site_id, written, site_rows))

    cohorts = write_cohorts(tmp_path, 3, 7_000, 1, progress=progress, chunk_rows=1_000)
    assert [c.site_id for c in cohorts] == ["site-de", "site-fr", "site-us"]
    assert [c.country for c in cohorts] == ["DE", "FR", "US"]
    assert sum(c.rows for c in cohorts) == 7_000
    for c in cohorts:
        assert c.path == tmp_path / c.site_id / "patients.parquet"
        assert pq.ParquetFile(c.path).metadata.num_rows == c.rows == c.case_mix.rows
        site_reports = [w for s, w, _ in seen if s == c.site_id]
        assert site_reports == sorted(site_reports)
        assert site_reports[-1] == c.rows
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["site-de", "site-fr", "site-us"] + ["patients.parquet"] * 3
    )


def test_a_failed_run_leaves_the_previous_file_and_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cohort,) = write_cohorts(tmp_path, 1, 3_000, 2)
    before = cohort.path.read_bytes()

    def failing(site: Site, rows: int, seed: int, chunk_rows: int) -> Iterator[tuple[pa.Table, object]]:
        batches = site_batches(site, rows, seed, chunk_rows)
        yield next(batches)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth_writer, "site_batches", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_cohorts(tmp_path, 1, 3_000, 3, chunk_rows=1_000)
    assert cohort.path.read_bytes() == before
    assert [p.name for p in cohort.path.parent.iterdir()] == ["patients.parquet"]


@pytest.mark.parametrize(
    ("sites", "rows", "seed", "fmt", "argument"),
    [
        (0, 100, 1, "parquet", "sites"),
        (-2, 100, 1, "parquet", "sites"),
        (3, 0, 1, "parquet", "rows"),
        (3, -5, 1, "parquet", "rows"),
        (5, 4, 1, "parquet", "rows"),
        (1, 100, -1, "parquet", "seed"),
        (1, 100, 1, "xlsx", "format"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    tmp_path: Path, sites: int, rows: int, seed: int, fmt: str, argument: str
) -> None:
    with pytest.raises(InvalidSynthArgument) as caught:
        write_cohorts(tmp_path, sites, rows, seed, fmt)
    assert caught.value.argument == argument
    assert str(caught.value).startswith(argument)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "cohorts"
    target.write_text("not a folder")
    with pytest.raises(OutputNotWritable, match="not a folder") as caught:
        write_cohorts(target, 1, 10, 1)
    assert caught.value.path == target


def test_output_below_a_file_is_refused_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritable) as caught:
        write_cohorts(blocker / "cohorts", 1, 10, 1)
    assert caught.value.path == blocker / "cohorts" / "site-de"
    result = CliRunner().invoke(app, ["synth", "--out", str(blocker / "cohorts"), "--rows", "10"])
    assert result.exit_code == 1
    assert f"--out {blocker}/cohorts/site-de: " in result.stderr
    assert "Traceback" not in result.output


def test_generate_site_refuses_bad_arguments() -> None:
    for kwargs, argument in [
        ({"site_index": -1, "rows": 10, "seed": 1}, "site_index"),
        ({"site_index": 0, "rows": 0, "seed": 1}, "rows"),
        ({"site_index": 0, "rows": 10, "seed": -3}, "seed"),
    ]:
        with pytest.raises(InvalidSynthArgument) as caught:
            generate_site(**kwargs)
        assert caught.value.argument == argument


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_writes_cohorts_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "cohorts"
    result = CliRunner().invoke(
        app, ["synth", "--sites", "3", "--rows", "3000", "--seed", "42", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for site in ("site-de", "site-fr", "site-us"):
        assert site in result.stdout
        assert (out / site / "patients.parquet").is_file()
    assert "3,000 rows for 3 site(s)" in result.stdout
    assert f"{out}/<site>/patients.parquet" in result.stdout  # paths are never wrapped
    for header in ("rows", "women", "diabetes", "smokers", "deaths", "consent"):
        assert header in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()[:-1]) <= 80
    library = write_cohorts(tmp_path / "library", 3, 3_000, 42)
    assert (out / "site-us" / "patients.parquet").read_bytes() == library[2].path.read_bytes()


def test_cli_writes_csv_on_request(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", "--sites", "2", "--rows", "500", "--out", str(tmp_path), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv")) == [
        "site-de/patients.csv",
        "site-fr/patients.csv",
    ]
    header = (tmp_path / "site-de" / "patients.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.replace('"', "").split(",") == [name for name, _ in COLUMNS]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "0"], "--rows must be at least 1"),
        (["--rows", "-10"], "--rows must be at least 1"),
        (["--sites", "0"], "--sites must be between 1 and 1,000"),
        (["--sites", "5000", "--rows", "10000"], "--sites must be between 1 and 1,000"),
        (["--sites", "4", "--rows", "3"], "--rows must be at least the number of sites"),
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--format", "xml"], "Invalid value for '--format'"),
        (["--rows", "lots"], "Invalid value for '--rows'"),
    ],
)
def test_cli_bad_arguments_give_a_clear_error_and_no_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_cli_refuses_an_output_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "[b]file.txt"  # brackets must print as they are, not as rich markup
    target.write_text("x")
    result = CliRunner().invoke(app, ["synth", "--out", str(target), "--rows", "10"])
    assert result.exit_code == 1
    assert f"--out {target}: exists and is not a folder" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert target.read_text() == "x"
