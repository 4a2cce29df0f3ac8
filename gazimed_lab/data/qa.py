"""Quality control of a cohort: per-volume table, missingness, split balance.

:func:`run_qa` never raises on bad data: it records every manifest problem
(see :class:`~gazimed_lab.data.manifest.ManifestError`) and every volume that
would fail at training time (not registered to MNI space, or an MRI / PET pair that
does not agree in world space once conformed: :mod:`~gazimed_lab.data.agreement`) as
errors, and still tabulates every volume it can read. With several sessions per
subject the tables carry ``session_id``. :func:`cohort_warnings` collects what
is accepted but suspicious (an empty column, one file for two subjects, MRI and
PET swapped, a constant PET, negative MRI intensities, a tiny split): QA reports
it as warnings and training logs it (:func:`warn_cohort`). :func:`qa_main` is
the body of the ``gazimed-lab qa MANIFEST`` command.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from gazimed_lab.data.agreement import agreement_problem, pair_agreement
from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import (
    MIN_COVERAGE,
    ImageError,
    check_values,
    conform_loaded,
    coverage_problem,
    problem,
    read_nifti,
)
from gazimed_lab.data.manifest import SPLITS, Cohort, row_location, validate_manifest
from gazimed_lab.data.normalize import normalize_mri, normalize_pet

__all__ = ["QAReport", "cohort_warnings", "missingness", "qa_main", "qa_table", "row_flags",
           "run_qa", "split_balance", "volume_signals", "warn_cohort"]

log = logging.getLogger(__name__)

#: Below this Pearson correlation to the MNI template (inside the brain mask) a volume is
#: flagged. Registered synthetic volumes (bias field, smoothing, noise) give 0.4-0.9; a
#: 20 mm shift gives about 0.0-0.2.
MIN_TEMPLATE_CORRELATION = 0.3
_TEMPLATE_FOR = {"mri": "t1", "pet": "gm"}
#: Below this many subjects a split is warned about (its metrics mean little).
MIN_SPLIT_SIZE = 3
#: Above this fraction of brain-mask voxels below 0, an MRI's intensities are warned about.
MAX_NEGATIVE_FRACTION = 0.05
_COLUMNS = [
    "row", "subject_id", "modality", "file", "grid_action", "shape", "voxel_size", "min", "mean",
    "max", "std", "nan_count", "brain_coverage", "template_corr", "pet_mri_corr",
    "pair_fov_overlap", "pair_agreement", "flags",
]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


class _Volume:
    """One volume's QA row, conformed data, source image and error (if any)."""

    def __init__(self, r: int, sid: str, modality: str, file: str, session: str = "") -> None:
        self.row: dict = {c: np.nan for c in _COLUMNS}
        self.row.update(row=r, subject_id=sid, modality=modality, file=file, grid_action="",
                        shape="", voxel_size="", flags="")
        if session:
            self.row["session_id"] = session
        self.where = row_location(r, sid, file, session)
        self.data: np.ndarray | None = None
        self.image: nib.spatialimages.SpatialImage | None = None  # the checked source
        self.errors: list[str] = []
        self.signals: dict[str, float] | None = None


def _signals(data: np.ndarray, grid: Grid, mask: np.ndarray) -> dict[str, float]:
    """Return what the warnings read from a conformed volume, inside the MNI brain mask."""
    inside = data[mask]
    return {"t1": _corr(inside, template_on_grid("t1", grid)[mask]),
            "gm": _corr(inside, template_on_grid("gm", grid)[mask]),
            "negative": float(np.mean(inside < 0)) if inside.size else 0.0,
            "min": float(inside.min()) if inside.size else 0.0,
            "mean": float(inside.mean()) if inside.size else 0.0,
            "std": float(inside.std()) if inside.size else 0.0}


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
    vol.image = nib.Nifti1Image(raw, vol.image.affine)  # what training conforms
    data, action, coverage = conform_loaded(vol.image, grid)
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
    vol.signals = _signals(data, grid, mask)
    return vol


Signals = dict[tuple[int, str], dict[str, float]]


def _qa(cohort: Cohort, grid: Grid, pet_reference: str = "whole_brain"
        ) -> tuple[pd.DataFrame, list[str], Signals]:
    mask = template_on_grid("brain_mask", grid) > 0
    rows, errors = [], []
    signals: Signals = {}
    columns = list(_COLUMNS)
    if cohort.has_sessions:
        columns.insert(columns.index("subject_id") + 1, "session_id")
    for i, subject in cohort.table.iterrows():
        r, sid = int(i) + 1, subject["subject_id"]
        session = str(subject.get("session_id", ""))
        mri = _inspect(_Volume(r, sid, "mri", subject["mri"], session), grid, mask,
                       pet_reference)
        pet = _inspect(_Volume(r, sid, "pet", subject["pet"], session), grid, mask,
                       pet_reference)
        errors += mri.errors + pet.errors
        if mri.data is not None and pet.data is not None:
            assert mri.image is not None and pet.image is not None
            corr = _corr(mri.data[mask], pet.data[mask])
            mri.row["pet_mri_corr"] = pet.row["pet_mri_corr"] = corr
            pair = pair_agreement(mri.image, mri.data, pet.image, pet.data, grid)
            for vol in (mri, pet):
                vol.row.update(pair_fov_overlap=pair.fov_overlap, pair_agreement=pair.agreement)
            found = agreement_problem(pair, grid, f"pet: {subject['pet']}; mri: "
                                                  f"{subject['mri']}; "
                                                  f"{row_location(r, sid, None, session)}")
            if found is not None:  # the very check (and message) training applies
                errors.append(found)
                pet.row["flags"] = "; ".join(f for f in (pet.row["flags"], "MRI/PET disagree")
                                             if f)
        rows += [mri.row, pet.row]
        signals.update({(r, v.row["modality"]): v.signals for v in (mri, pet)
                        if v.signals is not None})
    table = pd.DataFrame(rows, columns=columns)
    flagged = (table["flags"] == "").astype(int)
    order = np.lexsort((table["modality"], table["row"], flagged))
    return table.iloc[order].reset_index(drop=True), errors, signals


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
        Columns: row (1-based manifest data row), subject_id, session_id (only
        when the manifest has sessions), modality, file,
        grid_action, shape, voxel_size, min, mean, max, std (of the finite
        source voxels), nan_count, brain_coverage, template_corr (to the MNI T1
        template for MRI, the GM template for PET, inside the brain mask, after
        conforming), pet_mri_corr (inside the brain; reported, not flagged: FDG
        and T1 contrasts differ, so its sign and size vary), pair_fov_overlap and
        pair_agreement (the subject's MRI and PET in world space after conforming,
        on both rows: :func:`~gazimed_lab.data.agreement.pair_agreement`) and flags
        (``"; "``-separated, "" when fine: missing PET, missing file,
        unreadable, non-finite voxels, all-zero volume, not registered?, low
        template correlation, cannot be normalized, MRI/PET disagree).
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
        ``sex=<value>`` counts, age_mean. With sessions (a ``session_id`` column)
        ``n`` counts subjects, a column ``n_sessions`` counts rows, and the other
        counts and the mean age are over sessions.
    """
    if isinstance(table, Cohort):
        table = table.table
    if "split" not in table:
        raise ValueError(problem("table", "a table with a `split` column",
                                 f"columns {list(table.columns)}", "split_balance"))
    split = table["split"].fillna("").astype(str).replace("", "(none)")
    out = pd.DataFrame({"n": split.value_counts()})
    if "session_id" in table:
        out["n"] = table["subject_id"].groupby(split).nunique()
        out["n_sessions"] = split.value_counts()
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


def volume_signals(cohort: Cohort, grid: Grid | str = "demo_4mm") -> Signals:
    """Read and conform every volume of ``cohort`` for :func:`cohort_warnings`.

    Unusable volumes (unreadable, non-finite, all zero) are skipped: they are
    errors, reported by QA and refused when the cache is built.

    Returns
    -------
    dict
        ``{(row, modality): signals}`` with row the 1-based manifest data row.
    """
    grid = get_grid(grid)
    mask = template_on_grid("brain_mask", grid) > 0
    out: Signals = {}
    for i, subject in cohort.table.iterrows():
        for modality in ("mri", "pet"):
            file = subject[modality]
            if not file or not Path(file).is_file():
                continue
            try:
                image, raw = read_nifti(file, modality)
                check_values(raw, modality)
                data = conform_loaded(nib.Nifti1Image(raw, image.affine), grid)[0]
            except (ImageError, ValueError):
                continue
            out[(int(i) + 1, modality)] = _signals(data, grid, mask)
    return out


def _empty_column_warnings(cohort: Cohort) -> list[str]:
    found = []
    for col in cohort.empty_columns:
        if col in cohort.clinical_columns:
            what_happens = ("it is kept because it was requested (data.clinical_columns) but "
                            "imputed in every row, so it carries no information")
        else:
            what_happens = "it is dropped: not used as a clinical feature"
        found.append(problem(col, "a column with a value in at least one row",
                             f"an entirely empty column ({len(cohort)} of {len(cohort)} rows "
                             f"empty); {what_happens}", str(cohort.path),
                             "fill it in or remove the column"))
    return found


def _shared_file_warnings(cohort: Cohort) -> list[str]:
    users: dict[str, list[tuple[int, str, str]]] = {}
    for i, subject in cohort.table.iterrows():
        who = str(subject["subject_id"])
        if cohort.has_sessions:
            who += f"`, session `{subject['session_id']}"
        for col in ("mri", "pet"):
            if subject[col]:
                key = os.path.realpath(subject[col])
                users.setdefault(key, []).append((int(i) + 1, who, col))
    found = []
    for file, uses in users.items():
        if len(uses) < 2:
            continue
        cols = "/".join(dict.fromkeys(c for _, _, c in uses))
        named = ", ".join(f"row {r} (subject `{sid}`, {c})" for r, sid, c in uses)
        found.append(problem(cols, "a file of its own for each subject (session) and modality",
                             f"one file used {len(uses)} times: {named}", file,
                             "check the paths in the manifest (a copied path gives the model "
                             "one image twice, and can put it in two splits)"))
    return found


def _image_warnings(cohort: Cohort, volumes: Signals) -> list[str]:
    found = []
    for i, subject in cohort.table.iterrows():
        r, sid = int(i) + 1, subject["subject_id"]
        mri, pet = volumes.get((r, "mri")), volumes.get((r, "pet"))
        if mri is not None and pet is not None and mri["gm"] > mri["t1"] \
                and pet["t1"] > pet["gm"]:
            found.append(problem(
                "mri/pet", "the T1 MRI in `mri` and the PET in `pet`",
                f"columns that look swapped: the mri correlates {mri['gm']:.2f} with the GM "
                f"(PET-like) template and {mri['t1']:.2f} with the T1 template, the pet "
                f"{pet['t1']:.2f} with T1 and {pet['gm']:.2f} with GM",
                f"mri: {subject['mri']}; pet: {subject['pet']}; {row_location(r, sid)}",
                "swap the two paths of this row"))
        if pet is not None and pet["std"] <= 1e-6 * abs(pet["mean"]):
            found.append(problem(
                "pet", "a volume that varies inside the brain",
                f"a constant PET (std 0 inside the MNI brain mask, value {pet['mean']:g})",
                row_location(r, sid, subject["pet"]),
                "check the export; a constant PET carries no information"))
        if mri is not None and mri["negative"] > MAX_NEGATIVE_FRACTION:
            found.append(problem(
                "mri", f"non-negative intensities (at most {MAX_NEGATIVE_FRACTION:.0%} of the "
                "brain below 0)",
                f"{mri['negative']:.0%} of the MNI brain mask below 0 (min {mri['min']:.3g})",
                row_location(r, sid, subject["mri"]),
                "give the unnormalized T1 (the workbench normalizes it); a z-scored or "
                "offset image is not comparable with the others"))
    return found


def _split_warnings(cohort: Cohort, splits: dict[str, pd.DataFrame] | None) -> list[str]:
    if splits is None:
        split = cohort.table["split"]
        if not (split != "").any():
            return []
        splits = {name: cohort.table[split == name] for name in SPLITS}
    found = []
    for name, part in splits.items():
        subjects = list(dict.fromkeys(part["subject_id"]))
        if 0 < len(subjects) < MIN_SPLIT_SIZE:
            ids = ", ".join(f"`{s}`" for s in subjects)
            found.append(problem(
                f"{name} split", f">= {MIN_SPLIT_SIZE} subjects",
                f"{len(subjects)} subject{'s' if len(subjects) > 1 else ''} ({ids})",
                str(cohort.path),
                "add subjects, or change data.val_fraction / data.test_fraction (or the "
                "manifest's split column); metrics on so few subjects mean little"))
    return found


def cohort_warnings(cohort: Cohort, splits: dict[str, pd.DataFrame] | None = None,
                    grid: Grid | str = "demo_4mm", volumes: Signals | None = None
                    ) -> list[str]:
    """Collect what a cohort gets away with but should not: warnings, never errors.

    An entirely empty column (dropped, or imputed everywhere when requested as a
    clinical column), one image file used by two subjects (or as both MRI and
    PET), MRI and PET that look swapped (the MRI correlates better with the GM
    template than with the T1 template, and the PET the other way round), a
    constant PET inside the brain, an MRI with more than
    :data:`MAX_NEGATIVE_FRACTION` of the brain below 0, and a split of fewer than
    :data:`MIN_SPLIT_SIZE` subjects. Each message names the rows, subjects or
    column, in the style of :func:`~gazimed_lab.data.images.problem`.

    Parameters
    ----------
    cohort
        The cohort (:func:`~gazimed_lab.data.manifest.read_manifest`).
    splits
        The splits of a run; ``None`` reads the manifest's ``split`` column.
    grid
        The grid the volumes are conformed to.
    volumes
        :func:`volume_signals` when already computed (QA computes them while
        inspecting each volume); ``None`` reads every volume once.

    Returns
    -------
    list of str
        The warnings, columns first, then files, volumes (row order) and splits.
    """
    if volumes is None:
        volumes = volume_signals(cohort, grid)
    return (_empty_column_warnings(cohort) + _shared_file_warnings(cohort)
            + _image_warnings(cohort, volumes) + _split_warnings(cohort, splits))


def warn_cohort(cohort: Cohort, splits: dict[str, pd.DataFrame] | None = None,
                grid: Grid | str = "demo_4mm", logger: logging.Logger | None = None
                ) -> list[str]:
    """Log each :func:`cohort_warnings` message at WARNING level and warn once.

    Training calls it when a fit starts (``MNIDataModule.check_for_training``).
    """
    found = cohort_warnings(cohort, splits, grid)
    for text in found:
        (logger or log).warning("%s", text)
    if found:
        warnings.warn(f"{len(found)} cohort warning(s) for {cohort.path}:\n"
                      + "\n".join(found), UserWarning, stacklevel=2)
    return found


@dataclass
class QAReport:
    """Result of :func:`run_qa`.

    Attributes
    ----------
    ok
        True when no error was found.
    errors
        Every problem: manifest problems (row order), then volume problems (row
        order: unreadable, non-finite, all-zero, brain coverage below the minimum,
        i.e. not registered to MNI space, MRI and PET not agreeing in world space).
    table
        :func:`qa_table` (empty when the manifest could not be read at all).
    missingness
        :func:`missingness` (empty likewise).
    balance
        :func:`split_balance`, or None when the manifest has no split.
    ignored_columns
        Manifest columns used neither as reserved nor as clinical columns.
    warnings
        :func:`cohort_warnings`: accepted but suspicious, not errors.
    """

    ok: bool
    errors: list[str]
    table: pd.DataFrame
    missingness: pd.DataFrame
    balance: pd.DataFrame | None = None
    ignored_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_qa(manifest: str | Path, grid: Grid | str = "demo_4mm", out_dir: str | Path | None = None,
           clinical_columns: list[str] | None = None, require_targets: bool = True,
           pet_reference: str = "whole_brain", session_order_column: str | None = None
           ) -> QAReport:
    """Check a cohort end to end without raising on bad data.

    Every volume goes through the checks training applies (readable, finite,
    nonzero, brain coverage, MRI and PET agreeing in world space once conformed,
    and the normalization with ``pet_reference``, ``data.pet_reference``), so QA
    reports exactly what training would refuse. ``session_order_column`` is
    ``data.session_order_column`` (manifests with sessions).

    Writes ``qa_table.csv``, ``missingness.csv``, ``errors.txt`` (one error a
    line, empty when fine), ``warnings.txt`` (:func:`cohort_warnings`, likewise)
    and, when the manifest has splits, ``split_balance.csv`` into ``out_dir``
    when given.
    """
    grid = get_grid(grid)
    cohort, errors = validate_manifest(manifest, clinical_columns, require_targets,
                                       check_images=False,
                                       session_order_column=session_order_column)
    table = pd.DataFrame(columns=_COLUMNS)
    miss = pd.DataFrame(columns=["feature", "n_missing", "n_observed", "fraction"])
    balance = None
    found: list[str] = []
    if cohort is not None:
        table, image_errors, signals = _qa(cohort, grid, pet_reference)
        errors += image_errors
        found = cohort_warnings(cohort, None, grid, signals)
        miss = missingness(cohort)
        if (cohort.table["split"] != "").any():
            balance = split_balance(cohort)
    report = QAReport(not errors, errors, table, miss, balance,
                      list(cohort.ignored_columns) if cohort is not None else [], found)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "qa_table.csv", index=False)
        miss.to_csv(out / "missingness.csv", index=False)
        (out / "errors.txt").write_text("".join(f"{e}\n" for e in errors))
        (out / "warnings.txt").write_text("".join(f"{w}\n" for w in found))
        if balance is not None:
            balance.to_csv(out / "split_balance.csv")
    return report


def row_flags(table: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Return the QA flags of each row of ``rows`` (e.g. predictions), from :func:`qa_table`.

    Matched on ``subject_id``, and on ``session_id`` too when both tables have one, so
    that a session's flags stay on that session's row; a subject's MRI and PET flags are
    joined with ``"; "``. Rows without QA rows or flags get ``""``.
    """
    keys = ["subject_id"]
    if "session_id" in rows.columns and "session_id" in table.columns:
        keys.append("session_id")
    flagged = table.assign(**{k: table[k].astype(str) for k in keys})
    joined = flagged.groupby(keys)["flags"].agg(
        lambda f: "; ".join(str(x) for x in f if isinstance(x, str) and x))
    wanted = rows[keys].astype(str)
    index = (pd.MultiIndex.from_frame(wanted) if len(keys) > 1
             else pd.Index(wanted["subject_id"]))
    return pd.Series(joined.reindex(index).fillna("").to_numpy(), index=rows.index,
                     name="qa_flags")


def qa_main(manifest: str | Path, grid: Grid | str = "demo_4mm",
            out_dir: str | Path | None = None, pet_reference: str = "whole_brain",
            session_order_column: str | None = None) -> int:
    """Run QA, print a short summary and every error; return the exit code (0 = ok).

    ``pet_reference`` and ``session_order_column`` as :func:`run_qa` takes them (the
    training config's ``data.pet_reference`` and ``data.session_order_column``).
    """
    grid = get_grid(grid)
    report = run_qa(manifest, grid, out_dir, pet_reference=pet_reference,
                    session_order_column=session_order_column)
    n_rows = report.table["row"].nunique()
    n_flagged = int((report.table["flags"] != "").sum())
    print(f"QA of {manifest} on grid {grid.name}: {n_rows} manifest rows, "
          f"{len(report.table)} volume rows ({n_flagged} flagged), {len(report.errors)} errors, "
          f"{len(report.warnings)} warnings")
    if report.ignored_columns:
        print(f"columns not used as clinical features: {report.ignored_columns}")
    for err in report.errors:
        print(f"ERROR {err}")
    for text in report.warnings:
        print(f"WARNING {text}")
    if out_dir is not None:
        print(f"wrote qa_table.csv, missingness.csv, errors.txt, warnings.txt to {out_dir}")
    return 0 if report.ok else 1
