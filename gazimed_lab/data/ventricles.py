"""Lateral ventricles of the MNI152 template, from the tissue maps nilearn ships.

AAL and AAL3 label grey matter only: they have no ventricles, yet ventricular
enlargement is one of the most robust MRI markers of Alzheimer's disease. This module
derives the lateral ventricles from the template itself, with no extra file and no
download: CSF is what the brain mask holds beyond grey and white matter
(``brain - GM - WM > 0.5``, the 2 mm templates); deep CSF is CSF at least
:data:`DEPTH_MM` inside the brain mask (this drops the sulci and the cortical surface);
of its two largest connected components, the lateral ventricles are the one with the
smaller share of voxels on the midline (the other is the midline CSF: the
interhemispheric fissure, the third ventricle and the quadrigeminal cistern). It is
split at ``x = 0`` into left and right.

:func:`ventricle_labels` puts them on any grid (nearest neighbour), and
:func:`~gazimed_lab.data.atlas.atlas_on_grid` adds them to an atlas named
``aal+ventricles`` or ``aal3+ventricles`` (voxels the atlas already labels keep their
label).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gazimed_lab.data.grid import Grid, get_grid, template_on_grid

__all__ = ["DEPTH_MM", "VENTRICLE_NAMES", "lateral_ventricles", "ventricle_labels"]

#: How deep inside the brain mask CSF must lie to count as ventricular (mm).
DEPTH_MM = 10.0
#: Voxels within this distance of the midline (mm) count as midline.
MIDLINE_MM = 4.0
#: Label ids and names given to the left and right lateral ventricles (outside AAL's ids).
VENTRICLE_NAMES: dict[int, str] = {9001: "Lateral_Ventricle_L", 9002: "Lateral_Ventricle_R"}


@lru_cache(maxsize=1)
def lateral_ventricles() -> np.ndarray:
    """Boolean mask of the lateral ventricles on the 2 mm MNI152 grid (read-only)."""
    from scipy import ndimage

    grid = get_grid("mni152_2mm")
    brain = template_on_grid("brain_mask", grid) > 0.5
    csf = np.clip(template_on_grid("brain_mask", grid) - template_on_grid("gm", grid)
                  - template_on_grid("wm", grid), 0.0, 1.0)
    depth = max(1, round(DEPTH_MM / grid.voxel_size[0]))
    deep = (csf > 0.5) & ndimage.binary_erosion(brain, iterations=depth)
    labels, n = ndimage.label(deep)
    if n < 2:  # pragma: no cover - a property of the shipped template
        raise RuntimeError(f"the MNI152 template must show at least 2 deep CSF components, "
                           f"got {n}")
    sizes = np.bincount(labels.ravel())[1:]
    largest = np.argsort(sizes)[::-1][:2] + 1
    x = grid.affine[0, 0] * np.arange(grid.shape[0]) + grid.affine[0, 3]
    on_midline = np.abs(x)[:, None, None] < MIDLINE_MM
    share = [float((on_midline & (labels == c)).sum() / (labels == c).sum()) for c in largest]
    mask = labels == largest[int(np.argmin(share))]
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=8)
def _labels_cached(grid: Grid) -> np.ndarray:
    import nibabel as nib
    from nilearn.image import resample_img

    source = get_grid("mni152_2mm")
    x = source.affine[0, 0] * np.arange(source.shape[0]) + source.affine[0, 3]
    left = (x < 0)[:, None, None]
    ids = list(VENTRICLE_NAMES)
    mask = lateral_ventricles()
    labels = np.where(mask & left, ids[0], np.where(mask & ~left, ids[1], 0)).astype(np.int16)
    if not grid.matches(labels.shape, source.affine):
        image = resample_img(nib.Nifti1Image(labels, source.affine), target_affine=grid.affine,
                             target_shape=grid.shape, interpolation="nearest",
                             force_resample=True, copy_header=True)
        labels = np.asarray(image.dataobj, dtype=np.int16)
    out = np.asarray(labels, dtype=np.int32)
    out.setflags(write=False)
    return out


def ventricle_labels(grid: Grid | str) -> np.ndarray:
    """Left / right lateral ventricle labels (:data:`VENTRICLE_NAMES`, 0 elsewhere) on a grid."""
    return _labels_cached(get_grid(grid))
