"""Brain slice figures: nilearn orthogonal views, PET-on-MRI overlays, slice mosaics.

Images are nibabel images or NIfTI paths. Templates come from
``gazimed_lab.data.grid.template_on_grid`` (nilearn's package data): nothing
downloads. Every function returns the matplotlib Figure and saves it when
``output_file`` is given; nothing calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import read_nifti
from gazimed_lab.viz._figures import figure_of, save_figure

__all__ = [
    "ImageLike",
    "as_image",
    "image_brain_mask",
    "plot_brain_outline_on_template",
    "plot_map_on_template",
    "plot_mosaic",
    "plot_orthogonal",
    "plot_pet_on_mri",
    "plot_slice",
    "slice_count",
    "template_image",
]

ImageLike = Any  # nibabel image, str or Path
_AXES = {"x": 0, "y": 1, "z": 2, "sagittal": 0, "coronal": 1, "axial": 2}
AXIS_NAMES = ("sagittal", "coronal", "axial")


def as_image(img: ImageLike, what: str = "image") -> nib.Nifti1Image:
    """Read a path or a nibabel image into a 3D float32 image held in memory.

    The volume is read by :func:`gazimed_lab.data.images.read_nifti`, the loader
    every image of the workbench goes through; voxel values are not judged (a
    volume with NaN or all zeros can still be drawn). A 4D image with a single
    frame is squeezed to 3D.

    Parameters
    ----------
    img
        Path to a ``.nii``/``.nii.gz`` file or a nibabel image.
    what
        Name of the image in messages, e.g. ``"pet"``.

    Returns
    -------
    nibabel.Nifti1Image
        The voxels (float32) with the source affine and header.

    Raises
    ------
    gazimed_lab.data.images.ImageError
        A ``ValueError`` naming the file: missing, not NIfTI, truncated, not 3D
        (or 4D with one frame), or with an unusable affine.
    """
    image, data = read_nifti(img, what)
    header = image.header.copy() if isinstance(image, nib.Nifti1Pair) else None
    out = nib.Nifti1Image(data, image.affine, header)
    out.set_data_dtype(np.float32)
    return out


def _canonical(img: ImageLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """RAS+ data (float32, NaN -> 0) and affine."""
    canon = nib.as_closest_canonical(as_image(img, what))
    data = np.nan_to_num(np.asarray(canon.dataobj, dtype=np.float32))
    return data, canon.affine


def _axis(axis: str | int) -> int:
    if isinstance(axis, int) and axis in (0, 1, 2):
        return axis
    if axis not in _AXES:
        raise ValueError(f"`axis` must be one of x, y, z (sagittal, coronal, axial), got `{axis}`")
    return _AXES[str(axis)]


def slice_count(img: ImageLike, axis: str | int = "z") -> int:
    """Count the slices along ``axis`` (after reorientation to RAS)."""
    return int(nib.as_closest_canonical(as_image(img)).shape[_axis(axis)])


def _index_of(affine: np.ndarray, axis: int, coord_mm: float, size: int) -> int:
    return int(np.clip(round((coord_mm - affine[axis, 3]) / affine[axis, axis]), 0, size - 1))


def _coord_of(affine: np.ndarray, axis: int, index: int) -> float:
    return float(affine[axis, 3] + affine[axis, axis] * index)


def _plane(data: np.ndarray, affine: np.ndarray, axis: int, index: int
           ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cut a 2D slice oriented for ``imshow(origin="lower")`` and its extent in mm."""
    plane = np.take(data, index, axis=axis).T
    h, v = [d for d in range(3) if d != axis]
    (h0, h1), (v0, v1) = [
        (float(affine[d, 3] - affine[d, d] / 2), float(affine[d, 3] + affine[d, d] * (
            data.shape[d] - 0.5)))
        for d in (h, v)
    ]
    return plane, (h0, h1, v0, v1)


def _robust_range(data: np.ndarray) -> tuple[float, float]:
    values = data[data != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(min(low, 0.0)), float(high if high > low else low + 1.0)


def _mm_labels(ax: Axes, axis: int) -> None:
    h, v = [("x", "y", "z")[d] for d in range(3) if d != axis]
    ax.set(xlabel=f"{h} (mm, MNI)", ylabel=f"{v} (mm, MNI)")
    if axis != 0:
        ax.text(0.02, 0.97, "L", transform=ax.transAxes, color="white", va="top",
                fontweight="bold")
        ax.text(0.98, 0.97, "R", transform=ax.transAxes, color="white", va="top", ha="right",
                fontweight="bold")


def plot_slice(
    img: ImageLike, axis: str | int = "z", index: int | None = None,
    coord: float | None = None, ax: Axes | None = None, cmap: str = "gray",
    vmin: float | None = None, vmax: float | None = None, overlay: ImageLike | None = None,
    overlay_cmap: str = "hot", alpha: float = 0.5, overlay_threshold: float | None = None,
    colorbar: bool = True, cbar_label: str = "intensity (a.u.)",
    overlay_label: str = "PET (a.u.)", title: str | None = None,
    output_file: str | Path | None = None,
) -> Figure:
    """One slice with matplotlib (fast: used by the widgets), optionally with an overlay.

    Parameters
    ----------
    img
        Background image (path or nibabel image).
    axis
        ``"x"``/``"sagittal"``, ``"y"``/``"coronal"`` or ``"z"``/``"axial"``.
    index, coord
        Slice by voxel index (RAS-reoriented) or by MNI coordinate in mm; default middle.
    ax
        Axes to draw into.
    cmap, vmin, vmax
        Background colour map and range (default: 1st-99.5th percentile of non-zero voxels).
    overlay, overlay_cmap, alpha, overlay_threshold
        Image drawn on top (resampled to ``img`` if needed); voxels at or below the
        threshold (default 0) are transparent.
    colorbar, cbar_label, overlay_label
        Colour bars and their labels.
    title, output_file
        Title (default names the plane and its coordinate); file to save.
    """
    dim = _axis(axis)
    data, affine = _canonical(img, "image")
    if index is None:
        index = (_index_of(affine, dim, coord, data.shape[dim]) if coord is not None
                 else data.shape[dim] // 2)
    if not 0 <= index < data.shape[dim]:
        raise ValueError(f"`index` must be in [0, {data.shape[dim] - 1}], got {index}")
    fig, ax = (figure_of(ax), ax) if ax is not None else _created((5.4, 5.0))
    plane, extent = _plane(data, affine, dim, index)
    low, high = _robust_range(data)
    shown = ax.imshow(plane, cmap=cmap, origin="lower", extent=extent,
                      vmin=low if vmin is None else vmin, vmax=high if vmax is None else vmax,
                      interpolation="nearest")
    if colorbar:  # with an overlay, the background's bar goes below the image
        below: dict[str, Any] = (
            {"orientation": "horizontal", "pad": 0.13} if overlay is not None else {})
        fig.colorbar(shown, ax=ax, label=cbar_label, fraction=0.046, **({"pad": 0.02} | below))
    if overlay is not None:
        over = as_image(overlay, "overlay")
        base = as_image(img)
        if over.shape[:3] != base.shape[:3] or not np.allclose(over.affine, base.affine, atol=1e-3):
            from nilearn.image import resample_to_img

            over = resample_to_img(over, base, interpolation="continuous",
                                   force_resample=True, copy_header=True)
        odata, oaffine = _canonical(over, "overlay")
        oplane, _ = _plane(odata, oaffine, dim, index)
        thr = 0.0 if overlay_threshold is None else overlay_threshold
        olow, ohigh = _robust_range(odata)
        layer = ax.imshow(np.ma.masked_less_equal(oplane, thr), cmap=overlay_cmap, alpha=alpha,
                          origin="lower", extent=extent, vmin=max(olow, thr), vmax=ohigh,
                          interpolation="nearest")
        if colorbar:
            fig.colorbar(layer, ax=ax, label=overlay_label, fraction=0.046, pad=0.02)
    _mm_labels(ax, dim)
    ax.set_title(title or f"{AXIS_NAMES[dim]} {'xyz'[dim]} = "
                 f"{_coord_of(affine, dim, index):.0f} mm (slice {index + 1}/{data.shape[dim]})")
    return save_figure(fig, output_file)


def _created(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=figsize)
    plt.close(fig)
    return fig, ax


def plot_mosaic(
    images: Mapping[str, ImageLike], axis: str | int = "z", n_slices: int = 5,
    coords: Sequence[float] | None = None, cmap: str = "gray",
    cbar_label: str = "intensity (a.u.)", figure: Figure | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Grid of slices: one row per image (subject / modality), one column per position.

    Parameters
    ----------
    images
        ``label -> image``; labels name the rows (e.g. ``"sub-001 MRI"``).
    axis
        Slicing axis (``"x"``, ``"y"``, ``"z"``).
    n_slices
        Number of columns, spread over the middle 70 % of the first image's brain.
    coords
        MNI coordinates (mm) of the columns instead.
    cmap, cbar_label
        Colour map and the label of each row's colour bar (rows are scaled separately).
    figure, output_file, title
        Figure to draw into, file to save, title.
    """
    if not images:
        raise ValueError("`images` must hold at least one image, got none")
    if coords is None and n_slices < 1:
        raise ValueError(f"`n_slices` must be >= 1, got {n_slices}")
    if coords is not None and len(coords) == 0:
        raise ValueError("`coords` must hold at least one MNI coordinate (mm), got none")
    dim = _axis(axis)
    vols = {label: _canonical(img, f"images[{label!r}]") for label, img in images.items()}
    if coords is None:
        data, affine = next(iter(vols.values()))
        low, high = _robust_range(data)
        inside = np.flatnonzero((data > low + 0.1 * (high - low)).any(axis=tuple(
            d for d in range(3) if d != dim)))
        first, last = (inside[0], inside[-1]) if inside.size else (0, data.shape[dim] - 1)
        span = np.linspace(first + 0.15 * (last - first), last - 0.15 * (last - first), n_slices)
        coords = [_coord_of(affine, dim, round(i)) for i in span]
    n_rows, n_cols = len(vols), len(coords)
    fig = figure if figure is not None else plt.figure(figsize=(1.9 * n_cols + 1.6,
                                                                 1.9 * n_rows + 0.7))
    if figure is None:
        plt.close(fig)
    grid = fig.subplots(n_rows, n_cols + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1] * n_cols + [0.06]})
    for r, (label, (data, affine)) in enumerate(vols.items()):
        low, high = _robust_range(data)
        shown = None
        for c, mm in enumerate(coords):
            ax = grid[r, c]
            index = _index_of(affine, dim, mm, data.shape[dim])
            plane, extent = _plane(data, affine, dim, index)
            shown = ax.imshow(plane, cmap=cmap, origin="lower", extent=extent, vmin=low,
                              vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{'xyz'[dim]} = {mm:.0f} mm", fontsize="medium")
            if c == 0:
                ax.set_ylabel(label, fontsize="medium")
        assert shown is not None  # coords is not empty (checked above)
        fig.colorbar(shown, cax=grid[r, -1], label=cbar_label)
    fig.suptitle(title or f"{AXIS_NAMES[dim]} slices (MNI mm; left of image = subject left)")
    # Leave room above the column titles for the figure title (0.5 inch).
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return save_figure(fig, output_file)


# ---------------------------------------------------------------- nilearn views
def _nilearn_target(figure: Figure | None, axes: Axes | None,
                    figsize: tuple[float, float]) -> dict[str, Any]:
    if axes is not None:
        return {"axes": axes, "figure": axes.figure}
    if figure is None:
        figure = plt.figure(figsize=figsize)
        plt.close(figure)
    return {"figure": figure}


def _finish(display: Any, cbar_label: str | None, output_file: str | Path | None) -> Figure:
    cbar = getattr(display, "_cbar", None)
    if cbar is not None and cbar_label:
        cbar.set_label(cbar_label, color=cbar.ax.yaxis.label.get_color(), fontsize="small")
    return save_figure(display.frame_axes.figure, output_file)


def plot_orthogonal(
    img: ImageLike, title: str | None = None, kind: str = "anat", cmap: str = "gray",
    cbar_label: str = "intensity (a.u.)", display_mode: str = "ortho",
    cut_coords: Any = None, vmin: float | None = None, vmax: float | None = None,
    colorbar: bool = True, figure: Figure | None = None, axes: Axes | None = None,
    output_file: str | Path | None = None, **kwargs: Any,
) -> Figure:
    """Orthogonal (or x/y/z/mosaic) nilearn view of one image with a colour bar.

    Parameters
    ----------
    img
        Path or nibabel image.
    title
        Title drawn in the figure.
    kind
        ``"anat"`` (``nilearn.plotting.plot_anat``, grey) or ``"img"`` (``plot_img``,
        any colour map, e.g. PET with ``cmap="hot"``).
    cmap, cbar_label, vmin, vmax, colorbar
        Colour map, colour bar label (units), range, colour bar on/off.
    display_mode, cut_coords
        As in nilearn (``"ortho"``, ``"x"``, ``"z"``, ``"mosaic"``...; MNI mm).
    figure, axes, output_file
        Figure or Axes to draw into; file to save.
    **kwargs
        Passed to the nilearn function.
    """
    from nilearn import plotting

    image = as_image(img)
    dim = kwargs.pop("dim", 0)
    target = _nilearn_target(figure, axes, (7.5, 3.0))
    common = {"cut_coords": cut_coords, "display_mode": display_mode, "title": title,
              "colorbar": colorbar, "vmin": vmin, "vmax": vmax, "cmap": cmap, **target, **kwargs}
    if kind == "anat":
        display = plotting.plot_anat(image, dim=dim, **common)
    elif kind == "img":
        display = plotting.plot_img(image, **common)
    else:
        raise ValueError(f"`kind` must be 'anat' or 'img', got `{kind}`")
    return _finish(display, cbar_label, output_file)


def plot_pet_on_mri(
    mri: ImageLike, pet: ImageLike, alpha: float = 0.5, threshold: float | None = None,
    cmap: str = "hot", title: str | None = None, cbar_label: str = "PET (a.u.)",
    display_mode: str = "ortho", cut_coords: Any = None, figure: Figure | None = None,
    axes: Axes | None = None, output_file: str | Path | None = None,
) -> Figure:
    """PET drawn over the MRI (nilearn ``plot_anat`` + ``add_overlay``) with a PET colour bar.

    ``threshold`` hides PET values at or below it (default: 5 % of the robust maximum).
    """
    from nilearn import plotting

    mri_img, pet_img = as_image(mri, "mri"), as_image(pet, "pet")
    if threshold is None:
        threshold = 0.05 * _robust_range(np.asarray(pet_img.dataobj, dtype=np.float32))[1]
    display = plotting.plot_anat(mri_img, cut_coords=cut_coords, display_mode=display_mode,
                                 title=title, colorbar=False, dim=0,
                                 **_nilearn_target(figure, axes, (7.5, 3.0)))
    display.add_overlay(pet_img, cmap=cmap, transparency=alpha, threshold=threshold,
                        colorbar=True)
    return _finish(display, cbar_label, output_file)


def template_image(grid: Grid | str = "mni152_2mm", kind: str = "t1") -> nib.Nifti1Image:
    """Return the MNI152 template (``t1``, ``gm``, ``wm``, ``brain_mask``) on a grid."""
    g = get_grid(grid)
    return nib.Nifti1Image(np.array(template_on_grid(kind, g), dtype=np.float32), g.affine)


def image_brain_mask(img: ImageLike, threshold: float = 0.2) -> nib.Nifti1Image:
    """Estimate a brain (foreground) mask of an image.

    Voxels above ``threshold`` x robust maximum, largest connected component,
    holes filled.
    """
    image = as_image(img)
    data = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32))
    mask = data > threshold * _robust_range(data)[1]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    return nib.Nifti1Image(mask.astype(np.uint8), image.affine)


def plot_brain_outline_on_template(
    img: ImageLike, grid: Grid | str = "mni152_2mm", title: str | None = None,
    threshold: float = 0.2, color: str = "red", display_mode: str = "ortho",
    cut_coords: Any = (0, -18, 10), figure: Figure | None = None, axes: Axes | None = None,
    output_file: str | Path | None = None,
) -> Figure:
    """Outline of an image's brain mask over the MNI152 template on ``grid`` (space check).

    The MNI152 brain mask is outlined too (cyan): the two outlines should agree
    when the image is in MNI space.
    """
    from nilearn import plotting

    display = plotting.plot_anat(template_image(grid), cut_coords=cut_coords,
                                 display_mode=display_mode, title=title, colorbar=False, dim=0,
                                 **_nilearn_target(figure, axes, (7.5, 3.0)))
    display.add_contours(template_image(grid, "brain_mask"), levels=[0.5], colors="cyan",
                         linewidths=1.0)
    display.add_contours(image_brain_mask(img, threshold), levels=[0.5], colors=color,
                         linewidths=1.5)
    display.frame_axes.figure.legend(
        handles=[Line2D([], [], color=color, label="image brain mask"),
                 Line2D([], [], color="cyan", label="MNI152 brain mask")],
        loc="upper center", bbox_to_anchor=(0.5, 0.02), fontsize="small", ncols=2,
        frameon=False)
    return _finish(display, None, output_file)


def plot_map_on_template(
    map_img: ImageLike, grid: Grid | str = "mni152_2mm", title: str | None = None,
    threshold: float | None = None, cmap: str | None = None,
    cbar_label: str = "saliency (a.u.)", display_mode: str = "ortho", cut_coords: Any = None,
    figure: Figure | None = None, axes: Axes | None = None,
    output_file: str | Path | None = None,
) -> Figure:
    """Draw a map (saliency, occlusion, difference) over the MNI152 template on ``grid``.

    Signed maps use a symmetric ``cold_hot`` colour bar, non-negative maps ``hot``
    from 0. ``threshold`` hides ``|value|`` below it (default: 10 % of the maximum).
    """
    from nilearn import plotting

    image = as_image(map_img, "map_img")
    data = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32))
    peak = float(np.abs(data).max()) or 1.0
    signed = bool((data < 0).any())
    threshold = 0.1 * peak if threshold is None else threshold
    display = plotting.plot_stat_map(
        image, bg_img=template_image(grid), title=title, threshold=threshold,
        cmap=cmap or ("cold_hot" if signed else "hot"), symmetric_cbar=signed,
        vmin=None if signed else 0.0, vmax=peak, display_mode=display_mode,
        cut_coords=cut_coords, colorbar=True, dim=0,
        **_nilearn_target(figure, axes, (7.5, 3.0)))
    return _finish(display, cbar_label, output_file)
