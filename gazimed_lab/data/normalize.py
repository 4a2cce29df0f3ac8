"""Intensity normalization of volumes already on an MNI grid.

MRI
    z-score inside the MNI152 brain mask of the grid; voxels outside the mask
    are set to 0.
PET
    ratio to the mean of a reference region (a standardized uptake value ratio,
    SUVR); voxels outside the brain mask are set to 0. The reference regions
    (:data:`PET_REFERENCES`) are defined in MNI coordinates, so they need no
    atlas download:

    ``whole_brain`` (default)
        the MNI152 brain mask of the grid.
    ``cerebellum``
        brain mask voxels with z < -20 mm and y < -45 mm (cerebellum and the
        lowest occipital cortex at coarse grids).
    ``pons``
        a 16 mm box (+/- 8 mm) centred on MNI (0, -25, -35).
PET - MRI (optional third channel)
    ``pet_minus_mri = z(PET ratio) - z(MRI)``, where ``z(PET ratio)`` is the
    normalized PET standardized to mean 0 and standard deviation 1 inside the
    brain mask, and ``z(MRI)`` is the normalized MRI; 0 outside the mask. It
    highlights voxels whose metabolism is lower than their tissue suggests.

Ratios are scale invariant: ``normalize_pet(k * pet) == normalize_pet(pet)``
for any k > 0, so scanner or unit differences in PET scaling drop out.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gazimed_lab.config import PET_REFERENCES
from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import problem

__all__ = [
    "PET_REFERENCES",
    "brain_mask",
    "normalize_mri",
    "normalize_pet",
    "pet_minus_mri",
    "reference_mask",
]


_PONS_CENTER = np.array([0.0, -25.0, -35.0])
_PONS_HALF_WIDTH_MM = 8.0
_EPS = 1e-6


def brain_mask(grid: Grid | str) -> np.ndarray:
    """Boolean MNI152 brain mask on a grid (read-only)."""
    return _masks(get_grid(grid))["whole_brain"]


def _mni_coordinates(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    xyz = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    return xyz.reshape((3, *grid.shape))


@lru_cache(maxsize=8)
def _masks(grid: Grid) -> dict[str, np.ndarray]:
    brain = template_on_grid("brain_mask", grid) > 0
    x, y, z = _mni_coordinates(grid)
    pons = np.all(
        np.abs(np.stack([x, y, z]) - _PONS_CENTER[:, None, None, None]) <= _PONS_HALF_WIDTH_MM,
        axis=0,
    )
    masks = {
        "whole_brain": brain,
        "cerebellum": brain & (z < -20.0) & (y < -45.0),
        "pons": pons,
    }
    for mask in masks.values():
        mask.setflags(write=False)
    return masks


def reference_mask(reference: str, grid: Grid | str) -> np.ndarray:
    """Boolean mask of a PET reference region on a grid (read-only).

    Raises
    ------
    ValueError
        If ``reference`` is not in :data:`PET_REFERENCES` or the region holds
        no voxel of the grid.
    """
    if reference not in PET_REFERENCES:
        raise ValueError(problem("pet_reference", f"one of {list(PET_REFERENCES)}",
                                 f"`{reference}`", "data.pet_reference"))
    grid = get_grid(grid)
    mask = _masks(grid)[reference]
    if not mask.any():
        raise ValueError(problem(f"PET reference region `{reference}`",
                                 "at least one voxel of the grid", "an empty region",
                                 f"grid {grid.name}", "use a finer grid or `whole_brain`"))
    return mask


def _check_shape(arr: np.ndarray, grid: Grid, what: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != grid.shape:
        raise ValueError(problem(f"{what} array", f"of the grid shape {grid.shape}",
                                 f"shape {arr.shape}", f"grid {grid.name}",
                                 "conform it first with gazimed_lab.data.images.conform_to_grid"))
    return arr


def normalize_mri(arr: np.ndarray, grid: Grid | str) -> np.ndarray:
    """Z-score an MRI volume inside the MNI brain mask; 0 outside.

    Parameters
    ----------
    arr
        Volume on ``grid`` (see :func:`~gazimed_lab.data.images.conform_to_grid`).
    grid
        The grid (or its name).

    Returns
    -------
    numpy.ndarray
        float32 volume with in-mask mean 0 and standard deviation 1.

    Raises
    ------
    ValueError
        If the shape is not the grid's or the volume is constant in the mask.
    """
    grid = get_grid(grid)
    arr = _check_shape(arr, grid, "mri")
    mask = brain_mask(grid)
    values = arr[mask].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    if not std > _EPS * max(abs(mean), 1.0):
        raise ValueError(problem("mri standard deviation inside the brain mask", "> 0",
                                 f"{std:g} (a constant volume)", f"grid {grid.name}"))
    out = np.zeros_like(arr)
    out[mask] = ((values - mean) / std).astype(np.float32)
    return out


def normalize_pet(arr: np.ndarray, grid: Grid | str, reference: str = "whole_brain"
                  ) -> np.ndarray:
    """Divide a PET volume by the mean of a reference region; 0 outside the brain.

    Parameters
    ----------
    arr
        Volume on ``grid``.
    grid
        The grid (or its name).
    reference
        One of :data:`PET_REFERENCES`.

    Returns
    -------
    numpy.ndarray
        float32 ratio volume (reference-region mean 1), 0 outside the brain mask.

    Raises
    ------
    ValueError
        Unknown reference (listing the valid names), wrong shape, or a
        reference-region mean that is not clearly positive.
    """
    grid = get_grid(grid)
    ref = reference_mask(reference, grid)
    arr = _check_shape(arr, grid, "pet")
    ref_mean = float(arr[ref].astype(np.float64).mean())
    scale = float(np.abs(arr).max())
    if not ref_mean > _EPS * max(scale, _EPS):
        raise ValueError(problem(
            f"PET reference region `{reference}` mean", "> 0", f"{ref_mean:g}",
            f"grid {grid.name}",
            "check the PET is registered to MNI space, or choose another of "
            f"{list(PET_REFERENCES)}",
        ))
    mask = brain_mask(grid)
    out = np.zeros_like(arr)
    out[mask] = (arr[mask].astype(np.float64) / ref_mean).astype(np.float32)
    return out


def pet_minus_mri(mri_n: np.ndarray, pet_n: np.ndarray, grid: Grid | str | None = None
                  ) -> np.ndarray:
    """Third channel: PET ratio standardized in the brain minus the MRI z-score.

    ``out = (pet_n - mean_m(pet_n)) / std_m(pet_n) - mri_n`` inside the mask m,
    0 outside. The mask is the grid's brain mask when ``grid`` is given, else
    the nonzero voxels of ``pet_n`` (normalized PET is 0 outside the mask).
    For a subject without PET, use zeros for this channel (do not call this).

    Raises
    ------
    ValueError
        If shapes differ or the PET is constant inside the mask.
    """
    mri_n = np.asarray(mri_n, dtype=np.float32)
    pet_n = np.asarray(pet_n, dtype=np.float32)
    if mri_n.shape != pet_n.shape:
        raise ValueError(problem("pet_n", f"of the same shape as mri_n {mri_n.shape}",
                                 f"{pet_n.shape}", "pet_minus_mri"))
    mask = brain_mask(grid) if grid is not None else pet_n != 0
    if mask.shape != pet_n.shape:
        raise ValueError(problem("pet_n", f"of the grid shape {mask.shape}", f"{pet_n.shape}",
                                 "pet_minus_mri"))
    values = pet_n[mask].astype(np.float64)
    std = float(values.std()) if values.size else 0.0
    if not std > _EPS:
        raise ValueError(problem("PET standard deviation inside the brain mask", "> 0",
                                 f"{std:g}", "pet_minus_mri",
                                 "use zeros for the PET - MRI channel of subjects without PET"))
    out = np.zeros_like(pet_n)
    out[mask] = ((values - values.mean()) / std - mri_n[mask]).astype(np.float32)
    return out
