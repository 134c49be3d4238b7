"""Generate one site's synthetic patients, vectorized, in fixed-size chunks that each have their own sub-seed.

The causal story, in drawing order: sex and age; smoking from sex and age; BMI from sex, age and smoking; the
primary diagnosis from all of these and the site's case mix; diabetes and HbA1c from diagnosis, BMI and age;
blood pressure; length of stay; survival from age, sex, smoking, BMI, HbA1c and diagnosis (Weibull
proportional hazards, censored at the end of follow-up or at loss to follow-up); the outcome from survival.

Chunk `k` of site `i` under seed `s` draws from `SeedSequence(s, spawn_key=(i, k))`, so a chunk's rows do not
depend on how many chunks came before it or on which process makes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from gateway.synth.identifiers import MRN_DIGITS, MRN_SPACE, MrnPermutation
from gateway.synth.names import names_for
from gateway.synth.places import NEIGHBOURS, postcodes
from gateway.synth.sites import Site, SiteProfile
from gateway.synth.strings import pick, zero_padded
from gateway.synth.vocab import (
    CONSENT_WEIGHTS,
    CONSENTS,
    DIAGNOSES,
    DIAGNOSIS_CODES,
    OUTCOMES,
    SEXES,
    SMOKING,
)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

SCHEMA = pa.schema(
    [
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("birth_date", pa.date32(), nullable=False),
        pa.field("sex", pa.string(), nullable=False),
        pa.field("postcode", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("admission_date", pa.date32(), nullable=False),
        pa.field("discharge_date", pa.date32(), nullable=False),
        pa.field("icd10", pa.string(), nullable=False),
        pa.field("hba1c", pa.float64()),
        pa.field("bmi", pa.float64(), nullable=False),
        pa.field("systolic_bp", pa.int32(), nullable=False),
        pa.field("smoking", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("survival_days", pa.int32(), nullable=False),
        pa.field("event", pa.bool_(), nullable=False),
        pa.field("consent_duo", pa.string(), nullable=False),
        pa.field("consent_withdrawn", pa.bool_(), nullable=False),
    ]
)

CHUNK_ROWS = 1_000_000
MAX_SITE_ROWS = MRN_SPACE

_EPOCH = date(1970, 1, 1)
FIRST_ADMISSION = date(2015, 1, 1)
LAST_ADMISSION = date(2024, 12, 31)
FOLLOW_UP_END = date(2025, 12, 31)

# Baseline survival: a 65-year-old never-smoking woman with an average diagnosis dies within five years
# with probability ~6%; the Weibull shape below 1 puts more deaths early after admission.
_WEIBULL_SHAPE = 0.8
_FIVE_YEAR_DEATH = 0.06
_WEIBULL_SCALE = 5 * 365.25 / (-np.log(1 - _FIVE_YEAR_DEATH)) ** (1 / _WEIBULL_SHAPE)
_LOST_TO_FOLLOW_UP_MEAN_DAYS = 15 * 365.25

_AGE_BANDS = 7  # <40, 40s, 50s, 60s, 70s, 80s, 90+
_DX_HAZARD = np.array([d.hazard for d in DIAGNOSES])
_DX_STAY = np.array([d.stay_days for d in DIAGNOSES])
_DX_READMIT = np.array([d.readmit for d in DIAGNOSES])
_DX_DIABETES = np.array([d.group == "diabetes" for d in DIAGNOSES])
_DX_HYPERTENSION = np.array([d.code == "I10" for d in DIAGNOSES])


def _day(d: date) -> int:
    return (d - _EPOCH).days


def _sigmoid(x: Floats) -> Floats:
    result: Floats = 1.0 / (1.0 + np.exp(-x))
    return result


@dataclass
class CaseMix:
    """Running counts over a site's generated rows, for the summary a steward sees after `fedgate synth`."""

    rows: int = 0
    female: int = 0
    age_sum: float = 0.0
    diabetes: int = 0
    current_smokers: int = 0
    deaths: int = 0
    withdrawn: int = 0
    narrow_consent: int = 0

    def add(self, other: CaseMix) -> None:
        """Fold another chunk's counts into these."""
        self.rows += other.rows
        self.female += other.female
        self.age_sum += other.age_sum
        self.diabetes += other.diabetes
        self.current_smokers += other.current_smokers
        self.deaths += other.deaths
        self.withdrawn += other.withdrawn
        self.narrow_consent += other.narrow_consent

    def share(self, count: int) -> float:
        """`count` as a share of the rows (0 when there are none)."""
        return count / self.rows if self.rows else 0.0

    @property
    def mean_age(self) -> float:
        """Mean age at admission in years."""
        return self.age_sum / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class SiteModel:
    """Everything about a site that does not change between its chunks, computed once."""

    site: Site
    diagnosis_cdf: Floats  # (strata, diagnoses) cumulative probabilities
    consent_cdf: Floats
    mrn: MrnPermutation

    @classmethod
    def build(cls, site: Site, seed: int) -> SiteModel:
        """Precompute the site's diagnosis and consent distributions and its MRN permutation."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(site.index,))))
        return cls(
            site=site,
            diagnosis_cdf=_diagnosis_cdf(site.profile),
            consent_cdf=_consent_cdf(site.profile),
            mrn=MrnPermutation.from_rng(rng),
        )


def _diagnosis_cdf(profile: SiteProfile) -> Floats:
    """P(diagnosis | age band, sex, smoking, obesity) for every stratum, as cumulative rows."""
    base = np.log([d.weight * profile.mix(d.group, d.code) for d in DIAGNOSES])
    per_decade = np.array([d.per_decade for d in DIAGNOSES])
    male = np.array([d.male for d in DIAGNOSES])
    smoker = np.array([d.smoker for d in DIAGNOSES])
    obese = np.array([d.obese for d in DIAGNOSES])
    only_f = np.array([d.only == "F" for d in DIAGNOSES])
    only_m = np.array([d.only == "M" for d in DIAGNOSES])
    band_mid = np.array([32.0, 45.0, 55.0, 65.0, 75.0, 85.0, 93.0])
    rows = []
    for band in range(_AGE_BANDS):
        for is_male in (0, 1):
            for smoke in range(len(SMOKING)):
                for is_obese in (0, 1):
                    logit = (
                        base
                        + per_decade * (band_mid[band] - 60.0) / 10.0
                        + male * is_male
                        + smoker * (0.0, 0.5, 1.0)[smoke]
                        + obese * is_obese
                    )
                    logit = np.where(only_f if is_male else only_m, -np.inf, logit)
                    p = np.exp(logit - logit.max())
                    rows.append(np.cumsum(p / p.sum()))
    return np.array(rows)


def _stratum(age: Floats, male: Bools, smoking: Ints, bmi: Floats) -> Ints:
    band = np.clip((age - 30.0) // 10.0, 0, _AGE_BANDS - 1).astype(np.int64)
    stratum: Ints = ((band * 2 + male) * len(SMOKING) + smoking) * 2 + (bmi >= 30.0)
    return stratum


def _consent_cdf(profile: SiteProfile) -> Floats:
    weights = np.array(CONSENT_WEIGHTS)
    weights[1:] *= profile.narrow_consent
    cdf: Floats = np.cumsum(weights / weights.sum())
    return cdf


def _draw_categories(cdf: Floats, u: Floats) -> Ints:
    """Index of the category whose cumulative interval holds each uniform draw."""
    index: Ints = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    return index


def _draw_diagnoses(model: SiteModel, strata: Ints, u: Floats) -> Ints:
    """Sample each row's diagnosis from its stratum's distribution, one vectorized search per stratum."""
    order = np.argsort(strata, kind="stable")
    bounds = np.searchsorted(strata[order], np.arange(len(model.diagnosis_cdf) + 1))
    dx = np.empty(len(strata), dtype=np.int64)
    for s in range(len(model.diagnosis_cdf)):
        rows = order[bounds[s] : bounds[s + 1]]
        if len(rows):
            dx[rows] = _draw_categories(model.diagnosis_cdf[s], u[rows])
    return dx


def _residence(
    rng: np.random.Generator, site: Site, n: int, male: Bools
) -> tuple[pa.StringArray, pa.StringArray, pa.StringArray]:
    """Country of residence, postcode and name for each row: mostly the site's own country."""
    profile = site.profile
    countries = (site.country, *NEIGHBOURS[site.country])
    foreign = rng.random(n) < profile.foreign_share
    where = np.where(foreign, rng.integers(1, len(countries), size=n), 0)
    order = np.argsort(where, kind="stable")
    bounds = np.searchsorted(where[order], np.arange(len(countries) + 1))
    codes, names = [], []
    for k, country in enumerate(countries):
        rows = order[bounds[k] : bounds[k + 1]]
        share = profile.catchment_share if k == 0 else 0.0
        codes.append(postcodes(rng, country, len(rows), share))
        names.append(_names(rng, country, male[rows]))
    # The per-country pieces come out grouped by country; put them back in row order.
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    take = pa.array(back)
    country_col = pick(countries, where)
    postcode_col = pa.concat_arrays(codes).take(take)
    name_col = pa.concat_arrays(names).take(take)
    return country_col, postcode_col, name_col


@cache
def _full_names(country: str) -> tuple[tuple[str, ...], int, int]:
    """Every "Given Family" of a country, women first; plus the family-name count and the women's count."""
    names = names_for(country)
    women = tuple(f"{g} {f}" for g in names.female for f in names.family)
    men = tuple(f"{g} {f}" for g in names.male for f in names.family)
    return women + men, len(names.family), len(women)


def _names(rng: np.random.Generator, country: str, male: Bools) -> pa.StringArray:
    full, n_family, n_women = _full_names(country)
    n_given = np.where(male, (len(full) - n_women) // n_family, n_women // n_family)
    given = (rng.random(len(male)) * n_given).astype(np.int64)
    family = rng.integers(0, n_family, size=len(male))
    return pick(full, given * n_family + family + np.where(male, n_women, 0))


def _dates(days: Ints) -> pa.Array:
    return pa.array(days.astype(np.int32), type=pa.date32())


def generate_chunk(
    model: SiteModel, seed: int, chunk_index: int, start_row: int, rows: int
) -> tuple[pa.Table, CaseMix]:
    """Rows `start_row` .. `start_row + rows - 1` of the site, as chunk `chunk_index`, with their counts."""
    site, profile = model.site, model.site.profile
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(site.index, chunk_index)))
    )
    n = rows

    male: Bools = rng.random(n) >= profile.female_share
    young = rng.random(n) < profile.young_share
    age = np.where(young, rng.normal(38.0, 11.0, n), rng.normal(profile.age_mean, profile.age_sd, n))
    age = np.clip(age, 18.0, 103.0)
    decade = (age - 60.0) / 10.0

    # Smoking: multinomial logit against "never"; men smoke more, the young currently, the old formerly.
    p_never = 1.0 - profile.current_smokers - profile.former_smokers
    current = np.exp(np.log(profile.current_smokers / p_never) + 0.35 * male - 0.25 * (age - 50.0) / 10.0)
    former = np.exp(np.log(profile.former_smokers / p_never) + 0.3 * male + 0.2 * (age - 50.0) / 10.0)
    total = 1.0 + current + former
    u = rng.random(n)
    smoking: Ints = (u >= 1.0 / total).astype(np.int64) + (u >= (1.0 + former) / total)
    is_current = smoking == 2

    bmi = profile.bmi_mean + 0.6 * male + 0.8 * decade - 0.35 * decade**2 - 0.6 * is_current
    bmi = np.round(np.clip(bmi + rng.normal(0.0, 4.8, n), 15.5, 62.0), 1)

    dx = _draw_diagnoses(model, _stratum(age, male, smoking, bmi), rng.random(n))

    comorbid = _sigmoid(-3.0 + 0.12 * (bmi - 27.0) + 0.3 * decade + profile.diabetes_shift)
    diabetic = _DX_DIABETES[dx] | (rng.random(n) < comorbid)
    hba1c = np.where(
        diabetic,
        rng.normal(7.6, 1.3, n),
        rng.normal(5.3, 0.35, n) + 0.01 * (age - 50.0) + 0.02 * (bmi - 27.0),
    )
    hba1c = np.round(np.clip(hba1c, 4.0, 14.5), 1)
    # Diabetics' HbA1c is measured far more often than other patients'.
    hba1c_missing = rng.random(n) < np.where(diabetic, 0.3, 1.0) * profile.hba1c_missing

    sbp = 112.0 + 0.45 * (age - 50.0) + 0.9 * (bmi - 27.0) + 15.0 * _DX_HYPERTENSION[dx] + 4.0 * male
    sbp = np.clip(np.round(sbp + profile.sbp_offset + rng.normal(0.0, 13.0, n)), 80, 230).astype(np.int32)

    admission = rng.integers(_day(FIRST_ADMISSION), _day(LAST_ADMISSION) + 1, size=n)
    birth = admission - np.floor(age * 365.2425).astype(np.int64)
    stay = _DX_STAY[dx] * np.exp(0.1 * decade + rng.normal(0.0, 0.6, n))
    stay_days = np.clip(np.floor(stay), 0, 120).astype(np.int64)

    hazard = (
        _DX_HAZARD[dx]
        + 0.055 * (age - 65.0)
        + 0.35 * male
        + np.array([0.0, 0.2, 0.55])[smoking]
        + 0.025 * (bmi - 27.0)
        + 0.15 * (hba1c - 5.7)
        + profile.mortality_shift
    )
    death = _WEIBULL_SCALE * (rng.exponential(1.0, n) / np.exp(hazard)) ** (1.0 / _WEIBULL_SHAPE)
    lost = rng.exponential(_LOST_TO_FOLLOW_UP_MEAN_DAYS, n)
    # Nobody is lost before discharge: follow-up starts at admission and the stay itself is observed.
    censor = np.maximum(np.minimum(_day(FOLLOW_UP_END) - admission, lost), stay_days)
    event: Bools = death <= censor
    survival = np.floor(np.where(event, death, censor)).astype(np.int64)
    # A patient who dies during the stay is discharged deceased on the day of death.
    discharge = admission + np.where(event, np.minimum(stay_days, survival), stay_days)

    readmit = _sigmoid(-2.2 + _DX_READMIT[dx] + 0.15 * decade + 0.4 * diabetic + profile.readmit_shift)
    outcome = np.where(event, 2, (rng.random(n) < readmit).astype(np.int64))

    consent = _draw_categories(model.consent_cdf, rng.random(n))
    withdrawn: Bools = rng.random(n) < profile.withdrawn_share

    country_col, postcode_col, name_col = _residence(rng, site, n, male)
    row_numbers = np.arange(start_row, start_row + n, dtype=np.int64)
    mrn = model.mrn(row_numbers)

    table = pa.Table.from_arrays(
        [
            zero_padded(f"MRN-{site.country}-", mrn, MRN_DIGITS),
            name_col,
            _dates(birth),
            pick(SEXES, male.astype(np.int64)),
            postcode_col,
            country_col,
            _dates(admission),
            _dates(discharge),
            pick(DIAGNOSIS_CODES, dx),
            pa.array(hba1c, mask=hba1c_missing, type=pa.float64()),
            pa.array(bmi, type=pa.float64()),
            pa.array(sbp, type=pa.int32()),
            pick(SMOKING, smoking),
            pick(OUTCOMES, outcome),
            pa.array(survival.astype(np.int32), type=pa.int32()),
            pa.array(event, type=pa.bool_()),
            pick(CONSENTS, consent),
            pa.array(withdrawn, type=pa.bool_()),
        ],
        schema=SCHEMA,
    )
    counts = CaseMix(
        rows=n,
        female=int(n - male.sum()),
        age_sum=float(age.sum()),
        diabetes=int(_DX_DIABETES[dx].sum()),
        current_smokers=int(is_current.sum()),
        deaths=int(event.sum()),
        withdrawn=int(withdrawn.sum()),
        narrow_consent=int((consent != 0).sum()),
    )
    return table, counts


def chunk_sizes(rows: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, int, int]]:
    """(chunk index, first row, row count) for each chunk of a site with `rows` rows."""
    for index, start in enumerate(range(0, rows, chunk_rows)):
        yield index, start, min(chunk_rows, rows - start)


def site_batches(
    site: Site, rows: int, seed: int, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[pa.Table, CaseMix]]:
    """A site's rows as consecutive chunks, each with its counts; together they are the whole cohort."""
    model = SiteModel.build(site, seed)
    for index, start, count in chunk_sizes(rows, chunk_rows):
        yield generate_chunk(model, seed, index, start, count)
