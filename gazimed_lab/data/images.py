"""Loading NIfTI volumes once at the door, and conforming them to an MNI grid.

Every image enters the workbench through :func:`load_volume`, which accepts a
path or a nibabel image and rejects, with a message naming the file, what
cannot be used: a missing file, a file nibabel cannot read as NIfTI, complex
or RGB voxels, a truncated or corrupt file, a 4D volume with several frames, non-finite voxels
or an all-zero volume. A 4D volume with a single frame is squeezed to 3D.

:func:`conform_to_grid` then puts the volume on the grid of the run: an image
already on the grid passes untouched; an image in MNI space on another grid
(another voxel size, another orientation) is resampled by
:func:`nilearn.image.resample_img` with its affine respected. An image whose
field of view misses much of the MNI brain is probably not registered to MNI
space and is rejected (or reported by :func:`brain_coverage` for QA). A subject's
MRI and PET are conformed each through its own affine, so they may come on
different grids; :mod:`~gazimed_lab.data.agreement` checks that they lie on each
other afterwards. Coverage
counts voxels of the MNI brain mask that hold brain signal, above the image's
own background, so a shifted image with a noisy or nonzero background fails too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from gazimed_lab.data.grid import Grid, get_grid, template_on_grid

__all__ = [
    "ImageError",
    "ImageInput",
    "brain_coverage",
    "check_values",
    "conform_flagged",
    "conform_loaded",
    "conform_to_grid",
    "coverage_problem",
    "describe_image",
    "load_volume",
    "problem",
    "read_nifti",
    "signal_threshold",
]

ImageInput = str | Path | nib.spatialimages.SpatialImage

#: Default minimum fraction of the MNI brain mask that an image must cover.
MIN_COVERAGE = 0.8


class ImageError(ValueError):
    """A volume cannot be used: missing, unreadable, malformed or not in MNI space."""


def problem(what: str, expected: str, got: str, where: str, fix: str | None = None) -> str:
    """Format one problem as "`what` must be expected, got actual (where); fix".

    Parameters
    ----------
    what, expected, got, where
        The parts of the message; ``where`` names the file and/or the row.
    fix
        What the user can do about it, appended after a semicolon.

    Returns
    -------
    str
        The message.
    """
    text = f"`{what}` must be {expected}, got {got} ({where})"
    return f"{text}; fix: {fix}" if fix else text


def _source_name(img: Any) -> str:
    if isinstance(img, (str, Path)):
        return str(img)
    name = img.get_filename() if hasattr(img, "get_filename") else None
    return str(name) if name else "in-memory image"


def describe_image(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """Short description of a grid: shape, voxel size, orientation codes, origin.

    The origin is the MNI position (mm) of the first voxel's centre.

    Examples
    --------
    >>> describe_image((40, 48, 40), np.diag([-4.0, 4.0, 4.0, 1.0]))
    '(40, 48, 40) 4x4x4 mm LAS origin (0, 0, 0)'
    """
    sizes = nib.affines.voxel_sizes(affine)
    size_text = "x".join(f"{s:g}" for s in np.round(sizes, 3))
    codes = "".join(str(c) for c in nib.aff2axcodes(affine))
    origin = ", ".join(f"{v:g}" for v in np.round(affine[:3, 3], 2))
    return f"{tuple(int(s) for s in shape[:3])} {size_text} mm {codes} origin ({origin})"


def _check_dtype(dtype: np.dtype, what: str, where: str) -> None:
    """Refuse complex and RGB(A) voxels, which a float conversion would garble."""
    dtype = np.dtype(dtype)
    if dtype.names is not None:  # nibabel's RGB / RGBA structured voxels
        kind = ("an RGBA" if "A" in dtype.names else "an RGB" if "R" in dtype.names
                else "a structured")
        raise ImageError(problem(what, "a real-valued scalar volume",
                                 f"{kind} volume, expected a scalar volume", where,
                                 "export one intensity per voxel (not a colour rendering)"))
    if dtype.kind == "c":
        raise ImageError(problem(what, "a real-valued scalar volume", f"{dtype.name} data",
                                 where, "export the magnitude, e.g. np.abs(data)"))


def read_nifti(img: ImageInput, what: str = "image", where: str | None = None
               ) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Read a volume and its voxels without judging the voxel values.

    File-level problems raise; values (NaN, all zero) are left to the caller,
    which lets QA report statistics of a volume that :func:`load_volume` rejects.

    Parameters
    ----------
    img
        Path to a ``.nii``/``.nii.gz`` file or a nibabel image.
    what
        Name of the volume in messages, e.g. ``"mri"``.
    where
        Location in messages; defaults to the file name.

    Returns
    -------
    tuple of (nibabel.spatialimages.SpatialImage, numpy.ndarray)
        The source image (a NIfTI image when read from a file) and its voxels as
        3D float32 (a single-frame 4D volume is squeezed).

    Raises
    ------
    ImageError
        Missing file, not NIfTI, complex or RGB voxels, truncated/corrupt data,
        bad affine, or a volume that is not 3D (or 4D with one frame).
    """
    where = where or _source_name(img)
    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            state = "a directory" if path.is_dir() else "a missing path"
            raise ImageError(problem(what, "an existing NIfTI file", state, where,
                                     "check the path (relative paths start at the manifest's "
                                     "folder)"))
        try:
            image = nib.load(str(path))
        except Exception as exc:  # nibabel raises ImageFileError, OSError, HeaderDataError...
            got = f"a file nibabel cannot read as NIfTI [{exc}]"
            raise ImageError(problem(what, "a NIfTI file (.nii or .nii.gz)", got, where)) from exc
        if not isinstance(image, nib.Nifti1Pair):
            raise ImageError(problem(what, "a NIfTI file (.nii or .nii.gz)",
                                     f"a {type(image).__name__}", where,
                                     "convert it with nibabel, e.g. "
                                     "nib.save(nib.Nifti1Image(data, affine), 'x.nii.gz')"))
    elif isinstance(img, nib.spatialimages.SpatialImage):
        image = img
    else:
        raise ImageError(problem(what, "a NIfTI path or a nibabel image",
                                 f"{type(img).__name__}", where))
    _check_dtype(image.get_data_dtype(), what, where)
    try:
        raw = np.asanyarray(image.dataobj)
        _check_dtype(raw.dtype, what, where)  # an in-memory image's header may differ
        data = np.array(raw, dtype=np.float32)  # never alias input
    except ImageError:
        raise
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError on short files
        raise ImageError(problem(what, "a complete, readable NIfTI file",
                                 f"a truncated or corrupt file [{type(exc).__name__}: {exc}]",
                                 where, "re-export or re-download the file")) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(problem(what, "a 3D volume (or 4D with a single frame)",
                                 f"a {data.ndim}D volume of shape {tuple(data.shape)}", where,
                                 "select one frame, e.g. nilearn.image.index_img(img, 0), or "
                                 "average the frames with nilearn.image.mean_img"))
    affine = image.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        shown = None if affine is None else np.round(affine, 3).tolist()
        raise ImageError(problem(f"{what} affine", "a finite, invertible 4x4 matrix",
                                 f"{shown}", where))
    return image, data


def check_values(data: np.ndarray, what: str = "image", where: str = "in-memory image") -> None:
    """Check that a volume's voxels are all finite and not all zero.

    Raises
    ------
    ImageError
        Naming the number of non-finite voxels, or an all-zero volume.
    """
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - finite.sum())
        raise ImageError(problem(what, "finite in every voxel",
                                 f"{n_bad} NaN/Inf voxels of {data.size}", where,
                                 "replace them, e.g. nilearn.image.math_img('np.nan_to_num(img)', "
                                 "img=...)"))
    if not data.any():
        raise ImageError(problem(what, "a volume with nonzero voxels", "an all-zero volume",
                                 where))


def load_volume(img: ImageInput, what: str = "image", where: str | None = None
                ) -> nib.Nifti1Image:
    """Load a volume and check it once: the door every image goes through.

    Parameters
    ----------
    img
        Path to a ``.nii``/``.nii.gz`` file or a nibabel image.
    what
        Name of the volume in messages, e.g. ``"mri"`` or ``"pet"``.
    where
        Location in messages (file, row); defaults to the file name.

    Returns
    -------
    nibabel.Nifti1Image
        A 3D float32 image held in memory, with the source affine and header.

    Raises
    ------
    ImageError
        See :func:`read_nifti`; also for non-finite voxels or an all-zero volume.
    """
    where = where or _source_name(img)
    image, data = read_nifti(img, what, where)
    check_values(data, what, where)
    header = image.header.copy() if isinstance(image, nib.Nifti1Pair) else None
    out = nib.Nifti1Image(data, image.affine, header)
    out.set_data_dtype(np.float32)
    return out


#: A voxel holds brain signal when it exceeds the background by this fraction of the
#: image's range (background: median of the source volume's faces; top: 99th percentile).
SIGNAL_FRACTION = 0.1


def signal_threshold(data: np.ndarray) -> float:
    """Intensity above which a voxel of ``data`` counts as signal rather than background.

    The background is the median of the six faces of the source volume (background
    in any whole-head or whole-brain acquisition, wherever the affine puts it); the
    threshold lies :data:`SIGNAL_FRACTION` of the way from it to the 99th percentile.
    A constant volume has no signal: its threshold is its value.
    """
    faces = np.concatenate([data[[0, -1]].ravel(), data[:, [0, -1]].ravel(),
                            data[:, :, [0, -1]].ravel()])
    background = float(np.median(faces))
    top = float(np.percentile(data, 99))
    return background + SIGNAL_FRACTION * max(top - background, 0.0)


def _coverage(data: np.ndarray, grid: Grid, threshold: float) -> float:
    mask = template_on_grid("brain_mask", grid) > 0
    return float(np.count_nonzero(data[mask] > threshold) / max(int(mask.sum()), 1))


def coverage_problem(coverage: float, grid: Grid, action: str, what: str, where: str,
                     min_coverage: float = MIN_COVERAGE) -> str | None:
    """Return the message for a brain coverage below ``min_coverage`` (``None`` when fine).

    One wording for training (:func:`conform_to_grid`) and QA
    (:func:`gazimed_lab.data.qa.run_qa`), so QA predicts what training refuses.
    """
    if coverage >= min_coverage:
        return None
    return problem(
        f"{what} brain coverage", f">= {min_coverage:g} of the MNI brain mask holding brain "
        "signal", f"{coverage:.2f} after conforming to grid {grid.name} ({action})", where,
        "the image is probably not registered to MNI space (or its affine is wrong); register "
        "it (e.g. with ANTs or FSL FLIRT/FNIRT) before use, or accept flagged images "
        "explicitly with data.accept_flagged_images=true")


def conform_loaded(image: nib.Nifti1Image, grid: Grid) -> tuple[np.ndarray, str, float]:
    """Conform an image already checked by :func:`load_volume`; also return its coverage.

    Returns
    -------
    tuple of (numpy.ndarray, str, float)
        Volume on the grid, action (see :func:`conform_to_grid`) and brain coverage.
    """
    from nilearn.image import resample_img

    data = np.asanyarray(image.dataobj)
    if grid.matches(data.shape, image.affine):
        out, action = np.asarray(data, dtype=np.float32), "on_grid"
    else:
        resampled = resample_img(
            image, target_affine=grid.affine, target_shape=grid.shape,
            interpolation="continuous", force_resample=True, copy_header=True,
        )
        out = np.asarray(resampled.dataobj, dtype=np.float32)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        action = f"resampled from {describe_image(data.shape, image.affine)}"
    return out, action, _coverage(out, grid, signal_threshold(np.asarray(data)))


def conform_flagged(img: ImageInput, grid: Grid | str,
                    min_coverage: float | None = MIN_COVERAGE, what: str = "image",
                    where: str | None = None) -> tuple[np.ndarray, str, str | None]:
    """Conform like :func:`conform_to_grid`, returning the coverage flag instead of raising.

    Returns
    -------
    tuple of (numpy.ndarray, str, str or None)
        Volume on the grid, action, and the :func:`coverage_problem` message when
        the image is flagged as probably not in MNI space (``None`` when fine).

    Raises
    ------
    ImageError
        If the image is not usable (see :func:`load_volume`).
    """
    grid = get_grid(grid)
    where = where or _source_name(img)
    image = load_volume(img, what, where)
    data, action, coverage = conform_loaded(image, grid)
    found = None if min_coverage is None else coverage_problem(
        coverage, grid, action, what, where, min_coverage)
    return data, action, found


def conform_to_grid(img: ImageInput, grid: Grid | str, min_coverage: float | None = MIN_COVERAGE,
                    what: str = "image", where: str | None = None,
                    accept_flagged: bool = False) -> tuple[np.ndarray, str]:
    """Put a volume on an MNI grid, respecting its affine.

    Parameters
    ----------
    img
        Path or nibabel image (checked by :func:`load_volume`).
    grid
        Target grid (a :class:`~gazimed_lab.data.grid.Grid` or a grid name).
    min_coverage
        Minimum fraction of the grid's MNI brain-mask voxels that must hold
        brain signal (above :func:`signal_threshold`) after conforming; below
        it the image is probably not registered to MNI space. ``None``
        disables the check.
    what, where
        Names used in messages (see :func:`load_volume`).
    accept_flagged
        Accept an image below ``min_coverage`` with a warning instead of an
        error (``data.accept_flagged_images``).

    Returns
    -------
    tuple of (numpy.ndarray, str)
        The float32 volume on the grid and the action taken: ``"on_grid"``
        (data untouched) or ``"resampled from <shape> <voxel size> <orientation>"``.

    Raises
    ------
    ImageError
        If the image is not usable or covers too little of the MNI brain.
    """
    data, action, found = conform_flagged(img, grid, min_coverage, what, where)
    if found is not None:
        if not accept_flagged:
            raise ImageError(found)
        warnings.warn(f"{found} [accepted because data.accept_flagged_images is true]",
                      UserWarning, stacklevel=2)
    return data, action


def brain_coverage(img: ImageInput, grid: Grid | str, what: str = "image") -> float:
    """Fraction of the grid's MNI brain mask holding brain signal once conformed.

    Signal means above :func:`signal_threshold` (background noise or a nonzero
    background does not count).

    A registered whole-brain image covers nearly 1.0; an image whose field of
    view misses part of the MNI brain (not registered, cropped) covers less.
    """
    image = load_volume(img, what)
    return conform_loaded(image, get_grid(grid))[2]
