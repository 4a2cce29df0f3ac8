"""Manifest reading and validation: every problem reported, each with row/column/file."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import edit_manifest as _edit
from conftest import make_tiny_cohort, write_nifti

from gazimed_lab.data.grid import get_grid
from gazimed_lab.data.manifest import ManifestError, read_manifest

GRID = get_grid("demo_4mm")






def _problems(manifest: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).count("\n") == len(info.value.problems)
    return info.value.problems


def test_reads_tiny_cohort(tiny_cohort: Path) -> None:
    cohort = read_manifest(tiny_cohort)
    table = cohort.table
    assert len(cohort) == 16 and list(table.index) == list(range(16))
    assert list(table.columns[:9]) == ["subject_id", "mri", "pet", "target", "diagnosis", "site",
                                       "age", "sex", "split"]
    assert cohort.clinical_columns == ["age", "feat_0", "feat_1", "feat_2", "feat_3", "feat_4"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["mri"])
    assert table.loc[3, "pet"] == "" and cohort.has_pet.sum() == 15
    assert table["target"].dtype == np.float64 and table["feat_0"].dtype == np.float64
    assert (table["split"] == "").all()
    assert cohort.path == tiny_cohort


def test_absolute_paths_text_columns_and_requested_clinical(tiny_cohort: Path) -> None:
    root = tiny_cohort.parent

    def change(frame: pd.DataFrame) -> None:
        frame["mri"] = [str(root / p) for p in frame["mri"]]
        frame["notes"] = "visit 1"
        frame["split"] = ["train"] * 10 + ["val"] * 3 + ["test"] * 3

    cohort = read_manifest(_edit(tiny_cohort, change))
    assert cohort.ignored_columns == ["notes"]
    assert "notes" not in cohort.table and cohort.table["split"].tolist()[-1] == "test"
    subset = read_manifest(tiny_cohort, clinical_columns=["feat_2", "feat_0"])
    assert subset.clinical_columns == ["feat_2", "feat_0"]
    assert "feat_1" not in subset.table and "age" in subset.table


def test_prediction_manifest_without_targets(tiny_cohort: Path) -> None:
    def blank(frame: pd.DataFrame) -> None:
        frame.loc[2, "target"] = ""

    _edit(tiny_cohort, blank)
    assert "`target` must be a number in [0, 1], got an empty cell (row 3, subject `sub-002`); " \
           "fix: fill it, or read with require_targets=False" in _problems(tiny_cohort)[0]
    assert np.isnan(read_manifest(tiny_cohort, require_targets=False).table.loc[2, "target"])
    _edit(tiny_cohort, lambda f: f.drop(columns=["target"]))
    cohort = read_manifest(tiny_cohort, require_targets=False)
    assert cohort.table["target"].isna().all()


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"`manifest` must be an existing CSV file, got a "
                                            r"missing path \(.*nothere\.csv\)"):
        read_manifest(tmp_path / "nothere.csv")


def test_empty_manifest(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("")
    with pytest.raises(ManifestError, match="got an empty file"):
        read_manifest(path)
    path.write_text("subject_id,mri,pet,target\n")
    with pytest.raises(ManifestError, match=r"`manifest` must be a CSV with at least one data "
                                            r"row, got a header only \(0 rows\)"):
        read_manifest(path)


def test_malformed_csv(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("subject_id,mri,pet,target\ns1,a.nii,,0.5\ns2,b,1.nii,,0.5\n")
    with pytest.raises(ManifestError, match=r"`fields per manifest row` must be 4 \(the "
                                            r"header's count\), got 5 \(row 2\); fix: quote"):
        read_manifest(path)
    path.write_text("subject_id,mri,mri,target\ns1,a.nii,b.nii,0.5\n")
    with pytest.raises(ManifestError, match=r"`manifest header` must be unique column names, "
                                            r"got duplicates \['mri'\]"):
        read_manifest(path)


def test_missing_required_column(tiny_cohort: Path) -> None:
    _edit(tiny_cohort, lambda f: f.drop(columns=["pet"]))
    with pytest.raises(ManifestError, match=r"`manifest columns` must be to include `pet`, got "
                                            r"columns \[.*\] \(.*manifest\.csv\); fix: add it"):
        read_manifest(tiny_cohort)


def test_missing_file(tiny_cohort: Path) -> None:
    (tiny_cohort.parent / "pet" / "sub-005_pet.nii.gz").unlink()
    with pytest.raises(ManifestError, match=r"`pet` must be an existing NIfTI file, got a missing "
                                            r"path \(.*sub-005_pet\.nii\.gz; row 6, subject "
                                            r"`sub-005`\); fix: paths are relative to"):
        read_manifest(tiny_cohort)


def test_truncated_nifti(tiny_cohort: Path) -> None:
    path = tiny_cohort.parent / "mri" / "sub-002_T1w.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ManifestError, match=r"`mri` must be a complete, readable NIfTI file, got "
                                            r"a truncated or corrupt file .*sub-002_T1w\.nii\.gz; "
                                            r"row 3, subject `sub-002`"):
        read_manifest(tiny_cohort)
    # check_images=False skips reading the voxels
    assert len(read_manifest(tiny_cohort, check_images=False)) == 16


def test_not_a_nifti(tiny_cohort: Path) -> None:
    (tiny_cohort.parent / "pet" / "sub-004_pet.nii.gz").write_text("not an image")
    with pytest.raises(ManifestError, match=r"`pet` must be a NIfTI file .* got a file nibabel "
                                            r"cannot read as NIfTI .*row 5, subject `sub-004`"):
        read_manifest(tiny_cohort)


def test_4d_several_frames_and_single_frame(tiny_cohort: Path) -> None:
    root = tiny_cohort.parent
    one = nib.load(str(root / "pet" / "sub-000_pet.nii.gz")).get_fdata()
    write_nifti(root / "pet" / "sub-000_pet.nii.gz", one[..., None], GRID.affine)
    assert len(read_manifest(tiny_cohort)) == 16  # a single frame is accepted
    write_nifti(root / "pet" / "sub-001_pet.nii.gz", np.stack([one] * 4, -1), GRID.affine)
    with pytest.raises(ManifestError, match=re.escape(
            "`pet` must be a 3D volume (or 4D with a single frame), got a 4D volume of shape "
            "(40, 48, 40, 4)")):
        read_manifest(tiny_cohort)


def test_nan_voxels(tiny_cohort: Path) -> None:
    path = tiny_cohort.parent / "mri" / "sub-007_T1w.nii.gz"
    data = nib.load(str(path)).get_fdata()
    data[5:7, 5, 5] = np.nan
    write_nifti(path, data, GRID.affine)
    with pytest.raises(ManifestError, match=r"`mri` must be finite in every voxel, got 2 NaN/Inf "
                                            r"voxels .*row 8, subject `sub-007`"):
        read_manifest(tiny_cohort)


def test_all_zero_volume(tiny_cohort: Path) -> None:
    write_nifti(tiny_cohort.parent / "pet" / "sub-009_pet.nii.gz", np.zeros(GRID.shape),
                GRID.affine)
    with pytest.raises(ManifestError, match=r"`pet` must be a volume with nonzero voxels, got an "
                                            r"all-zero volume .*row 10, subject `sub-009`"):
        read_manifest(tiny_cohort)


def test_duplicate_subject_id(tiny_cohort: Path) -> None:
    def dup(frame: pd.DataFrame) -> None:
        frame.loc[4, "subject_id"] = "sub-001"

    _edit(tiny_cohort, dup)
    with pytest.raises(ManifestError, match=r"`subject_id` must be unique, got `sub-001` in rows "
                                            r"2, 5 .*give each subject one row"):
        read_manifest(tiny_cohort)


def test_non_numeric_clinical_value(tiny_cohort: Path) -> None:
    def bad(frame: pd.DataFrame) -> None:
        frame.loc[6, "feat_2"] = "high"

    _edit(tiny_cohort, bad)
    with pytest.raises(ManifestError, match=r"`feat_2` must be a finite number or an empty cell, "
                                            r"got `high` \(row 7, subject `sub-006`\)"):
        read_manifest(tiny_cohort)


@pytest.mark.parametrize(("value", "got"), [("1.7", "1.7"), ("-0.2", "-0.2"), ("AD", "`AD`")])
def test_bad_target(tiny_cohort: Path, value: str, got: str) -> None:
    def bad(frame: pd.DataFrame) -> None:
        frame.loc[0, "target"] = value

    _edit(tiny_cohort, bad)
    with pytest.raises(ManifestError, match=re.escape(
            f"`target` must be a number in [0, 1], got {got} (row 1, subject `sub-000`)")):
        read_manifest(tiny_cohort, require_targets=False)


def test_requested_clinical_column_absent(tiny_cohort: Path) -> None:
    with pytest.raises(ManifestError, match=r"`clinical_columns` must be names of manifest "
                                            r"columns, got `feat_9`, which is not a column "
                                            r"\(manifest header\); fix: did you mean `feat_"):
        read_manifest(tiny_cohort, clinical_columns=["feat_0", "feat_9"])
    with pytest.raises(ManifestError, match=r"`clinical_columns` must be free of reserved columns"
                                            r" .* got `target`"):
        read_manifest(tiny_cohort, clinical_columns=["target"])


def test_unknown_split(tiny_cohort: Path) -> None:
    def split(frame: pd.DataFrame) -> None:
        frame["split"] = ["train"] * 16
        frame.loc[11, "split"] = "training"

    _edit(tiny_cohort, split)
    with pytest.raises(ManifestError, match=r"`split` must be one of train, val, test \(or "
                                            r"empty\), got `training` \(row 12, subject `sub-011`"):
        read_manifest(tiny_cohort)


def test_mri_and_pet_on_different_grids_pass_the_manifest(tiny_cohort: Path) -> None:
    """Grids may differ (T1 at 1 mm, PET at 2 mm): the manifest no longer refuses the pair.

    Whether the two lie on each other once conformed is judged by QA and training, which
    know the run's grid (``tests/test_mixed_grids.py``).
    """
    root = tiny_cohort.parent
    path = root / "pet" / "sub-002_pet.nii.gz"
    moved = GRID.affine.copy()
    moved[1, 3] += 8.0
    write_nifti(path, nib.load(str(path)).get_fdata(), moved)
    two_mm = get_grid("mni152_2mm")
    write_nifti(root / "pet" / "sub-004_pet.nii.gz", np.ones(two_mm.shape), two_mm.affine)
    cohort = read_manifest(tiny_cohort)  # check_images=True: every volume loaded once
    assert len(cohort) == 16 and cohort.table.loc[4, "pet"].endswith("sub-004_pet.nii.gz")


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    manifest = make_tiny_cohort(tmp_path / "c", n=6)
    root = manifest.parent
    (root / "mri" / "sub-001_T1w.nii.gz").unlink()
    write_nifti(root / "mri" / "sub-004_T1w.nii.gz", np.zeros(GRID.shape), GRID.affine)

    def change(frame: pd.DataFrame) -> None:
        frame.loc[2, "target"] = "2"
        frame.loc[3, "feat_1"] = "n/a?"
        frame.loc[5, "subject_id"] = "sub-000"

    problems = _problems(_edit(manifest, change))
    assert len(problems) == 5
    expected = ["row 2, subject `sub-001`", "row 3, subject `sub-002`", "row 4, subject `sub-003`",
                "row 5, subject `sub-004`", "in rows 1, 6"]
    for needle in expected:
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert "`feat_1`" in problems[2] and "`n/a?`" in problems[2]
