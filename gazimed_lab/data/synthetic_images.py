"""Synthetic T1 MRI and FDG-PET volumes on an MNI grid, built from the MNI152 template.

Anatomy is nilearn's MNI152 template (T1, grey and white matter) resampled onto the
grid. Each subject gets (all vectorized numpy / scipy, no loops over voxels):

- a smooth random deformation of a few mm (low-frequency cosine field) plus a local
  magnification around the lateral ventricles that grows with ``s`` and age
  (ventricular widening), applied with :func:`scipy.ndimage.map_coordinates`;
- grey-matter loss in the medial temporal lobe (hippocampus, entorhinal cortex,
  amygdala) that grows with ``s``, plus age-related global atrophy (a confound);
- MRI: per-site contrast (gamma), scale and smoothness, a smooth multiplicative bias
  field and Rician noise; stored as int16 scanner units;
- PET: FDG-like uptake (grey matter high, white matter low, CSF near zero) with
  hypometabolism in posterior cingulate / precuneus and temporoparietal cortex growing
  with ``s``, smoothed to the site's PET resolution (7-10 mm FWHM), a per-subject global
  scale in [0.5, 2] (so intensity normalization matters) and noise; stored as int16
  with a ``scl_slope``.

Regions are ellipsoids in MNI millimetres (:data:`REGIONS`), mapped onto any grid with
its affine (:func:`region_mask`). Where the disease effects go is listed in
:data:`EFFECT_REGIONS` and drawn on a grid by :func:`effect_region_masks`; how strong
they are for one subject is :func:`subject_effects` (what ``truth.csv`` records).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from gazimed_lab.data.grid import Grid, get_grid, template_on_grid

__all__ = [
    "EFFECT_REGIONS",
    "REGIONS",
    "SITES",
    "EffectRegion",
    "SubjectEffects",
    "SubjectImages",
    "effect_region_masks",
    "region_mask",
    "subject_effects",
    "subject_images",
]

Ellipsoid = tuple[tuple[float, float, float], tuple[float, float, float]]


def _both(center: tuple[float, float, float], radii: tuple[float, float, float]
          ) -> tuple[Ellipsoid, Ellipsoid]:
    x, y, z = center
    return ((-x, y, z), radii), ((x, y, z), radii)


#: Named regions: ellipsoids (centre, radii) in MNI mm, left and right where paired.
REGIONS: dict[str, tuple[Ellipsoid, ...]] = {
    "hippocampus": _both((27.0, -22.0, -14.0), (7.0, 15.0, 8.0)),
    "entorhinal": _both((25.0, -8.0, -30.0), (8.0, 9.0, 7.0)),
    "amygdala": _both((23.0, -4.0, -19.0), (7.0, 7.0, 7.0)),
    "lateral_ventricles": _both((14.0, -14.0, 20.0), (8.0, 24.0, 10.0)),
    "posterior_cingulate": (((0.0, -56.0, 32.0), (14.0, 16.0, 14.0)),),
    "temporoparietal": _both((50.0, -56.0, 26.0), (12.0, 18.0, 14.0)),
    "lateral_temporal": _both((56.0, -26.0, -12.0), (9.0, 18.0, 10.0)),
    "occipital": (((0.0, -88.0, 6.0), (20.0, 10.0, 14.0)),),
    "sensorimotor": _both((38.0, -22.0, 56.0), (12.0, 14.0, 10.0)),
}

#: Per-site acquisition: MRI scale (WM ~ 0.87 x scale), contrast gamma, extra smoothing
#: (mm FWHM), Rician noise (fraction of scale), bias-field strength, PET FWHM (mm).
SITES: dict[str, dict[str, float]] = {
    "site1": dict(scale=900.0, gamma=1.00, smooth_mm=0.0, noise=0.020, bias=0.08,
                  pet_fwhm=7.0),
    "site2": dict(scale=1200.0, gamma=0.85, smooth_mm=3.0, noise=0.030, bias=0.12,
                  pet_fwhm=8.0),
    "site3": dict(scale=700.0, gamma=1.15, smooth_mm=2.0, noise=0.025, bias=0.10,
                  pet_fwhm=9.0),
    "site4": dict(scale=1000.0, gamma=0.95, smooth_mm=4.0, noise=0.035, bias=0.15,
                  pet_fwhm=10.0),
}

#: Medial temporal grey-matter fraction lost at s = 1 (hippocampus, entorhinal, amygdala).
MTL_LOSS = 0.35
#: Ventricular widening at s = 1 (0..1; age adds up to 0.3).
VENTRICLE_GROWTH = 0.6
#: FDG hypometabolism at s = 1: posterior cingulate, temporoparietal, medial temporal.
PET_HYPO = (0.25, 0.20, 0.08)
_CSF_T1 = 0.15  # template T1 intensity of pure CSF (the template's range is 0..~0.93)
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


#: Share of the temporoparietal hypometabolism that reaches lateral temporal cortex.
LATERAL_TEMPORAL_SHARE = 0.6
#: Template grey-matter fraction above which a medial temporal voxel counts as grey matter.
MTL_GM_MIN = 0.2
#: Ventricular CSF spread (0..1) above which a voxel counts as widening ventricle.
VENTRICLE_CSF_MIN = 0.5


@dataclass(frozen=True)
class EffectRegion:
    """Where the generator puts one disease effect, and how large it is at ``s = 1``."""

    label: int
    name: str
    modality: str
    effect: str
    strength: float


#: The generator's effect regions, in label order (``truth/effect_regions.nii.gz``).
EFFECT_REGIONS: tuple[EffectRegion, ...] = (
    EffectRegion(1, "medial_temporal", "mri+pet",
                 "grey-matter loss (hippocampus, entorhinal cortex, amygdala; fraction of "
                 "grey matter lost at the region centre) and mild FDG hypometabolism "
                 f"({PET_HYPO[2]:.2f})", MTL_LOSS),
    EffectRegion(2, "ventricles", "mri",
                 "lateral ventricle widening (CSF replaces surrounding tissue, magnification "
                 "around the ventricle centres; 0..1 growth)", VENTRICLE_GROWTH),
    EffectRegion(3, "posterior_cingulate", "pet",
                 "FDG hypometabolism, posterior cingulate / precuneus (fraction of uptake "
                 "lost)", PET_HYPO[0]),
    EffectRegion(4, "temporoparietal", "pet",
                 "FDG hypometabolism, temporoparietal cortex (fraction of uptake lost)",
                 PET_HYPO[1]),
    EffectRegion(5, "lateral_temporal", "pet",
                 "FDG hypometabolism, lateral temporal cortex (fraction of uptake lost)",
                 LATERAL_TEMPORAL_SHARE * PET_HYPO[1]),
)


@dataclass(frozen=True)
class SubjectEffects:
    """How strongly one subject's images carry the disease (and age) effects.

    Attributes
    ----------
    age_effect
        Age on a 0..1 scale (55 -> 0, 90 -> 1): global atrophy and ventricle size.
    loss_noise
        The subject's random offset of grey-matter loss (SD 0.02).
    mtl_gm_loss
        Grey-matter fraction lost at the centre of the medial temporal regions.
    global_gm_loss
        Grey-matter fraction lost elsewhere (``0.04 * s_mri``, age, ``loss_noise``).
    ventricle_growth
        Ventricular widening, 0..1 (``VENTRICLE_GROWTH * s_mri``, age, noise).
    pet_hypo
        Fraction of FDG uptake lost at the centre of the posterior cingulate,
        temporoparietal and medial temporal regions (``PET_HYPO * s_pet``).
    """

    age_effect: float
    loss_noise: float
    mtl_gm_loss: float
    global_gm_loss: float
    ventricle_growth: float
    pet_hypo: tuple[float, float, float]


def subject_effects(s_mri: float, s_pet: float, age: float, rng: np.random.Generator
                    ) -> SubjectEffects:
    """Draw one subject's effect sizes: the first two draws of the subject's generator.

    :func:`subject_images` calls this first, so a fresh generator with the subject's
    seed gives the same numbers without drawing any volume.

    Parameters
    ----------
    s_mri, s_pet
        The MRI and PET views of the disease score, in [0, 1].
    age
        Age in years.
    rng
        The subject's random generator (advanced by two draws).
    """
    age_eff = float(np.clip((age - 55.0) / 35.0, 0.0, 1.0))
    loss_noise = rng.normal(0.0, 0.02)
    vent = float(np.clip(VENTRICLE_GROWTH * s_mri + 0.3 * age_eff + rng.normal(0.0, 0.05),
                         0.0, 1.0))
    mtl = float(np.clip(MTL_LOSS * s_mri + 0.04 * s_mri + 0.10 * age_eff + loss_noise,
                        0.0, 0.9))
    other = float(np.clip(0.04 * s_mri + 0.10 * age_eff + loss_noise, 0.0, 0.9))
    hypo = (PET_HYPO[0] * s_pet, PET_HYPO[1] * s_pet, PET_HYPO[2] * s_pet)
    return SubjectEffects(age_eff, float(loss_noise), mtl, other, vent, hypo)


@dataclass(frozen=True)
class SubjectImages:
    """One subject's volumes as stored: int16 arrays, the PET scale factor, the effect sizes."""

    mri: np.ndarray
    pet: np.ndarray | None
    pet_slope: float
    effects: SubjectEffects


def _world(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    xyz = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:]
    return xyz.reshape((3, *grid.shape))


def _ellipsoid_d2(xyz: np.ndarray, ell: Ellipsoid) -> np.ndarray:
    (cx, cy, cz), (rx, ry, rz) = ell
    return ((xyz[0] - cx) / rx) ** 2 + ((xyz[1] - cy) / ry) ** 2 + ((xyz[2] - cz) / rz) ** 2


def _soft(xyz: np.ndarray, name: str) -> np.ndarray:
    d2 = np.min([_ellipsoid_d2(xyz, e) for e in REGIONS[name]], axis=0)
    return 1.0 / (1.0 + np.exp((np.sqrt(d2) - 1.0) / 0.15))


@lru_cache(maxsize=64)
def _region_mask_cached(name: str, grid: Grid) -> np.ndarray:
    xyz = _world(grid)
    mask = np.min([_ellipsoid_d2(xyz, e) for e in REGIONS[name]], axis=0) <= 1.0
    mask &= template_on_grid("brain_mask", grid) > 0
    mask.setflags(write=False)
    return mask


def region_mask(name: str, grid: Grid | str = "demo_4mm") -> np.ndarray:
    """Boolean mask of a named region (:data:`REGIONS`) inside the MNI brain, on a grid.

    Parameters
    ----------
    name
        A key of :data:`REGIONS`.
    grid
        A grid name or :class:`~gazimed_lab.data.grid.Grid`.

    Returns
    -------
    numpy.ndarray
        Read-only boolean array of the grid's shape.
    """
    if name not in REGIONS:
        raise ValueError(f"`name` must be one of {sorted(REGIONS)}, got `{name}`")
    return _region_mask_cached(name, get_grid(grid))


def effect_region_masks(grid: Grid | str = "demo_4mm") -> dict[str, np.ndarray]:
    """Where the generator puts the disease effects (:data:`EFFECT_REGIONS`), on a grid.

    ``medial_temporal``: the hippocampus, entorhinal and amygdala ellipsoids where the
    template's grey-matter fraction is at least :data:`MTL_GM_MIN`; ``ventricles``: the
    lateral ventricle ellipsoids plus where ventricular CSF spreads as they widen
    (spread at least :data:`VENTRICLE_CSF_MIN`); ``posterior_cingulate``,
    ``temporoparietal``, ``lateral_temporal``: their ellipsoids. All inside the MNI
    brain mask, in template space (each subject's own smooth deformation of a few mm is
    not applied). The regions do not overlap.

    Parameters
    ----------
    grid
        A grid name or :class:`~gazimed_lab.data.grid.Grid`.

    Returns
    -------
    dict
        Region name -> boolean array of the grid's shape, in label order.
    """
    grid_obj = get_grid(grid)
    anat = _anatomy(grid_obj)
    brain = template_on_grid("brain_mask", grid_obj) > 0
    mtl = np.any([region_mask(r, grid_obj) for r in ("hippocampus", "entorhinal",
                                                     "amygdala")], axis=0)
    masks = {
        "medial_temporal": mtl & (anat.gm >= MTL_GM_MIN),
        "ventricles": (region_mask("lateral_ventricles", grid_obj)
                       | (anat.vent_csf >= VENTRICLE_CSF_MIN)) & brain,
        "posterior_cingulate": region_mask("posterior_cingulate", grid_obj).copy(),
        "temporoparietal": region_mask("temporoparietal", grid_obj).copy(),
        "lateral_temporal": region_mask("lateral_temporal", grid_obj).copy(),
    }
    return masks


@dataclass(frozen=True)
class _Anatomy:
    grid: Grid
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    idx: np.ndarray
    mm_to_vox: np.ndarray
    basis: tuple[np.ndarray, np.ndarray, np.ndarray]
    vent_vox: np.ndarray
    vent_csf: np.ndarray
    w_mtl: np.ndarray
    w_pcc: np.ndarray
    w_tp: np.ndarray


@lru_cache(maxsize=4)
def _anatomy(grid: Grid) -> _Anatomy:
    world = _world(grid)
    basis = tuple(
        np.cos(np.pi * np.arange(3)[:, None] * (np.arange(n)[None, :] + 0.5) / n)
        for n in grid.shape
    )
    mm_to_vox = np.linalg.inv(grid.affine[:3, :3])
    # Ventricular widening field (mm): pull sampling points toward each ventricle centre.
    vent = np.zeros_like(world)
    for center, radii in REGIONS["lateral_ventricles"]:
        rel = world - np.reshape(center, (3, 1, 1, 1))
        d2 = np.sum((rel / np.reshape(radii, (3, 1, 1, 1))) ** 2, axis=0)
        vent += np.exp(-0.5 * d2) * rel

    def volume(kind: str) -> np.ndarray:
        return np.ascontiguousarray(template_on_grid(kind, grid), dtype=np.float64)

    gm, wm = volume("gm"), volume("wm")
    # Where CSF spreads when the ventricles widen: ventricular CSF, blurred by ~6 mm.
    csf = np.clip(volume("brain_mask") - gm - wm, 0.0, 1.0) * _soft(world, "lateral_ventricles")
    spread = ndimage.gaussian_filter(csf, _sigma_vox(grid, 6.0))
    return _Anatomy(
        grid=grid,
        t1=volume("t1"),
        gm=gm,
        wm=wm,
        vent_csf=np.clip(spread / max(float(spread.max()), 1e-6) * 1.5, 0.0, 1.0),
        idx=np.indices(grid.shape, dtype=np.float64),
        mm_to_vox=mm_to_vox,
        basis=basis,  # type: ignore[arg-type]
        vent_vox=np.einsum("ij,j...->i...", mm_to_vox, vent),
        w_mtl=np.maximum.reduce([_soft(world, r) for r in ("hippocampus", "entorhinal",
                                                           "amygdala")]),
        w_pcc=_soft(world, "posterior_cingulate"),
        w_tp=np.maximum(_soft(world, "temporoparietal"),
                        LATERAL_TEMPORAL_SHARE * _soft(world, "lateral_temporal")),
    )


def _smooth_field(anat: _Anatomy, coefs: np.ndarray) -> np.ndarray:
    """Low-frequency field: sum of 3 x 3 x 3 cosine basis functions (coefs[..., 3, 3, 3])."""
    bx, by, bz = anat.basis
    out = np.tensordot(coefs, bz, axes=(-1, 0))  # (..., a, b, z)
    out = np.tensordot(out, by, axes=(-2, 0))  # (..., a, z, y)
    out = np.tensordot(out, bx, axes=(-3, 0))  # (..., z, y, x)
    return np.ascontiguousarray(np.swapaxes(out, -1, -3))


def _warp(anat: _Anatomy, volumes: tuple[np.ndarray, ...], grow: float,
          rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    freq = np.add.outer(np.add.outer(np.arange(3), np.arange(3)), np.arange(3))
    amp = np.where(freq == 0, 1.0, 1.2 / (1.0 + freq))  # mm
    coefs_mm = rng.normal(0.0, 1.0, (3, 3, 3, 3)) * amp
    coefs_vox = np.tensordot(anat.mm_to_vox, coefs_mm, axes=(1, 0))
    # Ventricular widening: sample from closer to each ventricle centre (magnification).
    coords = anat.idx + _smooth_field(anat, coefs_vox) - grow * anat.vent_vox
    return tuple(
        ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
        for vol in volumes
    )


def _sigma_vox(grid: Grid, fwhm_mm: float) -> tuple[float, ...]:
    return tuple(fwhm_mm / _FWHM / v for v in grid.voxel_size)


def _mri(anat: _Anatomy, t1: np.ndarray, site: dict, rng: np.random.Generator) -> np.ndarray:
    t1 = np.clip(t1, 0.0, None) ** site["gamma"]
    if site["smooth_mm"] > 0:
        t1 = ndimage.gaussian_filter(t1, _sigma_vox(anat.grid, site["smooth_mm"]))
    bias = np.exp(site["bias"] * _smooth_field(anat, rng.normal(0.0, 0.5, (3, 3, 3))))
    signal = site["scale"] * rng.uniform(0.9, 1.1) * bias * t1
    sd = site["noise"] * site["scale"]
    noisy = np.hypot(signal + rng.normal(0.0, sd, t1.shape), rng.normal(0.0, sd, t1.shape))
    return np.clip(np.rint(noisy), 0, 32767).astype(np.int16)


def _pet(anat: _Anatomy, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, s_pet: float,
         age_eff: float, site: dict, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    csf = np.clip(brain - gm - wm, 0.0, None)
    uptake = 1.0 * gm + 0.28 * wm + 0.04 * csf
    hypo = PET_HYPO[0] * anat.w_pcc + PET_HYPO[1] * anat.w_tp + PET_HYPO[2] * anat.w_mtl
    uptake *= 1.0 - s_pet * hypo - 0.05 * age_eff
    uptake *= 1.0 + 0.05 * _smooth_field(anat, rng.normal(0.0, 0.5, (3, 3, 3)))
    pet = ndimage.gaussian_filter(uptake, _sigma_vox(anat.grid, site["pet_fwhm"]))
    pet *= 6.0 * np.exp(rng.uniform(np.log(0.5), np.log(2.0)))  # SUV-like, global scale
    level = float(pet.max())
    pet = pet + rng.normal(0.0, 1.0, pet.shape) * 0.025 * np.sqrt(level * (pet + 0.02 * level))
    pet = np.clip(pet, 0.0, None)
    slope = float(np.float32(max(float(pet.max()), 1e-3) / 32000.0))
    return np.clip(np.rint(pet / slope), 0, 32767).astype(np.int16), slope


def subject_images(grid: Grid, s_mri: float, s_pet: float, age: float, site: str,
                   with_pet: bool, rng: np.random.Generator) -> SubjectImages:
    """Draw one subject's T1 (and PET) volumes.

    Parameters
    ----------
    grid
        Target MNI grid.
    s_mri, s_pet
        The MRI and PET views of the disease score, in [0, 1].
    age
        Age in years (drives global atrophy and ventricle size).
    site
        A key of :data:`SITES`.
    with_pet
        Whether to draw a PET volume (``pet`` is ``None`` otherwise).
    rng
        The subject's random generator.

    Returns
    -------
    SubjectImages
        int16 arrays of the grid's shape; the PET physical values are
        ``pet * pet_slope``.
    """
    anat = _anatomy(grid)
    effects = subject_effects(s_mri, s_pet, age, rng)
    age_eff, vent = effects.age_effect, effects.ventricle_growth
    # Atrophy in template (MNI) space: grey matter turns into CSF, ventricles widen.
    loss = np.clip(MTL_LOSS * s_mri * anat.w_mtl + 0.04 * s_mri + 0.10 * age_eff
                   + effects.loss_noise, 0.0, 0.9)
    to_csf = np.clip(loss * anat.gm + vent * anat.vent_csf, 0.0, 1.0)
    t1 = anat.t1 - to_csf * np.clip(anat.t1 - _CSF_T1, 0.0, None)
    gm = anat.gm * (1.0 - loss)
    # The subject's own shape: smooth random deformation + ventricle magnification.
    t1, gm, wm = _warp(anat, (t1, gm, anat.wm), 0.3 * vent, rng)
    params = SITES[site]
    mri = _mri(anat, t1, params, rng)
    pet, slope = (None, 0.0)
    if with_pet:
        pet, slope = _pet(anat, gm, wm, t1 > 0.05, s_pet, age_eff, params, rng)
    return SubjectImages(mri, pet, slope, effects)
