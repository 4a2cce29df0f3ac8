"""MNI grids by name, and the MNI152 template and masks on any grid.

Named grids
-----------
``mni152_2mm``
    The FSL MNI152 2 mm grid, 91 x 109 x 91, radiological x flip (affine
    ``diag(-2, 2, 2)``, origin ``(90, -126, -72)``).
``mni152_1mm``
    The FSL MNI152 1 mm grid, 182 x 218 x 182.
``demo_4mm``
    A coarse 4 mm grid, 40 x 48 x 40, covering the MNI brain; used by the
    ``cpu-demo`` preset and the embedded cohort.

A custom grid is a shape plus a 4 x 4 affine (``data.grid_shape`` /
``data.grid_affine`` in the config). The templates come from nilearn's
package data (MNI152 2009), never from a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["GRIDS", "Grid", "get_grid", "grid_from_config", "template_on_grid"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid in MNI space: a name, a 3D shape and a 4 x 4 affine (mm)."""

    name: str
    shape: tuple[int, int, int]
    affine_tuple: tuple[tuple[float, ...], ...]

    @property
    def affine(self) -> np.ndarray:
        """The 4 x 4 voxel-to-MNI affine as a float64 array."""
        return np.array(self.affine_tuple, dtype=np.float64)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm."""
        sizes = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))

    def matches(self, shape: tuple[int, ...], affine: np.ndarray, atol: float = 1e-3) -> bool:
        """Whether an image of this shape and affine already lies on the grid."""
        return tuple(shape[:3]) == self.shape and np.allclose(affine, self.affine, atol=atol)

    def empty_image(self, dtype: Any = np.float32) -> nib.Nifti1Image:
        """Return a zero image on this grid (for resampling targets)."""
        return nib.Nifti1Image(np.zeros(self.shape, dtype=dtype), self.affine)

    def key(self) -> str:
        """Return a string that identifies the grid exactly (for cache keys)."""
        return f"{self.shape}|{np.round(self.affine, 6).tolist()}"


def _make(name: str, shape: tuple[int, int, int], spacing: float,
          origin: tuple[float, float, float]) -> Grid:
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return Grid(name, shape, tuple(tuple(float(v) for v in row) for row in affine))


GRIDS: dict[str, Grid] = {
    "mni152_2mm": _make("mni152_2mm", (91, 109, 91), 2.0, (90.0, -126.0, -72.0)),
    "mni152_1mm": _make("mni152_1mm", (182, 218, 182), 1.0, (90.0, -126.0, -72.0)),
    "demo_4mm": _make("demo_4mm", (40, 48, 40), 4.0, (78.0, -114.0, -72.0)),
}


def get_grid(
    name: str | Grid = "mni152_2mm",
    shape: list[int] | tuple[int, ...] | None = None,
    affine: Any | None = None,
) -> Grid:
    """Return a named grid, or a custom one from ``shape`` and ``affine``.

    Raises
    ------
    ValueError
        If the name is unknown or the custom shape/affine is malformed.
    """
    if isinstance(name, Grid):
        return name
    if shape is not None or affine is not None:
        if shape is None or affine is None:
            raise ValueError("custom grid needs both `grid_shape` and `grid_affine`, got only one")
        shape_t = tuple(int(s) for s in shape)
        aff = np.asarray(affine, dtype=np.float64)
        if len(shape_t) != 3 or any(s < 1 for s in shape_t):
            raise ValueError(f"`grid_shape` must be 3 positive integers, got {list(shape)}")
        if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff)) < 1e-9:
            raise ValueError(f"`grid_affine` must be an invertible 4x4 matrix, got {aff.tolist()}")
        return Grid(
            name if name not in GRIDS else "custom",
            shape_t,
            tuple(tuple(float(v) for v in row) for row in aff),
        )
    if name not in GRIDS:
        raise ValueError(
            f"`data.grid` must be one of {sorted(GRIDS)} (or set grid_shape + grid_affine), "
            f"got `{name}`"
        )
    return GRIDS[name]


def grid_from_config(cfg: Any) -> Grid:
    """Return the grid named by a config's ``data`` section."""
    data = cfg.data
    return get_grid(data.grid, data.get("grid_shape"), data.get("grid_affine"))


_TEMPLATE_LOADERS = ("t1", "gm", "wm", "brain_mask")


@lru_cache(maxsize=16)
def _template_cached(kind: str, grid: Grid) -> np.ndarray:
    from nilearn import datasets, image

    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "brain_mask": datasets.load_mni152_brain_mask,
    }
    # Start from the 1 mm template when the grid is finer than 2 mm.
    resolution = 1 if min(grid.voxel_size) < 2.0 else 2
    src = loaders[kind](resolution=resolution)
    interp = "nearest" if kind == "brain_mask" else "continuous"
    out = image.resample_img(
        src,
        target_affine=grid.affine,
        target_shape=grid.shape,
        interpolation=interp,
        force_resample=True,
        copy_header=True,
    )
    data = np.asarray(out.get_fdata(), dtype=np.float32)
    data = np.nan_to_num(data, nan=0.0)
    if kind == "brain_mask":
        data = (data > 0.5).astype(np.float32)
    else:
        data = np.clip(data, 0.0, None)
    data.setflags(write=False)
    return data


def template_on_grid(kind: str, grid: Grid | str = "mni152_2mm") -> np.ndarray:
    """MNI152 template (``t1``, ``gm``, ``wm`` or ``brain_mask``) resampled onto a grid.

    The result is read-only float32 (masks are 0/1); copy it before editing.
    """
    if kind not in _TEMPLATE_LOADERS:
        raise ValueError(f"`kind` must be one of {list(_TEMPLATE_LOADERS)}, got `{kind}`")
    return _template_cached(kind, get_grid(grid))
