"""Quality control of a cohort: per-volume table, missingness, split balance.

:func:`run_qa` never raises on bad data: it records every manifest problem
(see :class:`~gazimed_lab.data.manifest.ManifestError`) and every volume that
would fail at training time (not registered to MNI space) as errors, and
still tabulates every volume it can read. :func:`qa_main` is the body of the
``gazimed-lab qa MANIFEST`` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import (
    MIN_COVERAGE,
    ImageError,
    check_same_space,
    check_values,
    conform_loaded,
    coverage_problem,
    problem,
    read_nifti,
)
from gazimed_lab.data.manifest import Cohort, row_location, validate_manifest
from gazimed_lab.data.normalize import normalize_mri, normalize_pet

__all__ = ["QAReport", "missingness", "qa_main", "qa_table", "run_qa", "split_balance"]

#: Below this Pearson correlation to the MNI template (inside the brain mask) a volume is
#: flagged. Registered synthetic volumes (bias field, smoothing, noise) give 0.4-0.9; a
#: 20 mm shift gives about 0.0-0.2.
MIN_TEMPLATE_CORRELATION = 0.3
_TEMPLATE_FOR = {"mri": "t1", "pet": "gm"}
_COLUMNS = [
    "row", "subject_id", "modality", "file", "grid_action", "shape", "voxel_size", "min", "mean",
    "max", "std", "nan_count", "brain_coverage", "template_corr", "pet_mri_corr", "flags",
]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


class _Volume:
    """One volume's QA row, conformed data, source image and error (if any)."""

    def __init__(self, r: int, sid: str, modality: str, file: str) -> None:
        self.row: dict = {c: np.nan for c in _COLUMNS}
        self.row.update(row=r, subject_id=sid, modality=modality, file=file, grid_action="",
                        shape="", voxel_size="", flags="")
        self.where = row_location(r, sid, file)
        self.data: np.ndarray | None = None
        self.image: nib.spatialimages.SpatialImage | None = None
        self.errors: list[str] = []


def _inspect(vol: _Volume, grid: Grid, mask: np.ndarray,
             pet_reference: str = "whole_brain") -> _Volume:
    row, modality, file = vol.row, vol.row["modality"], vol.row["file"]
    if not file:
        row["flags"] = f"missing {modality.upper()}"
        return vol
    if not Path(file).is_file():  # already a manifest problem
        row["flags"] = "missing file"
        return vol
    try:
        vol.image, raw = read_nifti(file, modality, vol.where)
    except ImageError as exc:
        row["flags"] = "unreadable"
        vol.errors.append(str(exc))
        return vol
    finite = np.isfinite(raw)
    row.update(shape=str(tuple(int(s) for s in raw.shape)),
               voxel_size="x".join(f"{v:g}" for v in np.round(
                   nib.affines.voxel_sizes(vol.image.affine), 3)),
               nan_count=int(raw.size - finite.sum()))
    if finite.any():
        vals = raw[finite]
        row.update(min=float(vals.min()), mean=float(vals.mean()), max=float(vals.max()),
                   std=float(vals.std()))
    try:
        check_values(raw, modality, vol.where)
    except ImageError as exc:
        vol.errors.append(str(exc))
        row["flags"] = "non-finite voxels" if row["nan_count"] else "all-zero volume"
        return vol
    data, action, coverage = conform_loaded(nib.Nifti1Image(raw, vol.image.affine), grid)
    corr = _corr(data[mask], template_on_grid(_TEMPLATE_FOR[modality], grid)[mask])
    row.update(grid_action=action, brain_coverage=coverage, template_corr=corr)
    flags = []
    found = coverage_problem(coverage, grid, action, modality, vol.where, MIN_COVERAGE)
    if found is not None:  # the very check (and message) training applies
        flags.append(f"not registered? (brain coverage {coverage:.2f})")
        vol.errors.append(found)
    if not corr >= MIN_TEMPLATE_CORRELATION:
        flags.append("low template correlation")
    try:  # the normalization training applies (constant MRI, PET reference mean <= 0)
        if modality == "mri":
            normalize_mri(data, grid)
        else:
            normalize_pet(data, grid, pet_reference)
    except ValueError as exc:
        flags.append("cannot be normalized")
        vol.errors.append(f"{exc}; file: {vol.where}")
    row["flags"] = "; ".join(flags)
    vol.data = data
    return vol


def _qa(cohort: Cohort, grid: Grid, pet_reference: str = "whole_brain"
        ) -> tuple[pd.DataFrame, list[str]]:
    mask = template_on_grid("brain_mask", grid) > 0
    rows, errors = [], []
    for i, subject in cohort.table.iterrows():
        r, sid = int(i) + 1, subject["subject_id"]
        mri = _inspect(_Volume(r, sid, "mri", subject["mri"]), grid, mask, pet_reference)
        pet = _inspect(_Volume(r, sid, "pet", subject["pet"]), grid, mask, pet_reference)
        errors += mri.errors + pet.errors
        if mri.image is not None and pet.image is not None:
            try:
                check_same_space(mri.image, pet.image, subject["mri"], subject["pet"],
                                 where=f"pet: {subject['pet']}; mri: {subject['mri']}; "
                                       f"{row_location(r, sid)}")
            except ImageError as exc:
                errors.append(str(exc))
                pet.row["flags"] = "; ".join(f for f in (pet.row["flags"], "MRI/PET grids differ")
                                             if f)
        if mri.data is not None and pet.data is not None:
            corr = _corr(mri.data[mask], pet.data[mask])
            mri.row["pet_mri_corr"] = pet.row["pet_mri_corr"] = corr
        rows += [mri.row, pet.row]
    table = pd.DataFrame(rows, columns=_COLUMNS)
    flagged = (table["flags"] == "").astype(int)
    order = np.lexsort((table["modality"], table["row"], flagged))
    return table.iloc[order].reset_index(drop=True), errors


def qa_table(cohort: Cohort, grid: Grid | str = "demo_4mm") -> pd.DataFrame:
    """One row per subject and modality with geometry, intensity and registration checks.

    Parameters
    ----------
    cohort
        A cohort from :func:`~gazimed_lab.data.manifest.read_manifest` (or
        :func:`~gazimed_lab.data.manifest.validate_manifest`; bad files are
        reported in ``flags`` rather than raised).
    grid
        The MNI grid volumes are conformed to.

    Returns
    -------
    pandas.DataFrame
        Columns: row (1-based manifest data row), subject_id, modality, file,
        grid_action, shape, voxel_size, min, mean, max, std (of the finite
        source voxels), nan_count, brain_coverage, template_corr (to the MNI T1
        template for MRI, the GM template for PET, inside the brain mask, after
        conforming), pet_mri_corr (inside the brain; reported, not flagged: FDG
        and T1 contrasts differ, so its sign and size vary) and flags
        (``"; "``-separated, "" when fine: missing PET, missing file,
        unreadable, non-finite voxels, all-zero volume, not registered?, low
        template correlation, cannot be normalized, MRI/PET grids differ).
        Flagged rows come first.
    """
    return _qa(cohort, get_grid(grid))[0]


def missingness(cohort: Cohort) -> pd.DataFrame:
    """Missing values per clinical feature (and PET), most missing first.

    Returns
    -------
    pandas.DataFrame
        Columns: feature, n_missing, n_observed, fraction.
    """
    table = cohort.table
    counts = {c: int(table[c].isna().sum()) for c in cohort.clinical_columns}
    counts["pet"] = int((table["pet"] == "").sum())
    out = pd.DataFrame({"feature": list(counts), "n_missing": list(counts.values())})
    out["n_observed"] = len(table) - out["n_missing"]
    out["fraction"] = out["n_missing"] / max(len(table), 1)
    return out.sort_values("fraction", ascending=False, kind="stable").reset_index(drop=True)


def split_balance(table: pd.DataFrame | Cohort) -> pd.DataFrame:
    """Count diagnosis, site and sex, and average age, per split.

    Parameters
    ----------
    table
        A table with a ``split`` column (a cohort table, or the concatenated
        split files of a run); an empty split is shown as ``"(none)"``.

    Returns
    -------
    pandas.DataFrame
        Index: split. Columns: n, ``diagnosis=<value>``, ``site=<value>``,
        ``sex=<value>`` counts, age_mean.
    """
    if isinstance(table, Cohort):
        table = table.table
    if "split" not in table:
        raise ValueError(problem("table", "a table with a `split` column",
                                 f"columns {list(table.columns)}", "split_balance"))
    split = table["split"].fillna("").astype(str).replace("", "(none)")
    out = pd.DataFrame({"n": split.value_counts()})
    for col in ("diagnosis", "site", "sex"):
        if col in table:
            counts = pd.crosstab(split, table[col].fillna("").astype(str).replace("", "(none)"))
            out = out.join(counts.add_prefix(f"{col}="))
    if "age" in table:
        out["age_mean"] = pd.to_numeric(table["age"], errors="coerce").groupby(split).mean()
    order = [s for s in ("train", "val", "test", "(none)") if s in out.index]
    out = out.loc[order + [s for s in out.index if s not in order]]
    out.index.name = "split"
    return out.fillna({c: 0 for c in out.columns if "=" in c})


@dataclass
class QAReport:
    """Result of :func:`run_qa`.

    Attributes
    ----------
    ok
        True when no error was found.
    errors
        Every problem: manifest problems (row order), then volume problems (row
        order: unreadable, non-finite, all-zero, MRI/PET grids differ, brain
        coverage below the minimum, i.e. not registered to MNI space).
    table
        :func:`qa_table` (empty when the manifest could not be read at all).
    missingness
        :func:`missingness` (empty likewise).
    balance
        :func:`split_balance`, or None when the manifest has no split.
    ignored_columns
        Manifest columns used neither as reserved nor as clinical columns.
    """

    ok: bool
    errors: list[str]
    table: pd.DataFrame
    missingness: pd.DataFrame
    balance: pd.DataFrame | None = None
    ignored_columns: list[str] = field(default_factory=list)


def run_qa(manifest: str | Path, grid: Grid | str = "demo_4mm", out_dir: str | Path | None = None,
           clinical_columns: list[str] | None = None, require_targets: bool = True,
           pet_reference: str = "whole_brain") -> QAReport:
    """Check a cohort end to end without raising on bad data.

    Every volume goes through the checks training applies (readable, finite,
    nonzero, brain coverage, MRI/PET on one grid, and the normalization with
    ``pet_reference``, ``data.pet_reference``), so QA reports exactly what
    training would refuse.

    Writes ``qa_table.csv``, ``missingness.csv``, ``errors.txt`` (one error a
    line, empty when fine) and, when the manifest has splits,
    ``split_balance.csv`` into ``out_dir`` when given.
    """
    grid = get_grid(grid)
    cohort, errors = validate_manifest(manifest, clinical_columns, require_targets,
                                       check_images=False)
    table = pd.DataFrame(columns=_COLUMNS)
    miss = pd.DataFrame(columns=["feature", "n_missing", "n_observed", "fraction"])
    balance = None
    if cohort is not None:
        table, image_errors = _qa(cohort, grid, pet_reference)
        errors += image_errors
        miss = missingness(cohort)
        if (cohort.table["split"] != "").any():
            balance = split_balance(cohort)
    report = QAReport(not errors, errors, table, miss, balance,
                      list(cohort.ignored_columns) if cohort is not None else [])
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "qa_table.csv", index=False)
        miss.to_csv(out / "missingness.csv", index=False)
        (out / "errors.txt").write_text("".join(f"{e}\n" for e in errors))
        if balance is not None:
            balance.to_csv(out / "split_balance.csv")
    return report


def qa_main(manifest: str | Path, grid: Grid | str = "demo_4mm",
            out_dir: str | Path | None = None) -> int:
    """Run QA, print a short summary and every error; return the exit code (0 = ok)."""
    grid = get_grid(grid)
    report = run_qa(manifest, grid, out_dir)
    n_rows = report.table["row"].nunique()
    n_flagged = int((report.table["flags"] != "").sum())
    print(f"QA of {manifest} on grid {grid.name}: {n_rows} manifest rows, "
          f"{len(report.table)} volume rows ({n_flagged} flagged), {len(report.errors)} errors")
    if report.ignored_columns:
        print(f"columns not used as clinical features: {report.ignored_columns}")
    for err in report.errors:
        print(f"ERROR {err}")
    if out_dir is not None:
        print(f"wrote qa_table.csv, missingness.csv, errors.txt to {out_dir}")
    return 0 if report.ok else 1
