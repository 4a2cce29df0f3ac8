"""Whether a subject's MRI and PET agree in world space once conformed to the run's grid.

MRI and PET may come on different grids (T1 at 1 mm and PET at 2 mm, as FSL users
commonly have): each is conformed to ``data.grid`` through its own affine
(:func:`~gazimed_lab.data.images.conform_loaded`). What must hold afterwards is that the
two images lie on each other. Two measures, both on the run's grid:

* **field-of-view overlap**: of the MNI brain-mask voxels inside either image's field
  of view, the fraction inside both (fields of view from each image's shape and affine,
  not from its voxels), at least :data:`MIN_FOV_OVERLAP`: a PET whose box covers only
  part of what the MRI's box covers fails, while an image whose box misses the brain
  altogether is the brain coverage check's business;
* **agreement**: the Pearson correlation of the two images' brain-signal masks
  (voxels above each image's own :func:`~gazimed_lab.data.images.signal_threshold`,
  the rule of the brain coverage check), each smoothed with a Gaussian of
  :data:`SMOOTH_MM` mm, over the MNI brain mask dilated by :data:`RIM_MM` mm and
  inside both fields of view; at least :data:`MIN_AGREEMENT`.

Masks rather than intensities, because T1 and FDG contrasts differ inside the brain
(their voxel correlation varies in sign and size); the region stops a few mm outside
the brain, where skull and CSF are dark in a T1, so a whole-head T1 and a brain-only
PET still agree. Measured on 6 subjects of the embedded cohort (the package's generator),
MRI taken to a 1 mm grid and PET to the FSL 2 mm grid, conformed to the 4 mm demo grid,
PET shifted along each axis in turn:

==========  ==============  ==========================
PET shift   agreement       PET brain coverage (>= 0.8)
==========  ==============  ==========================
0 mm        0.92-0.97       1.00
8 mm        0.69-0.81       0.96-0.99
12 mm       0.59-0.72       0.91-0.96
16 mm       0.51-0.65       0.87-0.93
20 mm       0.43-0.58       0.83-0.89
30 mm       0.29-0.44       0.73-0.79
==========  ==============  ==========================

so pairs 20 mm apart, which each image's own coverage check lets through, are caught
(16 mm in most cases); with a simulated scalp and skull around the MRI (a whole-head
T1) aligned pairs give 0.83-0.91 and shifted ones within 0.03 of the values above.
These are synthetic volumes: real T1 / FDG pairs have not been measured. A pair below
the minimum is flagged like an image that misses the MNI brain: a QA error, refused by
training unless ``data.accept_flagged_images`` (then listed in
``run_dir/qa/accepted_flagged.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage

from gazimed_lab.data.grid import Grid, template_on_grid
from gazimed_lab.data.images import problem, signal_threshold

__all__ = [
    "MIN_AGREEMENT",
    "MIN_FOV_OVERLAP",
    "PairAgreement",
    "agreement_problem",
    "brain_and_rim",
    "field_of_view",
    "pair_agreement",
]

#: Minimum fraction of the MNI brain voxels seen by either image that both images see.
MIN_FOV_OVERLAP = 0.8
#: Minimum correlation of the two smoothed brain-signal masks (see the module docstring).
MIN_AGREEMENT = 0.6
#: How far outside the MNI brain mask the comparison reaches (mm).
RIM_MM = 8.0
#: Gaussian smoothing (standard deviation, mm) of each brain-signal mask.
SMOOTH_MM = 4.0


@dataclass(frozen=True)
class PairAgreement:
    """How well a conformed MRI and PET lie on each other (see the module docstring)."""

    fov_overlap: float
    agreement: float

    @property
    def ok(self) -> bool:
        """Whether both measures reach their minimum."""
        return self.fov_overlap >= MIN_FOV_OVERLAP and self.agreement >= MIN_AGREEMENT


def field_of_view(shape: tuple[int, ...], affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Boolean volume on ``grid``: the voxels whose centres lie inside an image's box.

    The box of an image of ``shape`` and ``affine`` spans its voxel centres plus half a
    voxel on each side, wherever its affine puts it in MNI space.
    """
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    world = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    source = inverse[:3, :3] @ world + inverse[:3, 3:4]
    size = np.asarray(shape[:3], dtype=np.float64)[:, None]
    inside = ((source >= -0.5) & (source <= size - 0.5)).all(axis=0)
    return inside.reshape(grid.shape)


@lru_cache(maxsize=8)
def brain_and_rim(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Return the MNI brain mask and that mask dilated by :data:`RIM_MM`, on ``grid`` (cached)."""
    brain = template_on_grid("brain_mask", grid) > 0
    distance = ndimage.distance_transform_edt(~brain, sampling=grid.voxel_size)
    brain.setflags(write=False)
    near = distance <= RIM_MM
    near.setflags(write=False)
    return brain, near


def _signal_mask(conformed: np.ndarray, source: np.ndarray, grid: Grid) -> np.ndarray:
    mask = (conformed > signal_threshold(source)).astype(np.float32)
    sigma = [SMOOTH_MM / v for v in grid.voxel_size]
    return ndimage.gaussian_filter(mask, sigma)


def pair_agreement(mri: nib.spatialimages.SpatialImage, mri_conformed: np.ndarray,
                   pet: nib.spatialimages.SpatialImage, pet_conformed: np.ndarray,
                   grid: Grid) -> PairAgreement:
    """Field-of-view overlap and agreement of one subject's conformed MRI and PET.

    Parameters
    ----------
    mri, pet
        The source images (their shape, affine and voxels: fields of view and signal
        thresholds).
    mri_conformed, pet_conformed
        Both volumes on ``grid`` (:func:`~gazimed_lab.data.images.conform_loaded`).
    grid
        The run's grid.

    Returns
    -------
    PairAgreement
        ``fov_overlap`` and ``agreement`` (NaN when the region holds no voxel or a
        mask is constant there).
    """
    brain, near = brain_and_rim(grid)
    fov_mri = field_of_view(mri.shape, mri.affine, grid)
    fov_pet = field_of_view(pet.shape, pet.affine, grid)
    both = fov_mri & fov_pet
    seen = int(np.count_nonzero(brain & (fov_mri | fov_pet)))
    overlap = float(np.count_nonzero(brain & both) / seen) if seen else 0.0
    inside = near & both
    a = _signal_mask(mri_conformed, np.asarray(mri.dataobj), grid)[inside]
    b = _signal_mask(pet_conformed, np.asarray(pet.dataobj), grid)[inside]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return PairAgreement(overlap, float("nan"))
    return PairAgreement(overlap, float(np.corrcoef(a, b)[0, 1]))


def agreement_problem(found: PairAgreement, grid: Grid, where: str) -> str | None:
    """Return the message for an MRI / PET pair that do not lie on each other (or ``None``).

    One wording for QA and training, as for the brain coverage check. It starts with
    ```pet agreement with mri``` (the flag belongs to the subject's PET row).
    """
    if found.ok:
        return None
    return problem(
        "pet agreement with mri",
        f">= {MIN_AGREEMENT:g} (correlation of the two brain-signal masks in world space) "
        f"and a field-of-view overlap >= {MIN_FOV_OVERLAP:g} (share of the MNI brain seen by "
        "either image that both see)",
        f"agreement {found.agreement:.2f} and field-of-view overlap {found.fov_overlap:.2f} "
        f"after conforming both to grid {grid.name}", where,
        "the two images do not lie on each other in MNI space: check each one's registration "
        "and affine (one may be shifted or not registered), or accept flagged images "
        "explicitly with data.accept_flagged_images=true")
