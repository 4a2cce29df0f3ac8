"""Do interpretability maps point at the disease? Scores against known effect regions.

On a generated cohort the regions where the generator put the atrophy and the
hypometabolism are known (``truth/effect_regions.nii.gz`` beside the manifest).
:func:`localization_auroc` asks how well a map's voxel values separate those regions
from the rest of the brain (0.5 = chance, 1 = every effect voxel ranks above every
other brain voxel). :func:`region_ranking` ranks the regions of an atlas by the mean
absolute map value inside them (the region report of a map).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from gazimed_lab.data.atlas import Atlas
from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import problem, read_nifti

__all__ = ["effect_masks", "localization_auroc", "localization_table", "region_ranking",
           "region_report"]


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive.astype(bool), scores))


def localization_auroc(map3d: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> float:
    """Voxel-level AUROC of ``|map3d|`` for the ``truth`` voxels against the rest of ``brain``.

    Parameters
    ----------
    map3d
        A map on the grid (saliency, occlusion...); its absolute value is the score.
    truth
        Boolean mask of the effect regions.
    brain
        Boolean mask of the voxels to rank (e.g. the MNI brain mask).
    """
    map3d, truth, brain = np.asarray(map3d), np.asarray(truth, bool), np.asarray(brain, bool)
    if not map3d.shape == truth.shape == brain.shape:
        raise ValueError(problem("map, truth and brain", "the same grid shape",
                                 f"{map3d.shape}, {truth.shape}, {brain.shape}", "arguments"))
    inside = truth & brain
    if not inside.any() or inside.sum() == brain.sum():
        raise ValueError(problem("truth mask", "some, not all, of the brain voxels",
                                 f"{int(inside.sum())} of {int(brain.sum())}", "arguments"))
    return _auroc(np.abs(map3d[brain]), truth[brain])


def effect_masks(manifest: str | Path, grid: Grid | str) -> dict[str, np.ndarray]:
    """Read the generator's effect regions beside ``manifest`` (``truth/``), as boolean masks.

    Returns ``{"mri": ..., "pet": ..., "any": ...}`` on ``grid``.
    """
    grid = get_grid(grid)
    folder = Path(manifest).parent / "truth"
    out: dict[str, np.ndarray] = {}
    for kind in ("mri", "pet"):
        path = folder / f"{kind}_effect_mask.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(problem("effect mask", "a file written by the generator",
                                            "a missing path", str(path)))
        img, data = read_nifti(path, "effect mask")
        if not grid.matches(data.shape, img.affine):
            raise ValueError(problem("effect mask", f"on the grid {grid.name} {grid.shape}",
                                     f"shape {data.shape}", str(path)))
        out[kind] = data > 0
    out["any"] = out["mri"] | out["pet"]
    return out


def localization_table(maps: dict[str, np.ndarray], manifest: str | Path,
                       grid: Grid | str) -> pd.DataFrame:
    """AUROC of each map against each effect mask (MRI, PET, any), inside the MNI brain."""
    masks = effect_masks(manifest, grid)
    brain = template_on_grid("brain_mask", grid) > 0
    rows = [{"map": name, **{f"auroc_{kind}": localization_auroc(m, mask, brain)
                            for kind, mask in masks.items()}}
            for name, m in maps.items()]
    return pd.DataFrame(rows)


def region_ranking(map3d: np.ndarray, atlas: Atlas) -> pd.DataFrame:
    """Rank atlas regions by mean ``|map3d|`` inside them (``region``, ``mean_abs``, ``voxels``)."""
    map3d = np.asarray(map3d)
    if map3d.shape != atlas.labels.shape:
        raise ValueError(problem("map", f"the atlas grid shape {atlas.labels.shape}",
                                 f"{map3d.shape}", atlas.name))
    values = np.abs(map3d)
    rows = [{"region": name, "mean_abs": float(values[atlas.labels == i].mean()),
             "voxels": int((atlas.labels == i).sum())}
            for i, name in zip(atlas.ids, atlas.names)]
    table = pd.DataFrame(rows).sort_values("mean_abs", ascending=False, ignore_index=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def region_report(maps: Mapping[str, np.ndarray], atlas: Atlas) -> pd.DataFrame:
    """Tabulate the region report of every map: each one's :func:`region_ranking`, stacked.

    Parameters
    ----------
    maps
        Map name -> map on the atlas grid (saliency, occlusion, attribution...).
    atlas
        The atlas on the maps' grid (:func:`~gazimed_lab.data.atlas.atlas_on_grid`).

    Returns
    -------
    pandas.DataFrame
        ``map``, ``rank`` (1 = the highest mean ``|map|``), ``region``, ``mean_abs``,
        ``share`` (the region's mean over the sum of all regions' means of that map),
        ``voxels``; maps in the given order.
    """
    if not maps:
        raise ValueError(problem("maps", "at least one map", "none", "region_report"))
    tables = []
    for name, map3d in maps.items():
        table = region_ranking(map3d, atlas)
        total = float(table["mean_abs"].sum())
        table["share"] = table["mean_abs"] / total if total > 0 else np.nan
        tables.append(table.assign(map=name))
    out = pd.concat(tables, ignore_index=True)
    return out[["map", "rank", "region", "mean_abs", "share", "voxels"]]
