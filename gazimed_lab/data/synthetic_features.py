"""The table of the 118 synthetic clinical features (names, units, how they are drawn).

Each feature is ``loc + scale * z`` (``kind="linear"``), ``loc * exp(scale * z)``
(``"log"``, ``loc`` is the median) or ``z > threshold`` with prevalence ``loc``
(``"binary"``), where ``z`` is a unit-variance mix of standardized drivers
(``clin``: the clinical view of ``s``; ``mri``: the MRI view; ``age``; ``sex``: +1 male,
-1 female; ``edu``: education) plus independent noise. Values are clipped to
``[lo, hi]`` and rounded to ``step`` (or ``decimals``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FEATURES", "Feature", "feature_names", "relation_text"]

_INF = float("inf")


@dataclass(frozen=True)
class Feature:
    """How one clinical feature is drawn and described."""

    name: str
    unit: str
    meaning: str
    loc: float = 0.0
    scale: float = 1.0
    clin: float = 0.0
    mri: float = 0.0
    age: float = 0.0
    sex: float = 0.0
    edu: float = 0.0
    lo: float = -_INF
    hi: float = _INF
    decimals: int = 2
    step: float = 0.0
    missing: float = 0.0
    group: str = ""
    missing_bias: float = 0.0
    kind: str = "linear"


F = Feature

_DEMOGRAPHIC = [
    F("age", "years", "age at the scan", kind="given", decimals=1),
    F("sex_male", "0/1", "1 = male, 0 = female", kind="given", decimals=0),
    F("education_years", "years", "years of formal education", kind="given", decimals=0),
    F("apoe4_count", "alleles", "number of APOE e4 alleles (0, 1, 2)", kind="apoe", decimals=0),
    F("family_history_ad", "0/1", "first-degree relative with dementia", 0.35, clin=0.15,
      kind="binary", decimals=0),
    F("bmi", "kg/m2", "body-mass index", 26.5, 4.0, clin=-0.1, lo=16, hi=45, decimals=1),
    F("handedness_right", "0/1", "right-handed", 0.9, kind="binary", decimals=0),
    F("hypertension", "0/1", "diagnosed hypertension", 0.45, age=0.3, kind="binary",
      decimals=0),
    F("diabetes", "0/1", "diagnosed type 2 diabetes", 0.15, age=0.15, kind="binary",
      decimals=0),
    F("smoking_pack_years", "pack-years", "lifetime smoking", 4.0, 0.9, sex=0.2, kind="log",
      hi=120, decimals=1),
]

# Cognitive and functional scales: the clinical view of s drives them (sign = direction).
_COGNITIVE = [
    F("mmse", "points", "Mini-Mental State Examination (0-30, lower = worse)", 26.8, 3.0,
      clin=-0.62, edu=0.15, lo=0, hi=30, decimals=0),
    F("moca", "points", "Montreal Cognitive Assessment (0-30)", 22.5, 3.8, clin=-0.58,
      edu=0.2, lo=0, hi=30, decimals=0, missing=0.08),
    F("cdr_sb", "points", "CDR sum of boxes (0-18, higher = worse)", 2.3, 2.1, clin=0.62,
      lo=0, hi=18, decimals=1, step=0.5),
    F("cdr_global", "points", "global CDR (0, 0.5, 1, 2, 3)", 0.55, 0.45, clin=0.55, lo=0,
      hi=3, decimals=1, step=0.5),
    F("adas_cog11", "points", "ADAS-Cog 11-item (0-70, higher = worse)", 12.0, 6.5,
      clin=0.58, age=0.1, lo=0, hi=70, decimals=2, step=0.33),
    F("adas_cog13", "points", "ADAS-Cog 13-item (0-85)", 18.5, 9.0, clin=0.6, age=0.1, lo=0,
      hi=85, decimals=2, step=0.33),
    F("adas_delayed_recall", "words", "ADAS-Cog Q4 delayed word recall errors (0-10)", 5.0,
      2.6, clin=0.55, lo=0, hi=10, decimals=0),
    F("ravlt_immediate", "words", "RAVLT immediate recall, sum of trials 1-5 (0-75)", 34.0,
      11.0, clin=-0.55, age=-0.15, sex=-0.1, lo=0, hi=75, decimals=0, missing=0.06,
      group="ravlt"),
    F("ravlt_learning", "words", "RAVLT learning (trial 5 - trial 1)", 4.2, 2.5, clin=-0.45,
      lo=-5, hi=15, decimals=0, missing=0.06, group="ravlt"),
    F("ravlt_forgetting", "words", "RAVLT forgetting (trial 5 - delayed)", 4.3, 2.4,
      clin=0.3, lo=-5, hi=15, decimals=0, missing=0.06, group="ravlt"),
    F("ravlt_perc_forgetting", "%", "RAVLT percent forgetting", 55.0, 30.0, clin=0.5, lo=0,
      hi=100, decimals=1, missing=0.06, group="ravlt"),
    F("logical_memory_delayed", "points", "WMS logical memory II delayed recall (0-25)", 8.0,
      5.0, clin=-0.55, edu=0.1, lo=0, hi=25, decimals=0, missing=0.07),
    F("digit_symbol", "points", "digit symbol substitution (0-100)", 38.0, 11.0, clin=-0.4,
      age=-0.3, edu=0.15, lo=0, hi=100, decimals=0, missing=0.1),
    F("trail_making_a", "s", "Trail Making Test A completion time", 42.0, 0.4, clin=0.35,
      age=0.3, kind="log", lo=10, hi=150, decimals=0),
    F("trail_making_b", "s", "Trail Making Test B completion time (capped at 300)", 110.0,
      0.45, clin=0.45, age=0.25, edu=-0.15, kind="log", lo=25, hi=300, decimals=0,
      missing=0.12, missing_bias=0.5),
    F("category_fluency", "words", "animal naming in 60 s", 17.0, 5.5, clin=-0.45, edu=0.15,
      lo=0, hi=40, decimals=0),
    F("boston_naming", "points", "Boston Naming Test (0-30)", 25.5, 3.8, clin=-0.4,
      edu=0.2, lo=0, hi=30, decimals=0, missing=0.09),
    F("clock_drawing", "points", "clock drawing (0-5)", 4.1, 1.1, clin=-0.4, lo=0, hi=5,
      decimals=0),
    F("faq", "points", "Functional Activities Questionnaire (0-30, higher = worse)", 5.5,
      6.0, clin=0.55, lo=0, hi=30, decimals=0),
    F("ecog_patient_total", "points", "Everyday Cognition, self report (1-4)", 1.8, 0.5,
      clin=0.25, lo=1, hi=4, decimals=2, missing=0.1, group="ecog_pt"),
    F("ecog_partner_total", "points", "Everyday Cognition, study partner (1-4)", 1.9, 0.7,
      clin=0.5, lo=1, hi=4, decimals=2, missing=0.15),
    F("gds", "points", "Geriatric Depression Scale short form (0-15)", 2.0, 2.2, clin=0.15,
      lo=0, hi=15, decimals=0),
    F("npiq_total", "points", "Neuropsychiatric Inventory Q total (0-36)", 2.5, 3.5,
      clin=0.3, lo=0, hi=36, decimals=0, missing=0.08),
]

# Fluid biomarkers: CSF drawn at lumbar puncture (missing together), plasma panel.
_FLUID = [
    F("csf_abeta42", "pg/mL", "CSF amyloid-beta 1-42 (lower = more amyloid)", 880.0, 0.32,
      clin=-0.5, kind="log", lo=150, hi=3000, decimals=1, missing=0.18, group="csf"),
    F("csf_ptau181", "pg/mL", "CSF phosphorylated tau 181", 23.0, 0.38, clin=0.5,
      kind="log", lo=5, hi=150, decimals=2, missing=0.18, group="csf"),
    F("csf_ttau", "pg/mL", "CSF total tau", 250.0, 0.35, clin=0.45, kind="log", lo=60,
      hi=1500, decimals=1, missing=0.18, group="csf"),
    F("csf_ptau_abeta42_ratio", "ratio", "csf_ptau181 / csf_abeta42", kind="derived",
      decimals=4, missing=0.18, group="csf"),
    F("plasma_ptau217", "pg/mL", "plasma p-tau217", 0.25, 0.55, clin=0.5, kind="log",
      lo=0.02, hi=3, decimals=3, missing=0.12, group="plasma"),
    F("plasma_nfl", "pg/mL", "plasma neurofilament light", 32.0, 0.4, clin=0.3, age=0.3,
      kind="log", lo=5, hi=200, decimals=1, missing=0.12, group="plasma"),
    F("plasma_gfap", "pg/mL", "plasma glial fibrillary acidic protein", 150.0, 0.4,
      clin=0.3, age=0.2, kind="log", lo=30, hi=800, decimals=1, missing=0.12,
      group="plasma"),
    F("plasma_abeta42_40", "ratio", "plasma amyloid-beta 42/40 ratio", 0.09, 0.012,
      clin=-0.3, lo=0.04, hi=0.15, decimals=4, missing=0.12, group="plasma"),
]

# FreeSurfer-like regional measures from the same T1 scan: the MRI view of s drives them.
_MR: dict[str, Any] = dict(missing=0.06, group="freesurfer")
_REGIONAL = [
    F("hippocampus_vol_left", "mm3", "left hippocampal volume", 3400.0, 480.0, mri=-0.42,
      age=-0.2, sex=0.15, decimals=0, **_MR),
    F("hippocampus_vol_right", "mm3", "right hippocampal volume", 3500.0, 480.0, mri=-0.42,
      age=-0.2, sex=0.15, decimals=0, **_MR),
    F("entorhinal_thick_left", "mm", "left entorhinal cortical thickness", 3.3, 0.45,
      mri=-0.35, decimals=2, **_MR),
    F("entorhinal_thick_right", "mm", "right entorhinal cortical thickness", 3.35, 0.45,
      mri=-0.35, decimals=2, **_MR),
    F("amygdala_vol_left", "mm3", "left amygdala volume", 1500.0, 260.0, mri=-0.3,
      sex=0.15, decimals=0, **_MR),
    F("amygdala_vol_right", "mm3", "right amygdala volume", 1550.0, 260.0, mri=-0.3,
      sex=0.15, decimals=0, **_MR),
    F("lateral_ventricle_vol", "mm3", "lateral ventricle volume", 32000.0, 0.45, mri=0.35,
      age=0.3, sex=0.15, kind="log", decimals=0, **_MR),
    F("inf_lat_vent_vol", "mm3", "inferior lateral ventricle volume", 900.0, 0.5, mri=0.35,
      age=0.2, kind="log", decimals=0, **_MR),
    F("whole_brain_vol", "cm3", "whole-brain volume", 1010.0, 95.0, mri=-0.15, age=-0.3,
      sex=0.45, decimals=1, **_MR),
    F("icv", "cm3", "intracranial volume", 1480.0, 150.0, sex=0.6, decimals=1, **_MR),
    F("total_gm_vol", "cm3", "total grey-matter volume", 560.0, 55.0, mri=-0.15, age=-0.35,
      sex=0.4, decimals=1, **_MR),
    F("fusiform_thick_mean", "mm", "mean fusiform cortical thickness", 2.65, 0.2,
      mri=-0.25, decimals=3, **_MR),
    F("middle_temporal_thick_mean", "mm", "mean middle temporal cortical thickness", 2.75,
      0.2, mri=-0.25, decimals=3, **_MR),
    F("precuneus_thick_mean", "mm", "mean precuneus cortical thickness", 2.25, 0.15,
      mri=-0.2, decimals=3, **_MR),
    F("cortical_thick_mean", "mm", "mean cortical thickness", 2.45, 0.12, mri=-0.15,
      age=-0.3, decimals=3, **_MR),
    F("wmh_vol", "cm3", "white-matter hyperintensity volume", 4.0, 0.9, age=0.4,
      kind="log", lo=0.1, hi=80, decimals=2, **_MR),
]

_LABS: dict[str, Any] = dict(missing=0.07, group="labs")
# name, unit, meaning, loc, scale, extra keyword arguments (age / sex effects, kind, ...)
_NOISE_SPECS: list[tuple[str, str, str, float, float, dict]] = [
    ("systolic_bp", "mmHg", "systolic blood pressure", 134, 16, dict(age=0.25, decimals=0)),
    ("diastolic_bp", "mmHg", "diastolic blood pressure", 77, 10, dict(decimals=0)),
    ("heart_rate", "bpm", "resting heart rate", 68, 10, dict(decimals=0)),
    ("respiratory_rate", "1/min", "respiratory rate", 16, 2.5, dict(decimals=0)),
    ("body_temp_c", "degC", "body temperature", 36.6, 0.3, dict(decimals=1)),
    ("weight_kg", "kg", "body weight", 74, 13, dict(sex=0.5, decimals=1)),
    ("height_cm", "cm", "standing height", 168, 9, dict(sex=0.7, decimals=1)),
    ("waist_cm", "cm", "waist circumference", 94, 12, dict(sex=0.3, decimals=1)),
    ("spo2", "%", "oxygen saturation", 97, 1.3, dict(hi=100, decimals=0)),
    ("ecg_qtc_ms", "ms", "corrected QT interval", 420, 22, dict(decimals=0)),
    ("ecg_pr_ms", "ms", "PR interval", 165, 22, dict(decimals=0)),
    ("hemoglobin", "g/dL", "haemoglobin", 13.8, 1.3, dict(sex=0.45, decimals=1, **_LABS)),
    ("hematocrit", "%", "haematocrit", 41.5, 3.8, dict(sex=0.4, decimals=1, **_LABS)),
    ("wbc", "10^9/L", "white blood cell count", 6.4, 0.25, dict(kind="log", **_LABS)),
    ("platelets", "10^9/L", "platelet count", 240, 55, dict(decimals=0, **_LABS)),
    ("rbc", "10^12/L", "red blood cell count", 4.6, 0.45, dict(sex=0.4, **_LABS)),
    ("mcv", "fL", "mean corpuscular volume", 91, 5, dict(decimals=1, **_LABS)),
    ("sodium", "mmol/L", "serum sodium", 140, 2.6, dict(decimals=0, **_LABS)),
    ("potassium", "mmol/L", "serum potassium", 4.3, 0.4, dict(decimals=1, **_LABS)),
    ("chloride", "mmol/L", "serum chloride", 103, 3, dict(decimals=0, **_LABS)),
    ("bicarbonate", "mmol/L", "serum bicarbonate", 26, 2.5, dict(decimals=0, **_LABS)),
    ("bun", "mg/dL", "blood urea nitrogen", 17, 0.3, dict(age=0.2, kind="log", decimals=0,
                                                          **_LABS)),
    ("creatinine", "mg/dL", "serum creatinine", 0.95, 0.22, dict(sex=0.4, age=0.2, kind="log",
                                                                **_LABS)),
    ("egfr", "mL/min/1.73m2", "estimated glomerular filtration rate", 75, 15,
     dict(age=-0.4, decimals=0, **_LABS)),
    ("glucose", "mg/dL", "fasting glucose", 98, 0.15, dict(kind="log", decimals=0, **_LABS)),
    ("hba1c", "%", "glycated haemoglobin", 5.8, 0.6, dict(decimals=1, **_LABS)),
    ("cholesterol_total", "mg/dL", "total cholesterol", 195, 38, dict(decimals=0, **_LABS)),
    ("ldl", "mg/dL", "LDL cholesterol", 115, 32, dict(decimals=0, **_LABS)),
    ("hdl", "mg/dL", "HDL cholesterol", 55, 14, dict(sex=-0.35, decimals=0, **_LABS)),
    ("triglycerides", "mg/dL", "triglycerides", 125, 0.45, dict(kind="log", decimals=0,
                                                                **_LABS)),
    ("alt", "U/L", "alanine aminotransferase", 22, 0.4, dict(kind="log", decimals=0, **_LABS)),
    ("ast", "U/L", "aspartate aminotransferase", 24, 0.3, dict(kind="log", decimals=0,
                                                               **_LABS)),
    ("alk_phos", "U/L", "alkaline phosphatase", 75, 0.25, dict(kind="log", decimals=0,
                                                               **_LABS)),
    ("bilirubin", "mg/dL", "total bilirubin", 0.6, 0.35, dict(kind="log", **_LABS)),
    ("albumin", "g/dL", "serum albumin", 4.2, 0.3, dict(decimals=1, **_LABS)),
    ("total_protein", "g/dL", "serum total protein", 7.0, 0.45, dict(decimals=1, **_LABS)),
    ("calcium", "mg/dL", "serum calcium", 9.4, 0.4, dict(decimals=1, **_LABS)),
    ("phosphate", "mg/dL", "serum phosphate", 3.5, 0.5, dict(decimals=1, **_LABS)),
    ("magnesium", "mg/dL", "serum magnesium", 2.0, 0.2, dict(**_LABS)),
    ("uric_acid", "mg/dL", "serum uric acid", 5.5, 1.4, dict(sex=0.3, decimals=1, **_LABS)),
    ("tsh", "mIU/L", "thyroid-stimulating hormone", 1.9, 0.5, dict(kind="log", **_LABS)),
    ("free_t4", "ng/dL", "free thyroxine", 1.2, 0.18, dict(**_LABS)),
    ("vitamin_b12", "pg/mL", "serum vitamin B12", 480, 0.4, dict(kind="log", decimals=0,
                                                                 **_LABS)),
    ("folate", "ng/mL", "serum folate", 14, 0.4, dict(kind="log", decimals=1, **_LABS)),
    ("vitamin_d", "ng/mL", "25-OH vitamin D", 30, 10, dict(lo=4, decimals=1, **_LABS)),
    ("crp", "mg/L", "C-reactive protein", 1.8, 0.9, dict(kind="log", **_LABS)),
    ("ferritin", "ng/mL", "serum ferritin", 110, 0.6, dict(sex=0.3, kind="log", decimals=0,
                                                           **_LABS)),
    ("iron", "ug/dL", "serum iron", 90, 28, dict(lo=15, decimals=0, **_LABS)),
    ("homocysteine", "umol/L", "plasma homocysteine", 11, 0.3, dict(age=0.2, kind="log",
                                                                   decimals=1, **_LABS)),
    ("sleep_hours", "h", "self-reported sleep per night", 7.0, 1.1, dict(decimals=1)),
    ("physical_activity", "points", "physical activity score (0-400)", 120, 60,
     dict(age=-0.2, lo=0, hi=400, decimals=0)),
    ("alcohol_units_week", "units", "alcohol units per week", 4.0, 1.0,
     dict(kind="log", hi=80, decimals=0)),
    ("hearing_loss", "0/1", "self-reported hearing loss", 0.3, 0.0,
     dict(age=0.3, kind="binary", decimals=0)),
    ("visual_acuity_logmar", "logMAR", "best-corrected visual acuity", 0.1, 0.12,
     dict(age=0.3, decimals=2)),
    ("grip_strength_kg", "kg", "dominant-hand grip strength", 30, 8,
     dict(sex=0.7, age=-0.2, lo=5, decimals=1)),
    ("gait_speed", "m/s", "usual gait speed", 1.15, 0.2, dict(age=-0.3, lo=0.2)),
    ("falls_past_year", "count", "falls in the past year", 0.3, 0.6,
     dict(lo=0, decimals=0)),
    ("n_medications", "count", "number of current medications", 4.5, 2.5,
     dict(age=0.25, lo=0, decimals=0)),
    ("anxiety_score", "points", "GAD-7 anxiety (0-21)", 3.0, 3.0, dict(lo=0, hi=21,
                                                                     decimals=0)),
    ("social_isolation", "points", "social isolation index (0-6)", 1.5, 1.3,
     dict(lo=0, hi=6, decimals=0)),
    ("visit_month", "months", "months since the study started (administrative)", 24, 14,
     dict(lo=0, decimals=0)),
]

_NOISE = [F(name, unit, meaning, float(loc), float(scale), **kw)
          for name, unit, meaning, loc, scale, kw in _NOISE_SPECS]

#: The 118 clinical features in manifest order.
FEATURES: tuple[Feature, ...] = tuple(_DEMOGRAPHIC + _COGNITIVE + _FLUID + _REGIONAL + _NOISE)


def feature_names() -> list[str]:
    """Names of the 118 clinical features, in manifest order."""
    return [f.name for f in FEATURES]


def relation_text(f: Feature) -> str:
    """Describe in a short phrase how a feature relates to ``s`` (data dictionary)."""
    if f.name == "age":
        return "weakly higher with s (older subjects are more often impaired)"
    if f.name == "sex_male":
        return "none"
    if f.name == "education_years":
        return "weakly lower with s"
    if f.kind == "apoe":
        return "more e4 alleles with higher s (risk gene)"
    if f.kind == "derived":
        return "higher with s (ratio of two CSF markers)"
    weight, view = (f.clin, "clinical view") if f.clin else (f.mri, "MRI view")
    if not weight:
        return "none (uninformative noise; may depend on age or sex)"
    strength = "strongly" if abs(weight) >= 0.5 else "moderately" if abs(weight) >= 0.3 else \
        "weakly"
    direction = "higher" if weight > 0 else "lower"
    return f"{strength} {direction} with s (weight {weight:+.2f} on the {view} of s)"
