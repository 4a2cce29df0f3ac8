"""The synthetic cohort's ``data_dictionary.csv`` and ``README.md`` (deterministic text)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from gazimed_lab.data.synthetic_clinical import CLINICAL_VIEW_SD, DIAGNOSIS_CUTS, IMAGE_VIEW_SD
from gazimed_lab.data.synthetic_features import FEATURES, relation_text
from gazimed_lab.data.synthetic_images import SITES

__all__ = ["DICTIONARY_COLUMNS", "dictionary_table", "readme_text"]

DICTIONARY_COLUMNS = ("name", "role", "unit", "meaning", "relation_to_s", "missing_fraction")

_FIXED = {
    "subject_id": ("id", "", "subject identifier (sub-NNNN)", "none"),
    "mri": ("path", "", "T1-weighted MRI relative to the manifest: int16 scanner units on "
            "the MNI grid", "medial temporal grey-matter loss and ventricular widening grow "
            "with s"),
    "pet": ("path", "", "FDG-PET relative to the manifest (empty = no PET): int16 with "
            "scl_slope, SUV-like with a per-subject global factor 0.5-2",
            "posterior cingulate / precuneus and temporoparietal hypometabolism grow with s"),
    "target": ("target", "score", "latent disease score s in [0, 1]; label = target > 0.5",
               "is s"),
    "diagnosis": ("label", "", "CN / MCI / AD from s with boundary noise (cuts "
                  f"{DIAGNOSIS_CUTS[0]} / {DIAGNOSIS_CUTS[1]})", "derived from s"),
    "site": ("meta", "", f"acquisition site ({', '.join(SITES)}): MRI contrast, smoothness, "
             "noise and PET resolution differ", "none"),
    "sex": ("meta", "", "M / F (numeric copy: sex_male)", "none"),
}


def dictionary_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per manifest column: name, role, unit, meaning, relation to s, missingness.

    Parameters
    ----------
    manifest
        The manifest as written (missing cells NaN or ``""``).
    """
    features = {f.name: f for f in FEATURES}
    rows = []
    for name in manifest.columns:
        col = manifest[name]
        missing = float((col.isna() | (col.astype(str) == "")).mean())
        if name in features:
            f = features[name]
            row = (name, "clinical", f.unit, f.meaning, relation_text(f))
        else:
            role, unit, meaning, relation = _FIXED[name]
            row = (name, role, unit, meaning, relation)
        rows.append((*row, f"{missing:.3f}"))
    return pd.DataFrame(rows, columns=list(DICTIONARY_COLUMNS))


def _fmt(value: Any) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


def _baseline_lines(baselines: dict[str, Any] | None, reference: dict[str, Any]) -> list[str]:
    lines = ["## Baselines", "",
             "L2 logistic regression (C = 0.1) for `target > 0.5` (median imputation and "
             "standardization fitted on the training folds), AUC of pooled out-of-fold "
             "scores, stratified 5-fold. Features: (a) the clinical columns, (b) mean MRI "
             "(z-scored in the brain mask) and PET (/ whole-brain mean) in a few MNI regions, "
             "(c) both.", "",
             "| cohort | clinical | regional image means | both |", "|---|---|---|---|"]
    if baselines is not None:
        lines.append(f"| this cohort (n = {baselines['n_subjects']}) | "
                     f"{_fmt(baselines['clinical'])} | {_fmt(baselines['image'])} | "
                     f"{_fmt(baselines['both'])} |")
    lines.append(f"| reference: `{reference['cohort']}` | {_fmt(reference['clinical'])} | "
                 f"{_fmt(reference['image'])} | {_fmt(reference['both'])} |")
    lines += ["", "Reproduce the reference row:", "", "```bash",
              'python -c "from gazimed_lab.data.synthetic import demo_cohort; '
              "from gazimed_lab.data.baselines import baseline_aucs; "
              'print(baseline_aucs(demo_cohort(n_subjects=300, seed=1234)))"', "```", ""]
    if baselines is None:
        lines += ["(This cohort is too small for its own baselines.)", ""]
    return lines


def _truth_lines(oracle: pd.DataFrame | None) -> list[str]:
    lines = [
        "## Ground truth", "",
        "- `truth.csv`: one row per subject (manifest order): `subject_id`; `s` (the target "
        "before rounding); the latent views that reach the inputs: `s_clin` (clinical), "
        "`s_mri`, `s_pet` (each image view clipped to [0, 1]); `has_pet`; `age` and "
        "`education_years` (drawn from `s` itself: weak views); how strongly each effect "
        "region is hit in this subject: `gm_loss_medial_temporal`, `gm_loss_global` (grey-"
        "matter fraction lost), `ventricle_growth` (0-1), `pet_hypo_posterior_cingulate`, "
        "`pet_hypo_temporoparietal`, `pet_hypo_lateral_temporal`, `pet_hypo_medial_temporal` "
        "(fraction of FDG uptake lost at the region centre; empty without PET).",
        "- `truth/effect_regions.nii.gz`: label volume on the grid of the regions where the "
        "generator puts the effects (template space, inside the brain): 1 medial temporal "
        "grey matter (atrophy, mild hypometabolism), 2 ventricles (widening), 3 posterior "
        "cingulate / precuneus, 4 temporoparietal, 5 lateral temporal (hypometabolism); "
        "`truth/effect_regions.csv` names them. `truth/mri_effect_mask.nii.gz` (labels 1-2) "
        "and `truth/pet_effect_mask.nii.gz` (labels 1, 3-5): 0/1 masks per modality.", "",
    ]
    if oracle is None:
        return lines
    lines += [
        "The oracle: the best AUROC for `target > 0.5` any model could reach from each set "
        "of views (`P(s > 0.5 | views)` from the precision-weighted mean of the views; "
        "subjects without PET do not see the PET view). A ceiling for a model with those "
        "inputs, on this cohort. On a small cohort these scatter by several hundredths (a "
        "fitted model can land above them by chance); for stable ceilings score a large "
        "cohort: `oracle_table(cohort_truth(n_subjects=1000, seed=...))` "
        "(`gazimed_lab.data.synthetic.cohort_truth` draws no image).", "",
        "| views | what a model with these inputs sees | oracle AUROC |", "|---|---|---|",
    ]
    for row in oracle.itertuples(index=False):
        lines.append(f"| {row.subset} | {row.description} | {_fmt(row.auroc)} |")
    lines += ["", "```bash",
              'python -c "from gazimed_lab.evaluation.oracle import oracle_table; '
              "print(oracle_table('<out_dir>/manifest.csv'))\"", "```", ""]
    return lines


def readme_text(params: dict[str, Any], manifest: pd.DataFrame, dictionary: pd.DataFrame,
                baselines: dict[str, Any] | None, reference: dict[str, Any],
                oracle: pd.DataFrame | None = None) -> str:
    """Render the cohort's README.md: how it was made, its make-up, truth, baselines, dictionary.

    ``oracle`` is :func:`gazimed_lab.evaluation.oracle.oracle_table` of the cohort (its
    rows are listed under *Ground truth*; None: no table).
    """
    n = len(manifest)
    args = (f"n_subjects={params['n_subjects']}, seed={params['seed']}, "
            f"grid={params['grid']!r}, pet_missing_fraction={params['pet_missing_fraction']}")
    lines = [
        f"# Synthetic cohort: {n} subjects (seed {params['seed']}, grid {params['grid']})", "",
        "Made by `gazimed_lab.data.synthetic.make_synthetic_cohort` (generator version "
        f"{params['version']}) on the MNI152 template shipped with nilearn. No real "
        "person's data. The same arguments give byte-identical files:", "",
        "```bash",
        'python -c "from gazimed_lab.data.synthetic import make_synthetic_cohort; '
        f"make_synthetic_cohort('<out_dir>', {args})\"",
        "```", "",
        "## Contents", "",
        "- `manifest.csv`: one row per subject: `subject_id`, `mri`, `pet` (empty when "
        "missing), `target`, `diagnosis`, `site`, `age`, `sex`, then the other clinical "
        "columns. The clinical features are every numeric column except `target`: "
        f"{int((dictionary['role'] == 'clinical').sum())} of them, `age` included.",
        "- `mri/<subject>_T1w.nii.gz`, `pet/<subject>_pet.nii.gz`: volumes on the grid.",
        "- `data_dictionary.csv`: the table at the end of this file.",
        "- `truth.csv` and `truth/`: the generator's ground truth, beside the manifest and "
        "never part of it (nothing in training or prediction reads them); see *Ground "
        "truth* below.", "",
        "## Subjects", "",
        "| diagnosis | n | target mean | target range |", "|---|---|---|---|",
    ]
    for dx in ("CN", "MCI", "AD"):
        t = manifest.loc[manifest["diagnosis"] == dx, "target"].astype(float)
        rng = f"{t.min():.2f}-{t.max():.2f}" if len(t) else "-"
        mean = f"{t.mean():.2f}" if len(t) else "-"
        lines.append(f"| {dx} | {len(t)} | {mean} | {rng} |")
    n_pet = int((manifest["pet"] == "").sum())
    sites = ", ".join(f"{k}: {v}" for k, v in sorted(manifest["site"].value_counts().items()))
    lines += [
        "", f"Subjects with `target > 0.5`: {int((manifest['target'].astype(float) > 0.5).sum())}"
        f". Without PET: {n_pet}. Sites: {sites}.", "",
        "## How the data are made", "",
        "- `s` (the target) is drawn from a mixture of beta distributions (CN-, MCI- and "
        "AD-like); the diagnosis thresholds `s` plus small noise; age rises weakly with `s`.",
        f"- Clinical features see `s + N(0, {CLINICAL_VIEW_SD})` (cognitive reserve, test-day "
        "effects), each with its own noise; FreeSurfer-like volumes see the MRI view of `s`. "
        "About half of the features are uninformative (vitals, labs, lifestyle). Gaps: CSF, "
        "plasma, some cognitive tests, labs and regional volumes (5-20 %).",
        f"- The MRI and PET each see `s + N(0, {IMAGE_VIEW_SD})`. MRI: MNI152 T1 with a smooth "
        "random deformation, ventricles magnified and medial temporal grey matter lost with "
        "`s`, global atrophy with age, site contrast / smoothness, bias field, Rician noise. "
        "PET: grey-matter-weighted uptake with posterior cingulate / precuneus and "
        "temporoparietal hypometabolism growing with `s`, 7-10 mm FWHM by site, global factor "
        "0.5-2 (normalize!), noise.", "",
    ]
    lines += _truth_lines(oracle)
    lines += _baseline_lines(baselines, reference)
    lines += ["## Data dictionary", "",
              "| " + " | ".join(DICTIONARY_COLUMNS) + " |",
              "|" + "---|" * len(DICTIONARY_COLUMNS)]
    for row in dictionary.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
