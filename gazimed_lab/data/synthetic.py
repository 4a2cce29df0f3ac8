"""Synthetic multimodal Alzheimer's cohorts on MNI152 anatomy (reproducible, byte for byte).

:func:`make_synthetic_cohort` writes a manifest, T1 and FDG-PET NIfTI volumes on an MNI
grid, a data dictionary, a README and, beside the manifest, the generator's ground
truth (``truth.csv`` and ``truth/``; see :func:`make_synthetic_cohort`); :func:`demo_cohort`
does so once into a cache folder and returns the manifest; :func:`cohort_truth` gives
``truth.csv``'s table without drawing any image. How subjects, images and clinical
features are drawn lives in :mod:`~gazimed_lab.data.synthetic_clinical`,
:mod:`~gazimed_lab.data.synthetic_images` and
:mod:`~gazimed_lab.data.synthetic_features`.

Examples
--------
>>> from gazimed_lab.data.synthetic import make_synthetic_cohort
>>> manifest = make_synthetic_cohort("cohort", n_subjects=40, seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from gazimed_lab.config import DEMO_SUBJECTS
from gazimed_lab.data.baselines import (
    REFERENCE_BASELINES,
    baselines_from_tables,
    regional_features,
)
from gazimed_lab.data.grid import GRIDS, Grid, get_grid
from gazimed_lab.data.synthetic_clinical import clinical_table, draw_subjects
from gazimed_lab.data.synthetic_features import FEATURES
from gazimed_lab.data.synthetic_images import (
    EFFECT_REGIONS,
    LATERAL_TEMPORAL_SHARE,
    SubjectEffects,
    effect_region_masks,
    subject_effects,
    subject_images,
)
from gazimed_lab.data.synthetic_report import dictionary_table, readme_text

__all__ = [
    "GENERATOR_VERSION",
    "TRUTH_COLUMNS",
    "TRUTH_DIR",
    "TRUTH_FILE",
    "cohort_truth",
    "demo_cohort",
    "make_synthetic_cohort",
    "write_truth",
]

#: Bumped whenever the generator's output changes (invalidates cached demo cohorts).
GENERATOR_VERSION = "1"
_MIN_BASELINE_CLASS = 5  # each class needs this many subjects for the README's baselines
_LEADING = ("subject_id", "mri", "pet", "target", "diagnosis", "site", "age", "sex")

#: The ground-truth table's file name, beside the manifest (never read by training).
TRUTH_FILE = "truth.csv"
#: The folder beside the manifest that holds the effect-region volumes.
TRUTH_DIR = "truth"
#: ``truth.csv`` columns and their decimals (``None``: written as is).
TRUTH_COLUMNS: dict[str, int | None] = {
    "subject_id": None,
    "s": 6,
    "s_clin": 6,
    "s_mri": 6,
    "s_pet": 6,
    "has_pet": 0,
    "age": 1,
    "education_years": 0,
    "gm_loss_medial_temporal": 4,
    "gm_loss_global": 4,
    "ventricle_growth": 4,
    "pet_hypo_posterior_cingulate": 4,
    "pet_hypo_temporoparietal": 4,
    "pet_hypo_lateral_temporal": 4,
    "pet_hypo_medial_temporal": 4,
}


def _check_args(n_subjects: int, seed: int, pet_missing_fraction: float) -> None:
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)):
        raise TypeError(f"`n_subjects` must be an integer, got {n_subjects!r}")
    if n_subjects < 3:
        raise ValueError(f"`n_subjects` must be >= 3, got {n_subjects}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    frac = pet_missing_fraction
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
        raise ValueError(f"`pet_missing_fraction` must be in [0, 1), got {frac!r}")


def _nifti_gz(data: np.ndarray, affine: np.ndarray, slope: float, descrip: str) -> bytes:
    """Uncompressed NIfTI-1 bytes of an int16 volume with an explicit ``scl_slope``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(affine, code="mni")
    hdr.set_sform(affine, code="mni")
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(slope, 0.0)
    hdr["descrip"] = descrip.encode()[:79]
    buf = io.BytesIO()
    hdr.write_to(buf)
    hdr.data_to_fileobj(data, buf, rescale=False)
    return buf.getvalue()


def _write_gz(path: Path, raw: bytes) -> None:
    # gzip with mtime=0 and no file name in the header: the bytes depend on the data only.
    path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))


def _fmt(value: float, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{round(float(value), decimals) + 0.0:.{decimals}f}"


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(table.columns)
        writer.writerows(table.itertuples(index=False))


def _manifest_strings(subjects: pd.DataFrame, clinical: pd.DataFrame, pet_paths: list[str]
                      ) -> pd.DataFrame:
    """Format the manifest as strings, every number with its fixed number of decimals."""
    decimals = {f.name: f.decimals for f in FEATURES}
    out = {
        "subject_id": subjects["subject_id"],
        "mri": [f"mri/{sid}_T1w.nii.gz" for sid in subjects["subject_id"]],
        "pet": pet_paths,
        "target": [_fmt(v, 4) for v in subjects["s"]],
        "diagnosis": subjects["diagnosis"],
        "site": subjects["site"],
        "age": [_fmt(v, decimals["age"]) for v in clinical["age"]],
        "sex": subjects["sex"],
    }
    for name in clinical.columns:
        if name not in _LEADING:
            out[name] = [_fmt(v, decimals[name]) for v in clinical[name]]
    return pd.DataFrame(out)


def _draw_cohort(n: int, seed: int, pet_missing_fraction: float
                 ) -> tuple[pd.DataFrame, pd.DataFrame, set[int]]:
    """Subjects, clinical table and the rows without PET: the cohort generator's stream."""
    rng = np.random.default_rng([int(seed), 7919])
    subjects = draw_subjects(n, rng)
    subjects.insert(0, "subject_id", [f"sub-{i + 1:0{max(4, len(str(n)))}d}" for i in range(n)])
    clinical = clinical_table(subjects, rng)
    no_pet = set(rng.permutation(n)[: math.floor(pet_missing_fraction * n + 0.5)].tolist())
    return subjects, clinical, no_pet


def _subject_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 104729, i])


def _truth_strings(subjects: pd.DataFrame, no_pet: set[int],
                   effects: list[SubjectEffects]) -> pd.DataFrame:
    """``truth.csv`` as strings, every number with its fixed number of decimals."""
    has_pet = [i not in no_pet for i in range(len(subjects))]
    values: dict[str, list[Any]] = {
        "subject_id": list(subjects["subject_id"]),
        "s": list(subjects["s"]),
        "s_clin": list(subjects["s_clin"]),
        "s_mri": list(subjects["s_mri"]),
        "s_pet": list(subjects["s_pet"]),
        "has_pet": [float(h) for h in has_pet],
        "age": list(subjects["age"]),
        "education_years": list(subjects["education_years"]),
        "gm_loss_medial_temporal": [e.mtl_gm_loss for e in effects],
        "gm_loss_global": [e.global_gm_loss for e in effects],
        "ventricle_growth": [e.ventricle_growth for e in effects],
    }
    for name, k in (("posterior_cingulate", 0), ("temporoparietal", 1),
                    ("lateral_temporal", 1), ("medial_temporal", 2)):
        share = LATERAL_TEMPORAL_SHARE if name == "lateral_temporal" else 1.0
        values[f"pet_hypo_{name}"] = [e.pet_hypo[k] * share if h else float("nan")
                                      for e, h in zip(effects, has_pet)]
    out = {}
    for name, decimals in TRUTH_COLUMNS.items():
        col = values[name]
        out[name] = col if decimals is None else [_fmt(v, decimals) for v in col]
    return pd.DataFrame(out)


def _effect_files(grid: Grid) -> dict[str, bytes]:
    """Render the effect-region volumes and table under ``truth/`` (file name -> bytes)."""
    masks = effect_region_masks(grid)
    labels = np.zeros(grid.shape, dtype=np.int16)
    rows = ["label,name,modality,strength_at_s1,n_voxels,effect"]
    for region in EFFECT_REGIONS:
        mask = masks[region.name]
        labels[mask] = region.label
        rows.append(f'{region.label},{region.name},{region.modality},{region.strength:.4f},'
                    f'{int(mask.sum())},"{region.effect}"')
    files = {"effect_regions.csv": ("\n".join(rows) + "\n").encode()}

    def volume(data: np.ndarray, descrip: str) -> bytes:
        return gzip.compress(_nifti_gz(data.astype(np.int16), grid.affine, 1.0, descrip),
                             compresslevel=9, mtime=0)

    files["effect_regions.nii.gz"] = volume(labels, "gazimed-lab effect regions (labels)")
    for modality in ("mri", "pet"):
        union = np.isin(labels, [r.label for r in EFFECT_REGIONS if modality in r.modality])
        files[f"{modality}_effect_mask.nii.gz"] = volume(
            union, f"gazimed-lab {modality.upper()} effect regions (0/1)")
    return files


def _write_truth_files(out: Path, truth: pd.DataFrame, grid: Grid) -> None:
    """Write ``truth.csv`` and ``truth/``, each file atomically (temporary name, rename)."""
    (out / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(truth.columns)
    writer.writerows(truth.itertuples(index=False))
    files = {TRUTH_FILE: buf.getvalue().encode("utf-8")}
    files.update({f"{TRUTH_DIR}/{name}": raw for name, raw in _effect_files(grid).items()})
    for name, raw in files.items():
        tmp = out / f"{name}.tmp-{os.getpid()}"
        tmp.write_bytes(raw)
        os.replace(tmp, out / name)


def cohort_truth(n_subjects: int = 300, seed: int = 0, pet_missing_fraction: float = 0.15
                 ) -> pd.DataFrame:
    """Compute the ground truth of a synthetic cohort without drawing any image (fast).

    Gives the table :func:`make_synthetic_cohort` writes to ``truth.csv`` for the same
    arguments (the grid does not change it), as read back by :func:`pandas.read_csv`.

    Parameters
    ----------
    n_subjects, seed, pet_missing_fraction
        As for :func:`make_synthetic_cohort`.

    Returns
    -------
    pandas.DataFrame
        One row per subject, the columns of :data:`TRUTH_COLUMNS`.
    """
    _check_args(n_subjects, seed, pet_missing_fraction)
    subjects, _, no_pet = _draw_cohort(int(n_subjects), int(seed), pet_missing_fraction)
    effects = [subject_effects(sub.s_mri, sub.s_pet, sub.age, _subject_rng(seed, i))
               for i, sub in enumerate(subjects.itertuples(index=False))]
    text = _truth_strings(subjects, no_pet, effects).to_csv(index=False, lineterminator="\n")
    return pd.read_csv(io.StringIO(text))


def write_truth(
    out_dir: str | Path,
    n_subjects: int = 300,
    seed: int = 0,
    grid: str | Grid = "demo_4mm",
    pet_missing_fraction: float = 0.15,
) -> Path:
    """Write ``truth.csv`` and ``truth/`` into an existing cohort folder (no image drawn).

    For cohorts generated before the generator wrote its truth: the files are the same
    bytes :func:`make_synthetic_cohort` writes for the same arguments. Nothing else in
    the folder changes.

    Parameters
    ----------
    out_dir, n_subjects, seed, grid, pet_missing_fraction
        The arguments the cohort was made with.

    Returns
    -------
    pathlib.Path
        ``out_dir / "truth.csv"``.
    """
    _check_args(n_subjects, seed, pet_missing_fraction)
    subjects, _, no_pet = _draw_cohort(int(n_subjects), int(seed), pet_missing_fraction)
    effects = [subject_effects(sub.s_mri, sub.s_pet, sub.age, _subject_rng(seed, i))
               for i, sub in enumerate(subjects.itertuples(index=False))]
    out = Path(out_dir)
    _write_truth_files(out, _truth_strings(subjects, no_pet, effects), get_grid(grid))
    return out / TRUTH_FILE


def _remove_stale(out: Path, keep: set[str]) -> None:
    for folder, pattern in (("mri", "sub-*_T1w.nii.gz"), ("pet", "sub-*_pet.nii.gz")):
        for path in (out / folder).glob(pattern):
            if f"{folder}/{path.name}" not in keep:
                path.unlink()


def _oracle_table(truth: Path) -> pd.DataFrame:
    """Oracle AUROCs of a written ``truth.csv`` (imported late: evaluation imports data)."""
    from gazimed_lab.evaluation.oracle import oracle_table as table

    return table(truth)


def make_synthetic_cohort(
    out_dir: str | Path,
    n_subjects: int = 300,
    seed: int = 0,
    grid: str | Grid = "demo_4mm",
    pet_missing_fraction: float = 0.15,
) -> Path:
    """Write a synthetic cohort (manifest, NIfTI volumes, dictionary, README, truth) to a folder.

    Each subject has a latent disease score ``s`` (the ``target``), a diagnosis derived
    from it, demographics, a site, a T1 MRI and (except for about
    ``pet_missing_fraction`` of subjects) an FDG-PET on ``grid``, and 118 numeric
    clinical features (``age`` included) with realistic gaps. The same arguments give
    byte-identical files. Volumes of subjects from an earlier, larger cohort in the same
    folder are removed; other files are left alone.

    Files written into ``out_dir``:

    - ``manifest.csv``, ``mri/<subject>_T1w.nii.gz``, ``pet/<subject>_pet.nii.gz``,
      ``data_dictionary.csv``, ``README.md``: the cohort a model sees.
    - ``truth.csv``: the generator's ground truth, beside the manifest and never part
      of it (nothing in training or prediction reads it). One row per subject, in
      manifest order: ``subject_id``; ``s`` (the target before its rounding to 4
      decimals); the three latent views of ``s`` that reach the inputs: ``s_clin``
      (``s + N(0, 0.25)``; every clinical score sees it, each with its own extra
      noise), ``s_mri`` and ``s_pet`` (``clip(s + N(0, 0.3), 0, 1)``, independent; the
      T1 and the FreeSurfer-like regional volumes see ``s_mri``, the PET sees
      ``s_pet``); ``has_pet`` (0/1: whether the subject has a PET volume); ``age`` and
      ``education_years`` (clinical features drawn from ``s`` itself, weak views:
      :data:`~gazimed_lab.data.synthetic_clinical.AGE_MODEL`,
      :data:`~gazimed_lab.data.synthetic_clinical.EDUCATION_MODEL`); and how strongly
      each effect region is affected in this subject: ``gm_loss_medial_temporal``
      and ``gm_loss_global`` (grey-matter fraction lost at the medial temporal region
      centres and elsewhere), ``ventricle_growth`` (0..1), ``pet_hypo_<region>``
      (fraction of FDG uptake lost at the centre of ``posterior_cingulate``,
      ``temporoparietal``, ``lateral_temporal``, ``medial_temporal``; empty without PET).
      :func:`gazimed_lab.evaluation.oracle.oracle_table` turns it into the best AUROC
      any model could reach from each set of inputs.
    - ``truth/effect_regions.nii.gz``: int16 label volume on the grid, the regions where
      the generator puts the disease effects (template space, inside the brain, no
      overlap): 1 ``medial_temporal`` grey matter (atrophy, mild hypometabolism),
      2 ``ventricles`` (widening), 3 ``posterior_cingulate`` / precuneus,
      4 ``temporoparietal``, 5 ``lateral_temporal`` (hypometabolism).
      ``truth/effect_regions.csv`` names the labels (modality, strength at ``s = 1``,
      voxel count, effect). ``truth/mri_effect_mask.nii.gz`` (labels 1-2) and
      ``truth/pet_effect_mask.nii.gz`` (labels 1, 3-5) are the 0/1 unions per modality.

    Parameters
    ----------
    out_dir
        Output folder (created if needed).
    n_subjects
        Number of subjects (>= 3).
    seed
        Non-negative random seed.
    grid
        Grid name (``demo_4mm``, ``mni152_2mm``, ``mni152_1mm``) or a
        :class:`~gazimed_lab.data.grid.Grid`.
    pet_missing_fraction
        Fraction of subjects without PET, in [0, 1); exactly
        ``round(fraction * n_subjects)`` subjects get an empty ``pet`` cell.

    Returns
    -------
    pathlib.Path
        The manifest, ``out_dir / "manifest.csv"``.

    Raises
    ------
    ValueError
        If an argument is out of range or the grid is unknown.
    """
    from threadpoolctl import threadpool_limits

    _check_args(n_subjects, seed, pet_missing_fraction)
    n = int(n_subjects)
    grid_obj = get_grid(grid)
    out = Path(out_dir)
    for sub in ("mri", "pet"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    subjects, clinical, no_pet = _draw_cohort(n, int(seed), pet_missing_fraction)
    pet_paths, features, effects = [], [], []
    with threadpool_limits(1):
        for i, sub in enumerate(subjects.itertuples(index=False)):
            imgs = subject_images(grid_obj, sub.s_mri, sub.s_pet, sub.age, sub.site,
                                  i not in no_pet, _subject_rng(seed, i))
            effects.append(imgs.effects)
            _write_gz(out / f"mri/{sub.subject_id}_T1w.nii.gz",
                      _nifti_gz(imgs.mri, grid_obj.affine, 1.0, "gazimed-lab synthetic T1w"))
            pet = None
            if imgs.pet is not None:
                _write_gz(out / f"pet/{sub.subject_id}_pet.nii.gz",
                          _nifti_gz(imgs.pet, grid_obj.affine, imgs.pet_slope,
                                    "gazimed-lab synthetic FDG-PET"))
                # What nibabel's get_fdata() returns for the file (int16 * float32 slope).
                pet = imgs.pet * np.float64(np.float32(imgs.pet_slope))
            pet_paths.append("" if imgs.pet is None else f"pet/{sub.subject_id}_pet.nii.gz")
            features.append(regional_features(imgs.mri.astype(np.float64), pet, grid_obj))
        strings = _manifest_strings(subjects, clinical, pet_paths)
        manifest = out / "manifest.csv"
        _write_csv(manifest, strings)
        _remove_stale(out, set(strings["mri"]) | set(p for p in pet_paths if p))
        table = pd.read_csv(manifest)
        y = table["target"] > 0.5
        enough = min(int(y.sum()), int((~y).sum())) >= _MIN_BASELINE_CLASS
        baselines = baselines_from_tables(table, pd.DataFrame(features)) if enough else None
    dictionary = dictionary_table(strings)
    _write_csv(out / "data_dictionary.csv", dictionary)
    truth = _truth_strings(subjects, no_pet, effects)
    _write_truth_files(out, truth, grid_obj)
    oracle = _oracle_table(out / TRUTH_FILE) if enough else None
    params = {"n_subjects": n, "seed": int(seed), "grid": grid_obj.name,
              "pet_missing_fraction": pet_missing_fraction, "version": GENERATOR_VERSION}
    text = readme_text(params, strings, dictionary, baselines, REFERENCE_BASELINES, oracle)
    (out / "README.md").write_text(text, encoding="utf-8")
    return manifest


def _cache_name(n: int, seed: int, grid: Grid) -> str:
    name = f"demo_cohort_n{n}_s{seed}"
    if grid.name == "demo_4mm" and grid == GRIDS["demo_4mm"]:
        return name
    if grid.name in GRIDS and grid == GRIDS[grid.name]:
        return f"{name}_{grid.name}"
    return f"{name}_custom{hashlib.sha1(grid.key().encode()).hexdigest()[:8]}"


def demo_cohort(
    cache_dir: str | Path | None = None,
    n_subjects: int = DEMO_SUBJECTS,
    seed: int = 1234,
    grid: str | Grid = "demo_4mm",
) -> Path:
    """Return the demo cohort's manifest, generating it into a cache folder on first use.

    The cohort lives in ``<root>/demo_cohort_n{n_subjects}_s{seed}`` (a grid other than
    ``demo_4mm`` adds a suffix). It is (re)generated only when absent or incomplete: a
    ``.complete`` marker, written last, records the generator version and arguments.
    Generation happens in a temporary sibling folder that is renamed into place, so a
    concurrent reader never sees a half-written cohort.

    Parameters
    ----------
    cache_dir
        The cache root. Default: ``$GAZIMED_CACHE`` if set, else ``.cache/gazimed-lab``
        under the current directory.
    n_subjects, seed, grid
        As for :func:`make_synthetic_cohort` (PET missing fraction 0.15).

    Returns
    -------
    pathlib.Path
        The cached cohort's ``manifest.csv``.
    """
    _check_args(n_subjects, seed, 0.15)
    grid_obj = get_grid(grid)
    root = Path(cache_dir) if cache_dir is not None else Path(
        os.environ.get("GAZIMED_CACHE") or ".cache/gazimed-lab")
    name = _cache_name(int(n_subjects), int(seed), grid_obj)
    folder = root / name
    stamp = json.dumps({"version": GENERATOR_VERSION, "n_subjects": int(n_subjects),
                        "seed": int(seed), "grid": grid_obj.key(),
                        "pet_missing_fraction": 0.15}, sort_keys=True)

    def complete() -> bool:
        marker = folder / ".complete"
        return marker.is_file() and marker.read_text() == stamp and (
            folder / "manifest.csv").is_file()

    if complete():
        if not (folder / TRUTH_FILE).is_file():  # cached before the generator wrote it
            write_truth(folder, n_subjects=n_subjects, seed=seed, grid=grid_obj)
        return folder / "manifest.csv"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_synthetic_cohort(tmp, n_subjects=n_subjects, seed=seed, grid=grid_obj)
    (tmp / ".complete").write_text(stamp)
    if not complete():
        shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not complete():
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return folder / "manifest.csv"
