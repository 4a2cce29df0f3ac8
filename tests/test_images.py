"""Loading volumes at the door, grid conformance and same-space checks."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_nifti

from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.images import (
    ImageError,
    brain_coverage,
    conform_to_grid,
    load_volume,
)

GRID = get_grid("demo_4mm")


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    return template_on_grid("brain_mask", GRID) > 0


@pytest.fixture
def t1_noisy() -> np.ndarray:
    """T1 template plus noise: asymmetric, so a left-right flip changes it."""
    rng = np.random.default_rng(0)
    return template_on_grid("t1", GRID) + rng.normal(0, 0.1, GRID.shape).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_load_volume_accepts_path_and_image(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", t1_noisy, GRID.affine)
    from_path = load_volume(path, "mri")
    from_image = load_volume(nib.load(str(path)), "mri")
    for img in (from_path, from_image):
        assert img.shape == GRID.shape
        assert np.asanyarray(img.dataobj).dtype == np.float32
        assert np.allclose(img.affine, GRID.affine)
        assert np.array_equal(np.asanyarray(img.dataobj), t1_noisy.astype(np.float32))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(ImageError, match=r"`mri` must be an existing NIfTI file, got a missing "
                                         r"path \(.*nope\.nii\.gz\)"):
        load_volume(path, "mri")


def test_text_file_renamed_nifti(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("subject notes, not an image\n")
    with pytest.raises(ImageError, match=r"`pet` must be a NIfTI file \(\.nii or \.nii\.gz\), "
                                         r"got a file nibabel cannot read as NIfTI .*notes"):
        load_volume(path, "pet")


def test_truncated_gz(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    path = write_nifti(tmp_path / "cut.nii.gz", t1_noisy, GRID.affine)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match=r"`mri` must be a complete, readable NIfTI file, got a "
                                         r"truncated or corrupt file .*cut\.nii\.gz"):
        load_volume(path, "mri")


def test_4d_with_several_frames(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    path = write_nifti(tmp_path / "dyn.nii.gz", np.stack([t1_noisy] * 3, axis=-1), GRID.affine)
    with pytest.raises(ImageError, match=re.escape(
            "`pet` must be a 3D volume (or 4D with a single frame), got a 4D volume of shape "
            "(40, 48, 40, 3)")):
        load_volume(path, "pet")


def test_4d_with_one_frame_is_squeezed(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    path = write_nifti(tmp_path / "one.nii.gz", t1_noisy[..., None], GRID.affine)
    img = load_volume(path, "pet")
    assert img.shape == GRID.shape
    assert np.array_equal(np.asanyarray(img.dataobj), t1_noisy)


def test_nan_voxels(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    t1_noisy[10, 10, 10] = np.nan
    t1_noisy[11, 10, 10] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", t1_noisy, GRID.affine)
    with pytest.raises(ImageError, match=r"`mri` must be finite in every voxel, got 2 NaN/Inf "
                                         r"voxels of 76800 \(.*nan\.nii\.gz\)"):
        load_volume(path, "mri")


def test_all_zero_volume(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "zero.nii.gz", np.zeros(GRID.shape), GRID.affine)
    with pytest.raises(ImageError, match=r"`mri` must be a volume with nonzero voxels, got an "
                                         r"all-zero volume \(.*zero\.nii\.gz\)"):
        load_volume(path, "mri")


def test_wrong_input_type() -> None:
    with pytest.raises(ImageError, match="must be a NIfTI path or a nibabel image, got ndarray"):
        load_volume(np.zeros(GRID.shape), "mri")  # type: ignore[arg-type]


def test_on_grid_passes_untouched(t1_noisy: np.ndarray) -> None:
    data, action = conform_to_grid(nib.Nifti1Image(t1_noisy, GRID.affine), GRID)
    assert action == "on_grid"
    assert data.dtype == np.float32
    assert np.array_equal(data, t1_noisy)


def test_flipped_orientation_is_resampled_back(t1_noisy: np.ndarray, brain: np.ndarray) -> None:
    # Same voxels stored right-to-left (RAS) instead of LAS: the affine says so.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, GRID.shape[0] - 1
    img = nib.Nifti1Image(t1_noisy[::-1].copy(), GRID.affine @ flip)
    data, action = conform_to_grid(img, GRID)
    assert action == "resampled from (40, 48, 40) 4x4x4 mm RAS origin (-78, -114, -72)"
    assert _corr(data[brain], t1_noisy[brain]) > 0.99
    # A resampler that ignored the affine would return the flipped array: this test would fail.
    assert _corr(t1_noisy[::-1][brain], t1_noisy[brain]) < 0.9


def test_2mm_image_keeps_the_brain_on_4mm_grid(brain: np.ndarray) -> None:
    grid2 = get_grid("mni152_2mm")
    img = nib.Nifti1Image(np.array(template_on_grid("t1", grid2)), grid2.affine)
    data, action = conform_to_grid(img, GRID)
    assert action == "resampled from (91, 109, 91) 2x2x2 mm LAS origin (90, -126, -72)"
    assert data.shape == GRID.shape
    assert _corr(data[brain], template_on_grid("t1", GRID)[brain]) > 0.9
    assert np.mean(data[brain] == 0) < 0.01


def test_shifted_fov_is_flagged(tmp_path: Path, t1_noisy: np.ndarray) -> None:
    shifted = GRID.affine.copy()
    shifted[2, 3] += 80.0  # claims to start 80 mm higher: misses the lower brain
    path = write_nifti(tmp_path / "shifted.nii.gz", t1_noisy, shifted)
    coverage = brain_coverage(path, GRID)
    assert coverage < 0.8
    with pytest.raises(ImageError, match=rf"`mri brain coverage` must be >= 0\.8 of the MNI "
                                         rf"brain mask holding brain signal, got {coverage:.2f} .*"
                                         r"shifted\.nii\.gz.*"
                                         r"probably not registered"):
        conform_to_grid(path, GRID, what="mri")
    data, _ = conform_to_grid(path, GRID, min_coverage=None)
    assert data.shape == GRID.shape
    assert brain_coverage(nib.Nifti1Image(t1_noisy, GRID.affine), GRID) > 0.99
