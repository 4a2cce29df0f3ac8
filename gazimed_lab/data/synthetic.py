"""Synthetic multimodal Alzheimer's cohorts on MNI152 anatomy (reproducible, byte for byte).

:func:`make_synthetic_cohort` writes a manifest, T1 and FDG-PET NIfTI volumes on an MNI
grid, a data dictionary and a README; :func:`demo_cohort` does so once into a cache
folder and returns the manifest. How subjects, images and clinical features are drawn
lives in :mod:`~gazimed_lab.data.synthetic_clinical`,
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

import nibabel as nib
import numpy as np
import pandas as pd

from gazimed_lab.data.baselines import (
    REFERENCE_BASELINES,
    baselines_from_tables,
    regional_features,
)
from gazimed_lab.data.grid import GRIDS, Grid, get_grid
from gazimed_lab.data.synthetic_clinical import clinical_table, draw_subjects
from gazimed_lab.data.synthetic_features import FEATURES
from gazimed_lab.data.synthetic_images import subject_images
from gazimed_lab.data.synthetic_report import dictionary_table, readme_text

__all__ = ["GENERATOR_VERSION", "demo_cohort", "make_synthetic_cohort"]

#: Bumped whenever the generator's output changes (invalidates cached demo cohorts).
GENERATOR_VERSION = "1"
_MIN_BASELINE_CLASS = 5  # each class needs this many subjects for the README's baselines
_LEADING = ("subject_id", "mri", "pet", "target", "diagnosis", "site", "age", "sex")


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


def _remove_stale(out: Path, keep: set[str]) -> None:
    for folder, pattern in (("mri", "sub-*_T1w.nii.gz"), ("pet", "sub-*_pet.nii.gz")):
        for path in (out / folder).glob(pattern):
            if f"{folder}/{path.name}" not in keep:
                path.unlink()


def make_synthetic_cohort(
    out_dir: str | Path,
    n_subjects: int = 300,
    seed: int = 0,
    grid: str | Grid = "demo_4mm",
    pet_missing_fraction: float = 0.15,
) -> Path:
    """Write a synthetic cohort (manifest, NIfTI volumes, dictionary, README) to a folder.

    Each subject has a latent disease score ``s`` (the ``target``), a diagnosis derived
    from it, demographics, a site, a T1 MRI and (except for about
    ``pet_missing_fraction`` of subjects) an FDG-PET on ``grid``, and 118 numeric
    clinical features (``age`` included) with realistic gaps. The same arguments give
    byte-identical files. Volumes of subjects from an earlier, larger cohort in the same
    folder are removed; other files are left alone.

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
    rng = np.random.default_rng([int(seed), 7919])
    subjects = draw_subjects(n, rng)
    subjects.insert(0, "subject_id", [f"sub-{i + 1:0{max(4, len(str(n)))}d}" for i in range(n)])
    clinical = clinical_table(subjects, rng)
    no_pet = set(rng.permutation(n)[: math.floor(pet_missing_fraction * n + 0.5)].tolist())
    pet_paths, features = [], []
    with threadpool_limits(1):
        for i, sub in enumerate(subjects.itertuples(index=False)):
            imgs = subject_images(grid_obj, sub.s_mri, sub.s_pet, sub.age, sub.site,
                                  i not in no_pet, np.random.default_rng([int(seed), 104729, i]))
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
    params = {"n_subjects": n, "seed": int(seed), "grid": grid_obj.name,
              "pet_missing_fraction": pet_missing_fraction, "version": GENERATOR_VERSION}
    text = readme_text(params, strings, dictionary, baselines, REFERENCE_BASELINES)
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
    n_subjects: int = 300,
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
