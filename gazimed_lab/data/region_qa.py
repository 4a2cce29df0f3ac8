"""Per-region intensity outliers: subjects whose regional mean is far from the cohort's.

Each subject's MRI and PET are conformed to the grid and normalized as training does
(:func:`~gazimed_lab.data.normalize.normalize_mri`: z-scored in the MNI brain mask;
:func:`~gazimed_lab.data.normalize.normalize_pet`: divided by the mean of the PET
reference region), then averaged within each region of an atlas (AAL by default, or
any label NIfTI with its names file; :func:`~gazimed_lab.data.atlas.atlas_on_grid`).

Per modality and region, a subject's robust z is ``(x - median) / (1.4826 MAD)`` over
the cohort (the mean absolute deviation times 1.2533 when the MAD is 0); regions with
fewer than ``min_subjects`` values get none. An outlier (``|z| > threshold``, 4 by
default) names the subject, the modality and the region: a local registration failure,
a lesion, an artefact or a field-of-view cut that the whole-volume checks of
:mod:`gazimed_lab.data.qa` average away. A volume that cannot be read or normalized is
listed in :attr:`RegionQA.skipped` with the reason (QA reports it as an error too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gazimed_lab.data.atlas import Atlas, atlas_on_grid
from gazimed_lab.data.grid import Grid, get_grid
from gazimed_lab.data.images import ImageError, conform_to_grid
from gazimed_lab.data.manifest import Cohort, read_manifest, row_location
from gazimed_lab.data.normalize import normalize_mri, normalize_pet

__all__ = ["RegionQA", "region_outliers", "region_qa", "regional_means", "robust_z"]

#: MAD -> standard deviation of a normal distribution; mean absolute deviation -> sd.
_MAD_SCALE, _MEAN_AD_SCALE = 1.4826, 1.2533
OUTLIER_COLUMNS = ["subject_id", "modality", "region", "value", "median", "robust_z"]


@dataclass
class RegionQA:
    """Regional means of a cohort and their outliers.

    Attributes
    ----------
    means
        One row per subject (and session) and modality: the key columns, ``modality``
        (``mri`` / ``pet``), then one column per atlas region.
    outliers
        ``subject_id`` [``session_id``], ``modality``, ``region``, ``value``,
        ``median``, ``robust_z``: ``|robust_z| > threshold``, largest first.
    skipped
        ``subject_id``, ``modality``, ``file``, ``reason`` of volumes not used.
    atlas, threshold
        The atlas name and the limit used.
    """

    means: pd.DataFrame
    outliers: pd.DataFrame
    skipped: pd.DataFrame
    atlas: str
    threshold: float
    regions: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line: how many subjects, regions and outliers."""
        n = self.means["subject_id"].nunique() if len(self.means) else 0
        return (f"{len(self.outliers)} regional means beyond |robust z| {self.threshold:g} "
                f"({self.outliers['subject_id'].nunique()} subjects), over {n} subjects and "
                f"{len(self.regions)} {self.atlas} regions; {len(self.skipped)} volumes skipped")


def _cohort(cohort: Cohort | str | Path) -> Cohort:
    if isinstance(cohort, Cohort):
        return cohort
    return read_manifest(cohort, require_targets=False, check_images=False)


def regional_means(cohort: Cohort | str | Path, grid: Grid | str, atlas: str | Path | Atlas = "aal",
                   names: str | Path | None = None, pet_reference: str = "whole_brain"
                   ) -> tuple[pd.DataFrame, pd.DataFrame, Atlas]:
    """Each subject's normalized MRI and PET mean in each atlas region.

    Returns
    -------
    tuple
        The means table and the skipped volumes (see :class:`RegionQA`), and the atlas.
    """
    grid = get_grid(grid)
    regions = atlas if isinstance(atlas, Atlas) else atlas_on_grid(grid, atlas, names)
    cohort = _cohort(cohort)
    keys = ["subject_id", "session_id"] if "session_id" in cohort.table.columns else ["subject_id"]
    rows, skipped = [], []
    for i, row in cohort.table.iterrows():
        for modality in ("mri", "pet"):
            path = row[modality]
            if not path:
                continue
            where = row_location(int(i) + 1, row["subject_id"], path)
            try:
                data, _ = conform_to_grid(path, grid,
                                          min_coverage=None, what=modality, where=where)
                volume = (normalize_mri(data, grid) if modality == "mri"
                          else normalize_pet(data, grid, pet_reference))
            except (ImageError, ValueError) as exc:
                skipped.append({"subject_id": row["subject_id"], "modality": modality,
                                "file": path, "reason": str(exc)})
                continue
            rows.append({**{k: row[k] for k in keys}, "modality": modality,
                         **dict(zip(regions.names, regions.region_means(volume)))})
    means = pd.DataFrame(rows, columns=[*keys, "modality", *regions.names])
    return means, pd.DataFrame(skipped, columns=["subject_id", "modality", "file", "reason"]), \
        regions


def robust_z(values: np.ndarray, min_subjects: int = 5) -> np.ndarray:
    """Robust z of each value against the others' median and MAD (module docstring).

    NaN values stay NaN; fewer than ``min_subjects`` finite values, or no spread, give NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size < min_subjects:
        return np.full_like(values, np.nan)
    median = np.median(finite)
    spread = _MAD_SCALE * np.median(np.abs(finite - median))
    if spread == 0:
        spread = _MEAN_AD_SCALE * np.mean(np.abs(finite - median))
    if spread == 0:
        return np.full_like(values, np.nan)
    return (values - median) / spread


def region_outliers(means: pd.DataFrame, threshold: float = 4.0, min_subjects: int = 5
                    ) -> pd.DataFrame:
    """Rows of :attr:`RegionQA.outliers` from a means table: ``|robust z| > threshold``."""
    if not threshold > 0:
        raise ValueError(f"`threshold` must be > 0, got {threshold}")
    keys = [c for c in ("subject_id", "session_id") if c in means.columns]
    regions = [c for c in means.columns if c not in (*keys, "modality")]
    found = []
    for modality, part in means.groupby("modality", sort=False):
        for region in regions:
            values = part[region].to_numpy(float)
            z = robust_z(values, min_subjects)
            hit = np.flatnonzero(np.abs(np.nan_to_num(z)) > threshold)
            median = float(np.nanmedian(values)) if np.isfinite(values).any() else np.nan
            for j in hit:
                found.append({**{k: part[k].iloc[j] for k in keys}, "modality": modality,
                              "region": region, "value": float(values[j]), "median": median,
                              "robust_z": float(z[j])})
    columns = [*keys, *OUTLIER_COLUMNS[1:]]
    table = pd.DataFrame(found, columns=columns)
    order = table["robust_z"].abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def region_qa(cohort: Cohort | str | Path, grid: Grid | str, atlas: str | Path | Atlas = "aal",
              names: str | Path | None = None, pet_reference: str = "whole_brain",
              threshold: float = 4.0, min_subjects: int = 5,
              out_dir: str | Path | None = None) -> RegionQA:
    """Regional means and their outliers for a cohort (a :class:`Cohort` or a manifest).

    Parameters
    ----------
    cohort
        The cohort, or its manifest (read without requiring targets).
    grid
        The grid of the run (volumes are conformed to it).
    atlas, names
        ``aal`` / ``aal3`` or a label NIfTI with its names file.
    pet_reference
        The PET reference region (``data.pet_reference``).
    threshold, min_subjects
        Outlier limit on ``|robust z|``; fewest subjects for a z.
    out_dir
        When given, write ``region_means.csv``, ``region_outliers.csv`` and
        ``region_skipped.csv`` there.
    """
    means, skipped, regions = regional_means(cohort, grid, atlas, names, pet_reference)
    outliers = region_outliers(means, threshold, min_subjects)
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in (("region_means", means), ("region_outliers", outliers),
                            ("region_skipped", skipped)):
            table.to_csv(folder / f"{name}.csv", index=False)
    return RegionQA(means, outliers, skipped, regions.name, float(threshold), regions.names)
