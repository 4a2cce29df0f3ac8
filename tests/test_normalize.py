"""MRI z-scoring, PET reference-region ratios and the PET - MRI channel."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.normalize import (
    PET_REFERENCES,
    brain_mask,
    normalize_mri,
    normalize_pet,
    pet_minus_mri,
    reference_mask,
)

GRID = get_grid("demo_4mm")


@pytest.fixture(scope="module")
def volumes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    t1 = template_on_grid("t1", GRID)
    gm = template_on_grid("gm", GRID)
    mri = 300.0 * t1 + 20.0 + rng.normal(0, 5.0, GRID.shape)
    pet = 8000.0 * gm + 1500.0 * t1 + 100.0 + rng.normal(0, 50.0, GRID.shape)
    return mri.astype(np.float32), pet.astype(np.float32)


def _mni(ijk: np.ndarray) -> np.ndarray:
    return (GRID.affine[:3, :3] @ ijk.T).T + GRID.affine[:3, 3]


def test_normalize_mri_zscores_inside_the_mask(volumes: tuple[np.ndarray, np.ndarray]) -> None:
    out = normalize_mri(volumes[0], GRID)
    mask = brain_mask(GRID)
    assert out.dtype == np.float32 and out.shape == GRID.shape
    assert abs(float(out[mask].mean())) < 1e-4
    assert abs(float(out[mask].std()) - 1.0) < 1e-4
    assert not out[~mask].any()


def test_normalize_mri_rejects_constant_volume() -> None:
    with pytest.raises(ValueError, match="mri standard deviation inside the brain mask` must be"):
        normalize_mri(np.ones(GRID.shape), GRID)


@pytest.mark.parametrize("reference", PET_REFERENCES)
def test_normalize_pet_is_scale_invariant(volumes: tuple[np.ndarray, np.ndarray],
                                          reference: str) -> None:
    pet = volumes[1]
    out = normalize_pet(pet, GRID, reference)
    scaled = normalize_pet(pet * 3.7, GRID, reference)
    assert np.allclose(out, scaled, rtol=1e-5, atol=1e-6)
    ref = reference_mask(reference, GRID)
    assert abs(float(out[ref].mean()) - 1.0) < 1e-4
    assert not out[~brain_mask(GRID)].any()
    assert out.std() > 0


def test_reference_regions_are_where_documented() -> None:
    brain = brain_mask(GRID)
    cereb = reference_mask("cerebellum", GRID)
    xyz = _mni(np.argwhere(cereb).astype(float))
    assert cereb.sum() > 50 and (cereb <= brain).all()
    assert (xyz[:, 2] < -20).all() and (xyz[:, 1] < -45).all()
    pons = _mni(np.argwhere(reference_mask("pons", GRID)).astype(float))
    assert len(pons) >= 8
    assert np.allclose(pons.mean(axis=0), [0.0, -25.0, -35.0], atol=4.0)
    assert reference_mask("whole_brain", GRID).sum() == brain.sum()


def test_unknown_reference_lists_valid_names(volumes: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=re.escape(
            "`pet_reference` must be one of ['whole_brain', 'cerebellum', 'pons'], "
            "got `putamen`")):
        normalize_pet(volumes[1], GRID, "putamen")


def test_zero_reference_region_raises(volumes: tuple[np.ndarray, np.ndarray]) -> None:
    pet = volumes[1].copy()
    pet[reference_mask("cerebellum", GRID)] = 0.0
    with pytest.raises(ValueError, match=r"`PET reference region `cerebellum` mean` must be > 0, "
                                         r"got 0 .*choose another of"):
        normalize_pet(pet, GRID, "cerebellum")


def test_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"`pet array` must be of the grid shape \(40, 48, 40\), "
                                         r"got shape \(10, 10, 10\)"):
        normalize_pet(np.ones((10, 10, 10)), GRID)


def test_pet_minus_mri_formula(volumes: tuple[np.ndarray, np.ndarray]) -> None:
    mri_n = normalize_mri(volumes[0], GRID)
    pet_n = normalize_pet(volumes[1], GRID)
    mask = brain_mask(GRID)
    out = pet_minus_mri(mri_n, pet_n, GRID)
    pet_z = (pet_n[mask] - pet_n[mask].mean()) / pet_n[mask].std()
    assert np.allclose(out[mask], pet_z - mri_n[mask], atol=1e-4)
    assert not out[~mask].any()
    # Without a grid the mask is the nonzero PET voxels: same result.
    assert np.allclose(pet_minus_mri(mri_n, pet_n), out, atol=1e-5)
    with pytest.raises(ValueError, match="use zeros for the PET - MRI channel"):
        pet_minus_mri(mri_n, np.zeros_like(pet_n), GRID)
