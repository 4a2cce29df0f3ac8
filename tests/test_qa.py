"""QA table, missingness, split balance and the run_qa / qa_main entry points."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

from gazimed_lab.data.grid import get_grid
from gazimed_lab.data.manifest import ManifestError, read_manifest
from gazimed_lab.data.qa import missingness, qa_main, qa_table, run_qa, split_balance

GRID = get_grid("demo_4mm")




def _edit(manifest: Path, **cells: dict[int, str]) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for col, values in cells.items():
        if col not in frame:
            frame[col] = ""
        for i, value in values.items():
            frame.loc[i, col] = value
    frame.to_csv(manifest, index=False)


def test_qa_table_on_good_cohort(tiny_cohort: Path) -> None:
    table = qa_table(read_manifest(tiny_cohort), GRID)
    assert len(table) == 32
    assert list(table.columns[:4]) == ["row", "subject_id", "modality", "file"]
    first = table.iloc[0]
    assert (first["subject_id"], first["modality"], first["flags"]) == ("sub-003", "pet",
                                                                        "missing PET")
    rest = table.iloc[1:]
    assert (rest["flags"] == "").all()
    assert (rest["grid_action"] == "on_grid").all()
    assert (rest["brain_coverage"] > 0.9).all()  # GM-weighted PET: a little below 1
    assert (rest["template_corr"] > 0.9).all()
    assert (rest["shape"] == "(40, 48, 40)").all() and (rest["voxel_size"] == "4x4x4").all()
    assert (rest["nan_count"] == 0).all() and (rest["max"] > rest["mean"]).all()
    pair = table[table["subject_id"] == "sub-000"]
    assert pair["pet_mri_corr"].nunique() == 1 and pair["pet_mri_corr"].notna().all()
    assert list(table.loc[table["subject_id"] == "sub-005", "row"]) == [6, 6]


def test_flags_and_errors_for_unregistered_and_odd_volumes(tiny_cohort: Path,
                                                           tmp_path: Path) -> None:
    root = tiny_cohort.parent
    shifted = GRID.affine.copy()
    shifted[2, 3] += 80.0
    for sub in ("mri/sub-001_T1w.nii.gz", "pet/sub-001_pet.nii.gz"):
        write_nifti(root / sub, nib.load(str(root / sub)).get_fdata(), shifted)
    noise = np.random.default_rng(0).uniform(0.5, 1.5, GRID.shape)
    write_nifti(root / "pet/sub-002_pet.nii.gz", noise, GRID.affine)

    report = run_qa(tiny_cohort, GRID, out_dir=tmp_path / "qa")
    flagged = report.table[report.table["flags"] != ""]
    assert len(flagged) == 4 and (report.table.index[: len(flagged)] == flagged.index).all()
    by_key = {(r.subject_id, r.modality): r.flags for r in flagged.itertuples()}
    assert by_key[("sub-001", "mri")].startswith("not registered? (brain coverage 0.")
    assert "not registered?" in by_key[("sub-001", "pet")]
    # Uniform noise fills the field of view but holds no brain signal above its background.
    assert by_key[("sub-002", "pet")].startswith("not registered? (brain coverage 0.")
    # ... nor does it lie on the subject's MRI (MRI and PET of sub-001 moved together: agree)
    assert by_key[("sub-002", "pet")].endswith("; low template correlation; MRI/PET disagree")
    assert by_key[("sub-003", "pet")] == "missing PET"
    assert "resampled from (40, 48, 40) 4x4x4 mm LAS origin (78, -114, 8)" in set(
        flagged["grid_action"])

    assert not report.ok and len(report.errors) == 4
    assert all("brain coverage` must be >= 0.8" in e for e in report.errors[:3])
    assert ["row 2, subject `sub-001`" in e for e in report.errors] == [True, True, False, False]
    assert "row 3, subject `sub-002`" in report.errors[2]
    assert report.errors[3].startswith("`pet agreement with mri` must be >= 0.6")
    assert "sub-002_pet.nii.gz; mri: " in report.errors[3] and "row 3" in report.errors[3]
    out = tmp_path / "qa"
    assert pd.read_csv(out / "qa_table.csv").shape == report.table.shape
    assert (out / "errors.txt").read_text().splitlines() == report.errors
    assert (out / "missingness.csv").is_file()


def test_run_qa_reports_manifest_problems_without_raising(tiny_cohort: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    (tiny_cohort.parent / "mri" / "sub-004_T1w.nii.gz").unlink()
    _edit(tiny_cohort, subject_id={7: "sub-006"})
    report = run_qa(tiny_cohort)
    assert not report.ok and len(report.errors) == 2
    assert "`mri` must be an existing NIfTI file" in report.errors[0]
    assert "`subject_id` must be unique, got `sub-006` in rows 7, 8" in report.errors[1]
    row = report.table[(report.table["row"] == 5) & (report.table["modality"] == "mri")]
    assert row["flags"].iloc[0] == "missing file"
    assert len(report.table) == 32

    assert qa_main(tiny_cohort, "demo_4mm") == 1
    printed = capsys.readouterr().out
    assert "16 manifest rows" in printed and "2 errors" in printed
    assert printed.count("ERROR ") == 2


def test_run_qa_reports_bad_volumes_once(tiny_cohort: Path) -> None:
    root = tiny_cohort.parent
    path = root / "mri" / "sub-000_T1w.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    data = nib.load(str(root / "pet" / "sub-004_pet.nii.gz")).get_fdata()
    data[3, 3, 3] = np.nan
    write_nifti(root / "pet" / "sub-004_pet.nii.gz", data, GRID.affine)
    moved = GRID.affine.copy()
    moved[0, 3] += 30.0  # the PET 30 mm off its MRI
    pet6 = root / "pet" / "sub-006_pet.nii.gz"
    write_nifti(pet6, nib.load(str(pet6)).get_fdata(), moved)

    report = run_qa(tiny_cohort)
    assert len(report.errors) == 4, report.errors
    assert "truncated or corrupt file" in report.errors[0]
    assert "row 1, subject `sub-000`" in report.errors[0]
    assert "`pet` must be finite in every voxel, got 1 NaN/Inf" in report.errors[1]
    assert "row 5, subject `sub-004`" in report.errors[1]
    assert "`pet brain coverage` must be >= 0.8" in report.errors[2]
    assert "`pet agreement with mri` must be >= 0.6" in report.errors[3]
    assert all("row 7, subject `sub-006`" in e for e in report.errors[2:])
    flags = dict(zip(zip(report.table["row"], report.table["modality"]), report.table["flags"]))
    assert flags[(1, "mri")] == "unreadable"
    assert flags[(5, "pet")] == "non-finite voxels"
    assert flags[(7, "pet")].endswith("MRI/PET disagree")
    nan_row = report.table[(report.table["row"] == 5) & (report.table["modality"] == "pet")]
    assert int(nan_row["nan_count"].iloc[0]) == 1 and np.isfinite(nan_row["mean"].iloc[0])
    # read_manifest finds the same file problems; the grid-dependent ones are QA's and
    # training's (the manifest does not know the run's grid)
    with pytest.raises(ManifestError) as info:
        read_manifest(tiny_cohort)
    assert info.value.problems == report.errors[:2]


def test_run_qa_on_missing_manifest(tmp_path: Path) -> None:
    report = run_qa(tmp_path / "missing.csv", out_dir=tmp_path / "qa")
    assert not report.ok and report.table.empty
    assert "`manifest` must be an existing CSV file" in report.errors[0]
    assert (tmp_path / "qa" / "errors.txt").read_text().strip() == report.errors[0]


def test_qa_main_ok(tiny_cohort: Path, capsys: pytest.CaptureFixture) -> None:
    assert qa_main(tiny_cohort, "demo_4mm") == 0
    assert "16 manifest rows, 32 volume rows (1 flagged), 0 errors" in capsys.readouterr().out


def test_missingness(tiny_cohort: Path) -> None:
    _edit(tiny_cohort, feat_0={0: "", 5: "", 9: ""}, feat_3={2: ""})
    miss = missingness(read_manifest(tiny_cohort))
    assert list(miss.columns) == ["feature", "n_missing", "n_observed", "fraction"]
    assert list(miss["feature"][:3]) == ["feat_0", "feat_3", "pet"]
    assert list(miss["n_missing"][:3]) == [3, 1, 1]
    assert miss["fraction"].iloc[0] == pytest.approx(3 / 16)
    assert (miss["n_missing"][3:] == 0).all() and len(miss) == 7


def test_split_balance(tiny_cohort: Path) -> None:
    splits = {i: "train" if i < 10 else "val" if i < 13 else "test" for i in range(16)}
    _edit(tiny_cohort, split=splits)
    balance = split_balance(read_manifest(tiny_cohort))
    assert list(balance.index) == ["train", "val", "test"]
    assert list(balance["n"]) == [10, 3, 3]
    assert list(balance["diagnosis=CN"]) == [4, 1, 1]
    assert list(balance["diagnosis=AD"]) == [3, 1, 1]
    assert list(balance["sex=F"]) == [5, 1, 2]
    assert list(balance["site=site0"]) == [5, 2, 1]
    assert list(balance["age_mean"]) == pytest.approx([64.5, 71.0, 74.0])
    with pytest.raises(ValueError, match="must be a table with a `split` column"):
        split_balance(pd.DataFrame({"age": [1.0]}))
