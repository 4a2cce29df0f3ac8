"""MRI and PET of one subject on different MNI grids (T1 at 1 mm, PET at 2 mm, as from FSL).

Each image is conformed to the run's grid through its own affine by the real resampler
(nilearn; nothing mocked), and the tests check that the conformed volumes land where the
anatomy is: on the same volumes made directly on the run's grid, and on each other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import cohort_config, edit_manifest, write_nifti
from nilearn.image import resample_img

from gazimed_lab.data.agreement import (
    MIN_AGREEMENT,
    agreement_problem,
    field_of_view,
    pair_agreement,
)
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.grid import Grid, get_grid, template_on_grid
from gazimed_lab.data.images import conform_loaded, load_volume
from gazimed_lab.data.manifest import ManifestError, read_manifest
from gazimed_lab.data.qa import run_qa

GRID = get_grid("demo_4mm")
TWO_MM = get_grid("mni152_2mm")
# A 1 mm grid in RAS orientation (x grows to the right, unlike the LAS run grid), covering
# the run grid's box: a T1 as FSL or Clinica users have it.
_RAS = np.diag([1.0, 1.0, 1.0, 1.0])
_RAS[:3, 3] = (-78.0, -114.0, -72.0)
ONE_MM = Grid("ras_1mm", (157, 189, 157), tuple(tuple(float(v) for v in row) for row in _RAS))


def _resample(img: nib.Nifti1Image, grid: Grid) -> nib.Nifti1Image:
    out = resample_img(img, target_affine=grid.affine, target_shape=grid.shape,
                       interpolation="continuous", force_resample=True, copy_header=True)
    return nib.Nifti1Image(np.nan_to_num(out.get_fdata()).astype(np.float32), grid.affine)


def _shifted(img: nib.Nifti1Image, mm: tuple[float, float, float]) -> nib.Nifti1Image:
    affine = img.affine.copy()
    affine[:3, 3] += mm
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), affine)


def _world_centre(data: np.ndarray, grid: Grid) -> np.ndarray:
    """Intensity-weighted centre of a volume on ``grid``, in MNI mm."""
    ijk = np.indices(data.shape).reshape(3, -1)
    weights = np.clip(data, 0, None).reshape(-1)
    centre = (ijk * weights).sum(axis=1) / weights.sum()
    return grid.affine[:3, :3] @ centre + grid.affine[:3, 3]


@pytest.fixture(scope="module")
def fsl_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A T1 on the 1 mm RAS grid and a PET on the FSL 2 mm grid, from the MNI152 templates."""
    folder = tmp_path_factory.mktemp("fsl")
    rng = np.random.default_rng(0)
    t1 = template_on_grid("t1", ONE_MM)
    pet = template_on_grid("gm", TWO_MM) * 2.0 + 0.2 * template_on_grid("t1", TWO_MM)
    mri = write_nifti(folder / "sub-01_T1w_1mm.nii.gz", t1 + rng.normal(0, 0.01, t1.shape),
                      ONE_MM.affine)
    pet_path = write_nifti(folder / "sub-01_pet_2mm.nii.gz",
                           pet + rng.normal(0, 0.01, pet.shape), TWO_MM.affine)
    return mri, pet_path


@pytest.mark.slow
def test_mri_at_1mm_and_pet_at_2mm_land_on_each_other(fsl_pair: tuple[Path, Path]) -> None:
    mri_img, pet_img = (load_volume(p) for p in fsl_pair)
    mri, mri_action, mri_coverage = conform_loaded(mri_img, GRID)
    pet, pet_action, pet_coverage = conform_loaded(pet_img, GRID)
    assert mri_action == "resampled from (157, 189, 157) 1x1x1 mm RAS origin (-78, -114, -72)"
    assert pet_action == "resampled from (91, 109, 91) 2x2x2 mm LAS origin (90, -126, -72)"
    brain = template_on_grid("brain_mask", GRID) > 0
    # Each lands on the same anatomy made directly on the run grid (another resampling of
    # the templates, from the 2 mm template files: only the interpolation differs) ...
    direct_pet = template_on_grid("gm", GRID) * 2.0 + 0.2 * template_on_grid("t1", GRID)
    for data, direct, coverage in ((mri, template_on_grid("t1", GRID), mri_coverage),
                                   (pet, direct_pet, pet_coverage)):
        assert np.corrcoef(data[brain], direct[brain])[0, 1] > 0.95
        # ... and nothing is lost: as much of the MNI brain holds signal as when made there.
        direct_coverage = conform_loaded(nib.Nifti1Image(direct, GRID.affine), GRID)[2]
        assert coverage > direct_coverage - 0.02 and coverage > 0.85
    # Same centres in MNI space as when made on the run grid, to within a millimetre (a
    # resampler off by a voxel or a half-voxel convention would move them by 2-4 mm).
    for data, direct in ((mri, template_on_grid("t1", GRID)), (pet, direct_pet)):
        offset = _world_centre(data * brain, GRID) - _world_centre(direct * brain, GRID)
        assert np.abs(offset).max() < 1.0
    # The x flip between RAS and LAS is honoured: the left hemisphere stays left.
    left = np.zeros(GRID.shape, dtype=bool)
    left[GRID.shape[0] // 2:] = True  # LAS: high i = negative x = left
    lateral = template_on_grid("t1", ONE_MM).copy()
    lateral[lateral.shape[0] // 2:] = 0  # RAS: keep x < 0 only, the left hemisphere
    only_left = conform_loaded(nib.Nifti1Image(lateral, ONE_MM.affine), GRID)[0]
    assert only_left[left].sum() > 20 * only_left[~left].sum()

    found = pair_agreement(mri_img, mri, pet_img, pet, GRID)
    assert found.fov_overlap == pytest.approx(1.0)
    assert found.agreement > 0.85 and agreement_problem(found, GRID, "here") is None


@pytest.mark.slow
def test_pet_off_its_mri_or_seeing_part_of_it_is_named(fsl_pair: tuple[Path, Path]) -> None:
    mri_img, pet_img = (load_volume(p) for p in fsl_pair)
    mri = conform_loaded(mri_img, GRID)[0]
    measured = {}
    for mm in (0.0, 8.0, 16.0, 30.0):
        moved = _shifted(pet_img, (0.0, mm, 0.0))
        found = pair_agreement(mri_img, mri, moved, conform_loaded(moved, GRID)[0], GRID)
        measured[mm] = found.agreement
    assert measured[8.0] >= MIN_AGREEMENT  # a small misregistration passes
    assert measured[16.0] < MIN_AGREEMENT and measured[30.0] < MIN_AGREEMENT
    assert measured[0.0] > measured[8.0] > measured[16.0] > measured[30.0]

    moved = _shifted(pet_img, (0.0, 30.0, 0.0))
    found = pair_agreement(mri_img, mri, moved, conform_loaded(moved, GRID)[0], GRID)
    message = agreement_problem(found, GRID, "pet: b_pet.nii.gz; mri: a_T1w.nii.gz")
    assert message is not None and message.startswith(
        f"`pet agreement with mri` must be >= {MIN_AGREEMENT:g} (correlation")
    assert 0.85 < found.fov_overlap < 1.0  # the box moved too: a little brain left it
    assert (f"got agreement {found.agreement:.2f} and field-of-view overlap "
            f"{found.fov_overlap:.2f} after conforming both to grid demo_4mm") in message
    assert "(pet: b_pet.nii.gz; mri: a_T1w.nii.gz); fix: " in message

    # A PET whose box covers only the upper half of what the MRI's box covers.
    upper = TWO_MM.shape[2] // 2
    half = nib.Nifti1Image(np.asarray(pet_img.dataobj)[:, :, upper:], pet_img.affine.copy())
    half.affine[:3, 3] += pet_img.affine[:3, 2] * upper
    in_box = field_of_view(half.shape, half.affine, GRID)
    bottom = half.affine[2, 3] - 1.0  # the box starts half a 2 mm voxel below its first centre
    z = GRID.affine[2, 3] + 4.0 * np.arange(GRID.shape[2])  # run grid slices, MNI z
    assert (in_box.any(axis=(0, 1)) == (z >= bottom)).all() and in_box[:, :, z >= bottom].all()
    found = pair_agreement(mri_img, mri, half, conform_loaded(half, GRID)[0], GRID)
    assert 0.3 < found.fov_overlap < 0.7
    assert "field-of-view overlap 0." in str(agreement_problem(found, GRID, "here"))


def _upsampled_cohort(source: Path, target: Path, subjects: tuple[int, ...]) -> Path:
    """Copy of a cohort whose listed subjects have the T1 at 1 mm and the PET at 2 mm."""
    shutil.copytree(source.parent, target)
    for i in subjects:
        for modality, grid, name in (("mri", ONE_MM, "T1w"), ("pet", TWO_MM, "pet")):
            path = target / modality / f"sub-{i:03d}_{name}.nii.gz"
            moved = _resample(nib.load(str(path)), grid)
            path.unlink()
            nib.save(moved, str(target / modality / f"sub-{i:03d}_{name}_other.nii.gz"))

    def point(frame: pd.DataFrame) -> None:
        for i in subjects:
            row = frame["subject_id"] == f"sub-{i:03d}"
            for col in ("mri", "pet"):
                frame.loc[row, col] = frame.loc[row, col].str.replace(".nii.gz", "_other.nii.gz")

    return edit_manifest(target / "manifest.csv", point)


@pytest.mark.slow
def test_cohort_on_other_grids_trains_on_the_same_volumes(tiny_cohort: Path,
                                                          tmp_path: Path) -> None:
    """4 mm volumes taken to 1 mm (MRI) and 2 mm (PET) and conformed back: the same arrays.

    The run grid's voxel centres are voxel centres of both finer grids, so the round trip
    through the real resampler returns the original volumes, up to the cache's float16.
    """
    other = _upsampled_cohort(tiny_cohort, tmp_path / "other", (0, 5))
    assert read_manifest(other).table.loc[0, "mri"].endswith("_T1w_other.nii.gz")
    report = run_qa(other, GRID)
    assert report.ok, report.errors
    rows = report.table.set_index(["subject_id", "modality"])
    assert rows.loc[("sub-000", "mri"), "grid_action"].startswith(
        "resampled from (157, 189, 157) 1x1x1 mm RAS")
    assert rows.loc[("sub-005", "pet"), "grid_action"].startswith(
        "resampled from (91, 109, 91) 2x2x2 mm LAS")
    assert rows.loc[("sub-005", "pet"), "pair_agreement"] > 0.85

    arrays = {}
    for name, manifest in (("grid", tiny_cohort), ("other", other)):
        dm = MNIDataModule(cohort_config(manifest, tmp_path / name, "data.augment=false"))
        dm.setup()
        by_subject = {}
        for split in ("train", "val", "test"):
            data = dm.split_dataloader(split).dataset
            by_subject.update(zip(data.subject_ids, data.arrays))
        arrays[name] = by_subject
    for sid in ("sub-000", "sub-005"):
        a, b = (np.load(arrays[name][sid]).astype(np.float32) for name in ("grid", "other"))
        for channel in range(a.shape[0]):
            assert np.corrcoef(a[channel].ravel(), b[channel].ravel())[0, 1] > 0.999
        assert np.abs(a - b).max() < 0.05
    resampled = pd.read_csv(tmp_path / "other" / "run" / "qa" / "resampled.csv")
    assert sorted(zip(resampled["subject_id"], resampled["modality"])) == [
        ("sub-000", "mri"), ("sub-000", "pet"), ("sub-005", "mri"), ("sub-005", "pet")]


def test_training_refuses_a_pet_off_its_mri_unless_accepted(tiny_cohort: Path,
                                                            tmp_path: Path) -> None:
    root = tiny_cohort.parent
    pet = root / "pet" / "sub-007_pet.nii.gz"
    img = nib.load(str(pet))
    # 16 mm up: the PET alone still covers the MNI brain (coverage 0.81 >= 0.8); only the
    # pair check sees that it does not lie on its MRI.
    on_two_mm = _shifted(_resample(img, TWO_MM), (0.0, 0.0, 16.0))
    pet.unlink()
    nib.save(on_two_mm, str(root / "pet" / "sub-007_pet_2mm.nii.gz"))
    edit_manifest(tiny_cohort, lambda f: f.replace("pet/sub-007_pet.nii.gz",
                                                   "pet/sub-007_pet_2mm.nii.gz"))
    dm = MNIDataModule(cohort_config(tiny_cohort, tmp_path, "data.augment=false"))
    with pytest.raises(ManifestError, match=r"subject `sub-007`: `pet agreement with mri` must "
                                            r"be >= 0\.6 .*got agreement 0\.\d\d .*\(pet: .*"
                                            r"sub-007_pet_2mm\.nii\.gz; mri: .*sub-007_T1w\.nii"
                                            r"\.gz, subject sub-007\); fix: .*accept_flagged"):
        dm.setup()
    accepted = MNIDataModule(cohort_config(tiny_cohort, tmp_path, "data.augment=false",
                                           "data.accept_flagged_images=true"))
    accepted.setup()
    flagged = pd.read_csv(tmp_path / "run" / "qa" / "accepted_flagged.csv")
    pet_rows = flagged[flagged["modality"] == "pet"]
    assert list(pet_rows["subject_id"]) == ["sub-007"]
    assert "`pet agreement with mri` must be >= 0.6" in pet_rows["flag"].iloc[0]
