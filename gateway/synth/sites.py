"""The synthetic sites: which country each is in, how big it is and what its case mix looks like."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from gateway.synth.vocab import GROUPS

# Site countries in the order sites are handed out; the eleventh site is the second German one, and so on.
COUNTRY_ORDER: tuple[str, ...] = ("DE", "FR", "US", "JP", "IT", "ES", "NL", "GB", "CA", "AU")


@dataclass(frozen=True)
class SiteProfile:
    """What makes one site's patients different from another's.

    Probabilities are shares of the site's patients; `group_mix` and `code_mix` multiply the base
    prevalence of diagnosis groups and single ICD-10 codes; `*_shift` move a log-odds or log-hazard.
    """

    country: str
    size: float
    female_share: float
    age_mean: float
    age_sd: float
    young_share: float
    current_smokers: float
    former_smokers: float
    bmi_mean: float
    foreign_share: float = 0.03
    catchment_share: float = 0.85
    hba1c_missing: float = 0.12
    withdrawn_share: float = 0.015
    narrow_consent: float = 1.0
    diabetes_shift: float = 0.0
    mortality_shift: float = 0.0
    readmit_shift: float = 0.0
    sbp_offset: float = 0.0
    group_mix: dict[str, float] = field(default_factory=dict)
    code_mix: dict[str, float] = field(default_factory=dict)

    def mix(self, group: str, code: str) -> float:
        """The factor this site applies to the base prevalence of `code` (in `group`)."""
        return self.group_mix.get(group, 1.0) * self.code_mix.get(code, 1.0)


# Positional: country, size, female_share, age_mean, age_sd, young_share, current_smokers, former_smokers,
# bmi_mean. Kept one site per block rather than one argument per line.
# fmt: off
PROFILES: dict[str, SiteProfile] = {
    "DE": SiteProfile(
        "DE", 1.6, 0.49, 64, 16, 0.15, 0.22, 0.27, 27.2,
        narrow_consent=1.6, withdrawn_share=0.018, group_mix={"cardio": 1.3}, code_mix={"I25.1": 1.3},
    ),
    "FR": SiteProfile(
        "FR", 1.0, 0.51, 61, 17, 0.18, 0.25, 0.22, 25.6,
        narrow_consent=1.8, withdrawn_share=0.02, hba1c_missing=0.18, group_mix={"cancer": 1.3},
    ),
    "US": SiteProfile(
        "US", 2.2, 0.52, 58, 18, 0.22, 0.13, 0.24, 30.0, foreign_share=0.02, diabetes_shift=0.5,
        narrow_consent=0.7, withdrawn_share=0.01, mortality_shift=0.1, readmit_shift=0.3, sbp_offset=2,
        group_mix={"diabetes": 1.6}, code_mix={"E66.9": 2.5, "K35.8": 0.8},
    ),
    "JP": SiteProfile(
        "JP", 1.3, 0.47, 70, 14, 0.08, 0.18, 0.22, 23.1, foreign_share=0.01, catchment_share=0.9,
        hba1c_missing=0.06, withdrawn_share=0.008, diabetes_shift=-0.2, mortality_shift=-0.3,
        readmit_shift=-0.2, sbp_offset=3, group_mix={"neuro": 1.5, "cardio": 0.8},
        code_mix={"C16.9": 5.0, "E66.9": 0.2, "I63.9": 1.4},
    ),
    "IT": SiteProfile(
        "IT", 0.8, 0.5, 66, 16, 0.12, 0.2, 0.24, 26.0, hba1c_missing=0.2, narrow_consent=1.3,
        mortality_shift=-0.1, code_mix={"S72.0": 1.4, "G30.9": 1.3},
    ),
    "ES": SiteProfile(
        "ES", 0.9, 0.51, 63, 17, 0.16, 0.22, 0.23, 26.8, narrow_consent=1.2,
        group_mix={"infection": 1.3}, code_mix={"U07.1": 1.5},
    ),
    "NL": SiteProfile(
        "NL", 0.6, 0.5, 62, 16, 0.17, 0.19, 0.29, 26.0, foreign_share=0.05, withdrawn_share=0.012,
        group_mix={"respiratory": 1.3},
    ),
    "GB": SiteProfile(
        "GB", 1.4, 0.51, 60, 18, 0.2, 0.14, 0.27, 27.8, narrow_consent=0.9, readmit_shift=0.2,
        group_mix={"respiratory": 1.2, "neuro": 1.1}, code_mix={"F32.9": 1.4},
    ),
    "CA": SiteProfile(
        "CA", 0.7, 0.51, 59, 18, 0.21, 0.12, 0.26, 27.5, narrow_consent=0.8, mortality_shift=-0.1,
        code_mix={"M17.9": 1.3},
    ),
    "AU": SiteProfile(
        "AU", 0.5, 0.5, 60, 17, 0.2, 0.11, 0.28, 27.9, foreign_share=0.04, withdrawn_share=0.01,
        group_mix={"cancer": 1.2}, code_mix={"C43.9": 3.0},
    ),
}
# fmt: on


@dataclass(frozen=True)
class Site:
    """One site of a synthetic federation: its position, id, country and case-mix profile."""

    index: int
    site_id: str
    country: str
    profile: SiteProfile


def site_for_index(index: int) -> Site:
    """The site at position `index` (0-based): site-de, site-fr, …, then site-de-2 after the tenth."""
    if index < 0:
        raise ValueError(f"site index must be >= 0, got {index}")
    country = COUNTRY_ORDER[index % len(COUNTRY_ORDER)]
    round_ = index // len(COUNTRY_ORDER)
    site_id = f"site-{country.lower()}" + (f"-{round_ + 1}" if round_ else "")
    profile = PROFILES[country]
    if round_:
        profile = _second_hospital(profile, index, round_)
    return Site(index=index, site_id=site_id, country=country, profile=profile)


def _second_hospital(base: SiteProfile, index: int, round_: int) -> SiteProfile:
    """Another hospital in the same country: same population, a visibly different case mix.

    The variation is fixed per site index (not per seed) so a site keeps its character across seeds.
    """
    rng = np.random.default_rng(np.random.SeedSequence(20_240_601, spawn_key=(index,)))
    group_mix = {g: base.group_mix.get(g, 1.0) * float(np.exp(rng.normal(0.0, 0.3))) for g in GROUPS}
    return replace(
        base,
        size=base.size * 0.8**round_ * float(np.exp(rng.normal(0.0, 0.2))),
        age_mean=base.age_mean + float(rng.normal(0.0, 3.0)),
        current_smokers=float(np.clip(base.current_smokers * np.exp(rng.normal(0.0, 0.2)), 0.05, 0.4)),
        bmi_mean=base.bmi_mean + float(rng.normal(0.0, 0.8)),
        mortality_shift=base.mortality_shift + float(rng.normal(0.0, 0.15)),
        group_mix=group_mix,
    )


def split_rows(total: int, sites: int) -> list[int]:
    """Split `total` rows over `sites` sites by their size: uneven, deterministic, every site >= 1 row."""
    if sites < 1 or total < sites:
        raise ValueError(f"cannot split {total} rows over {sites} sites")
    weights = np.array([site_for_index(i).profile.size for i in range(sites)])
    spare = total - sites
    shares = spare * weights / weights.sum()
    counts = np.floor(shares).astype(np.int64)
    # Largest remainders get the rows that flooring left over, ties to the earlier site.
    leftover = spare - int(counts.sum())
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[:leftover]] += 1
    return [int(c) + 1 for c in counts]
