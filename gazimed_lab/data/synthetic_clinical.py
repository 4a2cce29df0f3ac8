"""Latent disease scores, demographics and the 118 clinical features of the synthetic cohort.

Every subject has a latent disease score ``s`` in [0, 1] (the manifest's ``target``).
The clinical features do not see ``s`` directly but a *clinical view* of it,
``s + N(0, CLINICAL_VIEW_SD)`` (cognitive reserve, test-day effects), and the
regional volumes see the *MRI view* that also drives the synthetic T1 image. The
shared view noise caps how well any number of clinical features can predict ``s``;
the images carry their own, independent, view of ``s``.

The feature table itself lives in :mod:`gazimed_lab.data.synthetic_features`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri

from gazimed_lab.data.synthetic_features import FEATURES, Feature

__all__ = [
    "AGE_MODEL",
    "CLINICAL_VIEW_SD",
    "DIAGNOSIS_CUTS",
    "EDUCATION_MODEL",
    "IMAGE_VIEW_SD",
    "S_MIXTURE",
    "S_RANGE",
    "LinearView",
    "clinical_table",
    "draw_subjects",
    "missing_groups",
]

#: Diagnosis thresholds on ``s`` (CN below the first, AD above the second).
DIAGNOSIS_CUTS = (0.35, 0.65)
#: SD of the boundary noise added to ``s`` before thresholding (clipped at 2 SD).
DIAGNOSIS_NOISE_SD = 0.03
#: SD of the shared noise between ``s`` and what the clinical features see.
CLINICAL_VIEW_SD = 0.25
#: SD of the noise between ``s`` and what each image modality sees.
IMAGE_VIEW_SD = 0.3

#: Mixture of beta distributions for s: (weight, a, b) for CN, MCI and AD-like groups.
S_MIXTURE = ((0.40, 2.0, 9.0), (0.35, 9.0, 9.0), (0.25, 8.0, 2.5))
_MIXTURE = S_MIXTURE
#: ``s`` is clipped to this range after the beta draw.
S_RANGE = (0.005, 0.995)
_SITE_P = (0.30, 0.30, 0.25, 0.15)
# Fixed standardization constants (not fitted on the cohort, so a subject's values
# do not depend on who else is in it).
_S_MEAN, _S_SD = 0.42, 0.27
_AGE_MEAN, _AGE_SD = 72.0, 7.0
_EDU_MEAN, _EDU_SD = 15.5, 3.0


@dataclass(frozen=True)
class LinearView:
    """A demographic drawn from ``s`` itself: a weak, independent view of ``s``.

    The value is ``clip(at_mean + slope * (s - 0.42) + N(0, sd), lo, hi)`` rounded to
    ``step``; in units of ``s`` its noise SD is ``sd / |slope|``.
    """

    at_mean: float
    slope: float
    sd: float
    lo: float
    hi: float
    step: float

    def expected(self, s: np.ndarray) -> np.ndarray:
        """Return the mean value (before noise, clipping and rounding) at scores ``s``."""
        return self.at_mean + self.slope * (np.asarray(s, dtype=np.float64) - _S_MEAN)

    def to_s(self, value: np.ndarray) -> np.ndarray:
        """Convert a value to units of ``s`` (unbiased where not clipped)."""
        return _S_MEAN + (np.asarray(value, dtype=np.float64) - self.at_mean) / self.slope

    @property
    def s_sd(self) -> float:
        """Noise SD of :meth:`to_s` in units of ``s``."""
        return self.sd / abs(self.slope)


#: Age rises weakly with ``s`` (a clinical feature that sees ``s`` itself, not a view).
AGE_MODEL = LinearView(at_mean=70.0, slope=9.0, sd=6.5, lo=55.0, hi=90.0, step=0.1)
_EDU_SLOPE = 0.6  # years of education lost per SD of ``s`` (``_S_SD``)
#: Education falls weakly with ``s`` (``15.5 - 0.6 * (s - 0.42) / 0.27 + N(0, 2.9)``).
EDUCATION_MODEL = LinearView(at_mean=15.5, slope=-_EDU_SLOPE / _S_SD, sd=2.9, lo=6.0, hi=22.0,
                             step=1.0)


def _z(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) / sd


def draw_subjects(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw latent scores, diagnosis, demographics and the per-view latents.

    Parameters
    ----------
    n
        Number of subjects.
    rng
        The cohort's random generator.

    Returns
    -------
    pandas.DataFrame
        One row per subject with columns ``s``, ``diagnosis``, ``age``, ``sex``,
        ``sex_male``, ``site`` (``"site1"`` ... ``"site4"``), ``education_years``,
        ``s_clin``, ``s_mri`` and ``s_pet`` (the three noisy views of ``s``).
    """
    comp = rng.choice(len(S_MIXTURE), size=n, p=[m[0] for m in S_MIXTURE])
    a = np.array([m[1] for m in S_MIXTURE])[comp]
    b = np.array([m[2] for m in S_MIXTURE])[comp]
    s = np.clip(rng.beta(a, b), *S_RANGE)
    jitter = np.clip(rng.normal(0.0, DIAGNOSIS_NOISE_SD, n), -2 * DIAGNOSIS_NOISE_SD,
                     2 * DIAGNOSIS_NOISE_SD)
    noisy = s + jitter
    diagnosis = np.where(noisy < DIAGNOSIS_CUTS[0], "CN",
                         np.where(noisy > DIAGNOSIS_CUTS[1], "AD", "MCI"))
    age_m, edu_m = AGE_MODEL, EDUCATION_MODEL
    age = np.clip(age_m.at_mean + age_m.slope * (s - _S_MEAN) + rng.normal(0.0, age_m.sd, n),
                  age_m.lo, age_m.hi)
    male = (rng.random(n) < 0.47).astype(np.int64)
    site = rng.choice(len(_SITE_P), size=n, p=_SITE_P) + 1
    edu = np.clip(edu_m.at_mean - _EDU_SLOPE * _z(s, _S_MEAN, _S_SD)
                  + rng.normal(0.0, edu_m.sd, n), edu_m.lo, edu_m.hi)
    return pd.DataFrame({
        "s": s,
        "diagnosis": diagnosis,
        "age": np.round(age, 1),
        "sex": np.where(male == 1, "M", "F"),
        "sex_male": male,
        "site": [f"site{k}" for k in site],
        "education_years": np.round(edu),
        "s_clin": s + rng.normal(0.0, CLINICAL_VIEW_SD, n),
        "s_mri": np.clip(s + rng.normal(0.0, IMAGE_VIEW_SD, n), 0.0, 1.0),
        "s_pet": np.clip(s + rng.normal(0.0, IMAGE_VIEW_SD, n), 0.0, 1.0),
    })


def _feature_values(f: Feature, drivers: dict[str, np.ndarray], eps: np.ndarray) -> np.ndarray:
    weights = {"clin": f.clin, "mri": f.mri, "age": f.age, "sex": f.sex, "edu": f.edu}
    z = sum(w * drivers[k] for k, w in weights.items() if w)
    explained = sum(w * w for w in weights.values())
    z = z + math.sqrt(max(1.0 - explained, 0.15)) * eps
    if f.kind == "binary":
        values = (z > ndtri(1.0 - f.loc)).astype(np.float64)
    elif f.kind == "log":
        values = np.exp(math.log(f.loc) + f.scale * z)
    else:
        values = f.loc + f.scale * z
    values = np.clip(values, f.lo, f.hi)
    step = f.step if f.step else 10.0 ** (-f.decimals)
    return np.round(values / step) * step


def missing_groups() -> dict[str, tuple[float, float, list[str]]]:
    """Features that share missingness: group name -> (fraction, bias, feature names)."""
    groups: dict[str, tuple[float, float, list[str]]] = {}
    for f in FEATURES:
        if f.missing > 0:
            key = f.group or f.name
            frac, bias, names = groups.get(key, (f.missing, f.missing_bias, []))
            groups[key] = (frac, bias, [*names, f.name])
    return groups


def clinical_table(subjects: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the 118 clinical features (age included), with gaps as NaN.

    Parameters
    ----------
    subjects
        The output of :func:`draw_subjects`.
    rng
        The cohort's random generator.

    Returns
    -------
    pandas.DataFrame
        Columns in :data:`FEATURES` order. Missing cells are NaN; each missingness
        group loses exactly ``round(fraction * n)`` subjects.
    """
    n = len(subjects)
    z_clin = _z(subjects["s_clin"], _S_MEAN, _S_SD)
    drivers = {
        "clin": z_clin,
        "mri": _z(subjects["s_mri"], _S_MEAN, _S_SD),
        "age": _z(subjects["age"], _AGE_MEAN, _AGE_SD),
        "sex": 2.0 * subjects["sex_male"].to_numpy(np.float64) - 1.0,
        "edu": _z(subjects["education_years"], _EDU_MEAN, _EDU_SD),
    }
    eps = rng.standard_normal((len(FEATURES), n))
    columns: dict[str, np.ndarray] = {}
    for k, f in enumerate(FEATURES):
        if f.kind == "given":
            columns[f.name] = subjects[f.name].to_numpy(np.float64)
        elif f.kind == "apoe":
            latent = 0.5 * z_clin + eps[k]
            columns[f.name] = np.digitize(latent, [0.45, 1.6]).astype(np.float64)
        else:
            columns[f.name] = _feature_values(f, drivers, eps[k])
    columns["csf_ptau_abeta42_ratio"] = np.round(
        columns["csf_ptau181"] / columns["csf_abeta42"], 4)
    table = pd.DataFrame(columns)
    for frac, bias, names in missing_groups().values():
        k = math.floor(frac * n + 0.5)
        if k == 0:
            continue
        weights = np.exp(bias * np.clip(z_clin, -2.5, 2.5))
        chosen = rng.choice(n, size=k, replace=False, p=weights / weights.sum())
        table.loc[chosen, names] = np.nan
    return table
