"""Clinical vocabularies of the synthetic cohorts: ICD-10 primary diagnoses and their risks, DUO consents.

The effect sizes are rough, literature-shaped numbers chosen so that analyses on the synthetic data behave
like analyses on real cohorts (smokers get more COPD, old age more heart failure, cancer shortens survival);
they are not estimates of anything.
"""

from __future__ import annotations

from dataclasses import dataclass

# GA4GH Data Use Ontology terms a patient's consent may carry (CURIE -> label).
DUO_TERMS: dict[str, str] = {
    "DUO:0000042": "general research use",
    "DUO:0000006": "health or medical or biomedical research",
    "DUO:0000007": "disease specific research",
    "DUO:0000046": "non-commercial use only",
    "DUO:0000045": "not for profit organisation use only",
    "DUO:0000021": "ethics approval required",
    "DUO:0000019": "publication required",
}

GENERAL_RESEARCH_USE = "DUO:0000042"

# The consents patients give, one DUO permission first and then its modifiers, space-separated.
# A disease-specific consent (DUO:0000007) covers research on the patient's own primary diagnosis.
CONSENTS: tuple[str, ...] = (
    "DUO:0000042",
    "DUO:0000006",
    "DUO:0000007",
    "DUO:0000042 DUO:0000046",
    "DUO:0000006 DUO:0000046",
    "DUO:0000006 DUO:0000021",
    "DUO:0000007 DUO:0000021",
    "DUO:0000042 DUO:0000019",
    "DUO:0000006 DUO:0000045 DUO:0000021",
)
# How often each consent above is given where consent is typically broad; sites scale the narrow ones.
CONSENT_WEIGHTS: tuple[float, ...] = (0.76, 0.09, 0.035, 0.04, 0.02, 0.03, 0.01, 0.01, 0.005)


@dataclass(frozen=True)
class Diagnosis:
    """One primary diagnosis and how it depends on the patient and drives outcomes.

    Effects are on the log-odds of being this patient's diagnosis (`per_decade` per 10 years of age from 60,
    `male`, `smoker` for a current smoker (half for a former one), `obese` for BMI >= 30); `only` restricts a
    diagnosis to one sex. `hazard` is the log hazard ratio of death, `stay_days` the median length of stay,
    `readmit` the log-odds shift of readmission.
    """

    code: str
    group: str
    weight: float
    per_decade: float = 0.0
    male: float = 0.0
    smoker: float = 0.0
    obese: float = 0.0
    only: str | None = None
    hazard: float = 0.0
    stay_days: float = 4.0
    readmit: float = 0.0


DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis("E11.9", "diabetes", 6.0, 0.2, 0.2, 0.1, 1.0, hazard=0.3, stay_days=4, readmit=0.3),
    Diagnosis("E11.2", "diabetes", 1.5, 0.4, 0.3, 0.2, 0.9, hazard=0.7, stay_days=6, readmit=0.5),
    Diagnosis("E10.9", "diabetes", 1.0, -0.4, 0.1, hazard=0.3, stay_days=3, readmit=0.3),
    Diagnosis("I10", "cardio", 7.0, 0.3, 0.1, 0.2, 0.6, hazard=0.1, stay_days=2),
    Diagnosis("I25.1", "cardio", 4.0, 0.4, 0.7, 0.6, 0.3, hazard=0.5, stay_days=4, readmit=0.2),
    Diagnosis("I21.9", "cardio", 3.0, 0.3, 0.7, 0.8, 0.3, hazard=1.0, stay_days=6, readmit=0.4),
    Diagnosis("I20.9", "cardio", 2.0, 0.3, 0.5, 0.5, 0.3, hazard=0.3, stay_days=3, readmit=0.2),
    Diagnosis("I50.9", "cardio", 3.5, 0.7, 0.2, 0.3, 0.5, hazard=1.1, stay_days=8, readmit=0.8),
    Diagnosis("I48.9", "cardio", 3.0, 0.6, 0.3, 0.1, 0.3, hazard=0.4, stay_days=4, readmit=0.3),
    Diagnosis("I63.9", "neuro", 3.0, 0.6, 0.2, 0.4, 0.1, hazard=1.0, stay_days=10, readmit=0.3),
    Diagnosis("J44.9", "respiratory", 3.5, 0.4, 0.3, 1.6, hazard=0.8, stay_days=7, readmit=0.7),
    Diagnosis("J45.9", "respiratory", 2.0, -0.3, -0.2, 0.3, 0.3, hazard=-0.5, stay_days=3, readmit=0.2),
    Diagnosis("J18.9", "infection", 4.0, 0.4, 0.2, 0.4, hazard=0.9, stay_days=7, readmit=0.3),
    Diagnosis("U07.1", "infection", 2.0, 0.3, 0.3, 0.1, 0.4, hazard=0.8, stay_days=8),
    Diagnosis("A41.9", "infection", 1.5, 0.5, 0.2, 0.2, hazard=1.6, stay_days=12, readmit=0.4),
    Diagnosis("N39.0", "infection", 2.5, 0.3, -0.8, hazard=0.3, stay_days=4),
    Diagnosis("N18.3", "other", 2.0, 0.6, 0.2, 0.2, 0.4, hazard=0.7, stay_days=5, readmit=0.5),
    Diagnosis("C50.9", "cancer", 2.5, 0.1, only="F", hazard=1.0, stay_days=5, readmit=0.4),
    Diagnosis("C34.9", "cancer", 2.0, 0.3, 0.4, 2.0, hazard=2.0, stay_days=9, readmit=0.6),
    Diagnosis("C18.9", "cancer", 1.8, 0.4, 0.2, 0.3, 0.3, hazard=1.3, stay_days=9, readmit=0.5),
    Diagnosis("C61", "cancer", 2.0, 0.6, only="M", hazard=0.7, stay_days=4, readmit=0.2),
    Diagnosis("C43.9", "cancer", 0.8, 0.3, 0.3, hazard=0.8, stay_days=3, readmit=0.2),
    Diagnosis("C16.9", "cancer", 0.8, 0.4, 0.5, 0.5, hazard=1.6, stay_days=12, readmit=0.6),
    Diagnosis("C25.9", "cancer", 0.7, 0.5, 0.1, 0.5, 0.2, hazard=2.5, stay_days=10, readmit=0.6),
    Diagnosis("G30.9", "neuro", 1.5, 1.2, -0.2, hazard=1.2, stay_days=10),
    Diagnosis("F32.9", "other", 2.0, -0.4, -0.5, 0.3, hazard=-0.2, stay_days=14, readmit=0.4),
    Diagnosis("S72.0", "other", 2.5, 1.0, -0.6, 0.2, -0.3, hazard=0.9, stay_days=11),
    Diagnosis("M17.9", "other", 3.0, 0.4, -0.2, obese=0.8, hazard=-0.6, stay_days=5, readmit=-0.3),
    Diagnosis("K35.8", "other", 2.0, -0.8, 0.1, hazard=-1.5, stay_days=3, readmit=-0.5),
    Diagnosis("K80.2", "other", 2.5, 0.0, -0.6, obese=0.7, hazard=-1.0, stay_days=3, readmit=-0.3),
    Diagnosis("K29.7", "other", 1.5, 0.0, 0.1, 0.4, hazard=-0.8, stay_days=3),
    Diagnosis("D50.9", "other", 1.2, 0.0, -0.7, hazard=0.0, stay_days=3),
    Diagnosis("E66.9", "other", 1.5, -0.3, -0.1, obese=3.0, hazard=0.0, stay_days=3),
    Diagnosis("E78.5", "cardio", 1.5, 0.2, 0.2, 0.2, 0.4, hazard=0.0, stay_days=2),
)

DIAGNOSIS_CODES: tuple[str, ...] = tuple(d.code for d in DIAGNOSES)
DIABETES_CODES: frozenset[str] = frozenset(d.code for d in DIAGNOSES if d.group == "diabetes")
GROUPS: tuple[str, ...] = ("diabetes", "cardio", "respiratory", "infection", "cancer", "neuro", "other")

SEXES: tuple[str, str] = ("F", "M")
SMOKING: tuple[str, str, str] = ("never", "former", "current")
OUTCOMES: tuple[str, str, str] = ("recovered", "readmitted", "died")
