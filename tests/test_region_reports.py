"""Atlas regions in reports: every map ranked by region, regional intensity outliers in QA."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import edit_manifest, write_nifti
from matplotlib.figure import Figure

from gazimed_lab import viz
from gazimed_lab.data.atlas import Atlas, atlas_on_grid
from gazimed_lab.data.grid import get_grid
from gazimed_lab.data.region_qa import region_outliers, region_qa, robust_z
from gazimed_lab.evaluation.localization import region_report

GRID = get_grid("demo_4mm")


def user_atlas(folder: Path) -> tuple[Path, Path]:
    """Two boxes on the 2 mm MNI grid (conformed to 4 mm when used) and a names TSV."""
    fine = get_grid("mni152_2mm")
    labels = np.zeros(fine.shape, np.int16)
    labels[25:45, 35:60, 30:50] = 1
    labels[46:66, 35:60, 30:50] = 2
    path = folder / "boxes.nii.gz"
    nib.save(nib.Nifti1Image(labels, fine.affine), str(path))
    names = folder / "boxes.tsv"
    names.write_text("index\tname\n1\tright box\n2\tleft box\n")
    return path, names


def test_region_report_ranks_every_map(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), np.int32)
    labels[:2], labels[2:, :2] = 1, 2
    atlas = Atlas("toy", labels, (1, 2), ("front", "back"))
    first = np.where(labels == 1, -3.0, 1.0)  # |map| 3 in front, 1 in back
    second = np.where(labels == 2, 2.0, 0.5)
    report = region_report({"saliency s1": first, "IG AD PET": second}, atlas)
    assert list(report["map"]) == ["saliency s1"] * 2 + ["IG AD PET"] * 2
    assert report[["rank", "region"]].values.tolist() == [[1, "front"], [2, "back"],
                                                          [1, "back"], [2, "front"]]
    assert report.loc[0, "mean_abs"] == 3.0 and report.loc[0, "share"] == pytest.approx(0.75)
    assert report.groupby("map")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    fig = viz.plot_region_report(report, top=2, output_file=tmp_path / "regions.png")
    assert isinstance(fig, Figure) and (tmp_path / "regions.png").is_file()
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["saliency s1",
                                                                       "IG AD PET"]
    with pytest.raises(ValueError, match=r"`map` must be the atlas grid shape \(4, 4, 4\)"):
        region_report({"wrong": np.zeros((2, 2, 2))}, atlas)
    with pytest.raises(ValueError, match=r"`maps` must be at least one map, got none"):
        region_report({}, atlas)


def test_region_report_with_a_user_atlas(tmp_path: Path) -> None:
    path, names = user_atlas(tmp_path)
    atlas = atlas_on_grid(GRID, path, names)
    hot = np.where(atlas.labels == 2, 5.0, 0.0)
    report = region_report({"map": hot}, atlas)
    assert report["region"].tolist() == ["left box", "right box"]
    assert report["mean_abs"].tolist() == [5.0, 0.0]


def test_robust_z_by_hand() -> None:
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan]))
    assert z[4] == pytest.approx(97 / 1.4826) and z[2] == 0.0 and np.isnan(z[5])
    assert np.isnan(robust_z(np.array([1.0, 2.0, 3.0]))).all()  # too few subjects
    flat = robust_z(np.array([2.0, 2.0, 2.0, 2.0, 2.0, 7.0]))  # MAD 0: mean deviation
    assert flat[5] == pytest.approx(5 / (1.2533 * 5 / 6))
    assert np.isnan(robust_z(np.full(6, 3.0))).all()
    with pytest.raises(ValueError, match=r"`threshold` must be > 0, got 0"):
        region_outliers(pd.DataFrame({"subject_id": [], "modality": []}), threshold=0)


def test_a_regional_pet_defect_names_the_subject_and_the_region(tiny_cohort: Path,
                                                                tmp_path: Path) -> None:
    aal = atlas_on_grid(GRID, "aal")
    precuneus = aal.labels == aal.ids[aal.names.index("Precuneus_L")]
    pet_path = tiny_cohort.parent / "pet" / "sub-005_pet.nii.gz"
    pet = nib.load(pet_path).get_fdata()
    pet[precuneus] *= 0.3  # a regional defect the whole-volume checks would average away
    write_nifti(pet_path, pet, GRID.affine)
    result = region_qa(tiny_cohort, GRID, out_dir=tmp_path / "qa")
    top = result.outliers.iloc[0]
    assert (top["subject_id"], top["modality"], top["region"]) == ("sub-005", "pet",
                                                                   "Precuneus_L")
    assert top["robust_z"] < -4 and top["value"] < top["median"]
    assert not ((result.outliers["region"] == "Precuneus_L")
                & (result.outliers["subject_id"] != "sub-005")).any()
    assert result.means.shape == (31, 2 + len(aal.names))  # 16 MRI + 15 PET (sub-003: none)
    assert result.atlas == "aal"
    assert "regional means beyond |robust z| 4" in result.summary()
    for name in ("region_means", "region_outliers", "region_skipped"):
        assert (tmp_path / "qa" / f"{name}.csv").is_file()
    fig = viz.plot_region_outliers(result.outliers, output_file=tmp_path / "outliers.png")
    assert "sub-005 PET Precuneus_L" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    empty = viz.plot_region_outliers(result.outliers.iloc[:0])
    assert "no regional mean beyond" in empty.axes[0].texts[0].get_text()


def test_region_qa_with_a_user_atlas_lists_unreadable_volumes(tiny_cohort: Path,
                                                             tmp_path: Path) -> None:
    path, names = user_atlas(tmp_path)
    (tiny_cohort.parent / "pet" / "sub-007_pet.nii.gz").write_bytes(b"not a NIfTI")
    mri_path = tiny_cohort.parent / "mri" / "sub-002_T1w.nii.gz"
    mri = nib.load(mri_path).get_fdata()
    atlas = atlas_on_grid(GRID, path, names)
    mri[atlas.labels == 1] *= 3.0  # a bright right box in one MRI
    write_nifti(mri_path, mri, GRID.affine)
    edit_manifest(tiny_cohort, lambda f: f.assign(target=""))  # QA needs no targets
    result = region_qa(tiny_cohort, GRID, atlas=path, threshold=3.0)  # names: boxes.tsv beside
    assert list(result.means.columns) == ["subject_id", "modality", "right box", "left box"]
    assert result.regions == ("right box", "left box") and result.atlas == "boxes"
    skipped = result.skipped
    assert skipped[["subject_id", "modality"]].values.tolist() == [["sub-007", "pet"]]
    assert "`pet` must be a NIfTI file" in skipped["reason"].iloc[0]
    flagged = result.outliers[(result.outliers["modality"] == "mri")]
    assert flagged[["subject_id", "region"]].values.tolist()[0] == ["sub-002", "right box"]
    names.unlink()
    with pytest.raises(ValueError, match=r"`atlas names` must be a names file .* beside it "
                       r"\(boxes.txt / boxes.tsv\), got none \(.*boxes.nii.gz\); fix: write "):
        region_qa(tiny_cohort, GRID, atlas=path)
