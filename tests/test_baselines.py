"""Baselines read the cohort like the workbench does: read_manifest, then load_volume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_cohort, write_nifti

from gazimed_lab.data.atlas import atlas_on_grid
from gazimed_lab.data.baselines import (
    BASELINE_REGIONS,
    baseline_aucs,
    baselines_from_tables,
    regional_features,
)
from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.images import ImageError
from gazimed_lab.data.manifest import ManifestError, read_manifest


def _edit(manifest: Path, **columns: object) -> pd.DataFrame:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for name, values in columns.items():
        table[name] = values
    table.to_csv(manifest, index=False)
    return table


def test_features_are_the_manifest_clinical_columns(tiny_cohort: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty column and a text column are not clinical features (read_manifest decides);
    # relative image paths start at the manifest's folder, whatever the working directory.
    _edit(tiny_cohort, unused="", notes="seen at clinic")
    monkeypatch.chdir(tmp_path)
    cohort = read_manifest(tiny_cohort, check_images=False)
    assert cohort.clinical_columns == ["age", "feat_0", "feat_1", "feat_2", "feat_3", "feat_4"]
    assert not cohort.has_pet.all()  # sub-003 has no PET: its PET features are NaN

    result = baseline_aucs(tiny_cohort, seed=3)

    assert (result["n_subjects"], result["n_positive"]) == (16, 5)
    assert result["n_clinical"] == 6 and result["n_image"] == 2 * len(BASELINE_REGIONS)
    assert result["cv"].endswith("seed 3")
    # The same numbers as the tables built by hand from the cohort and its volumes.
    grid = get_grid("demo_4mm")
    rows = [regional_features(nib.load(mri), nib.load(pet) if pet else None, grid)
            for mri, pet in zip(cohort.table["mri"], cohort.table["pet"])]
    expected = baselines_from_tables(cohort.table, pd.DataFrame(rows), seed=3,
                                     columns=cohort.clinical_columns)
    for key in ("clinical", "image", "both"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12)
        assert 0.5 < result[key] <= 1.0  # the tiny cohort's GM loss and features carry signal


def test_bad_manifest_cells_are_named(tiny_cohort: Path) -> None:
    table = _edit(tiny_cohort)
    table.loc[4, "feat_2"] = "n/a?"
    table.to_csv(tiny_cohort, index=False)
    with pytest.raises(ManifestError, match=r"`feat_2` must be a finite number or an empty "
                       r"cell, got `n/a\?` \(row 5, subject `sub-004`\)"):
        baseline_aucs(tiny_cohort)


def test_missing_image_names_file_and_row(tiny_cohort: Path) -> None:
    missing = tiny_cohort.parent / "mri" / "sub-001_T1w.nii.gz"
    missing.unlink()
    with pytest.raises(ManifestError, match=r"`mri` must be an existing NIfTI file, got a "
                       r"missing path \(.*sub-001_T1w\.nii\.gz; row 2, subject `sub-001`\)"):
        baseline_aucs(tiny_cohort)


def test_unreadable_image_names_file_and_row(tiny_cohort: Path) -> None:
    (tiny_cohort.parent / "pet" / "sub-004_pet.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(ImageError, match=r"`pet` must be a NIfTI file .*sub-004_pet\.nii\.gz; "
                       r"row 5, subject `sub-004`\)"):
        baseline_aucs(tiny_cohort)


def test_image_off_the_first_grid_names_file_and_row(tiny_cohort: Path) -> None:
    grid = get_grid("demo_4mm")
    shifted = grid.affine.copy()
    shifted[:3, 3] += 4.0
    write_nifti(tiny_cohort.parent / "pet" / "sub-006_pet.nii.gz",
                np.ones(grid.shape, np.float32), shifted)
    with pytest.raises(ImageError, match=r"`pet` must be on the first MRI's grid "
                       r"\(40, 48, 40\) 4x4x4 mm .*sub-006_pet\.nii\.gz; row 7, subject "
                       r"`sub-006`\); fix: conform"):
        baseline_aucs(tiny_cohort)


def test_linear_baselines_fit_on_one_cohort_and_score_another(tmp_path):
    from gazimed_lab.data.baselines import linear_baseline_predictions

    train = make_tiny_cohort(tmp_path / "train", n=18, seed=1)
    other = make_tiny_cohort(tmp_path / "other", n=12, seed=2)
    out = linear_baseline_predictions(train, other)
    assert set(out) == {"linear-clinical", "linear-regions", "linear-clinical+regions"}
    for table in out.values():
        assert list(table["subject_id"]) == list(pd.read_csv(other)["subject_id"])
        assert table["score"].between(0, 1).all()
    # the tiny cohorts carry the target in feat_0..4 and the grey matter: both rank well
    y = out["linear-clinical"]["target"] > 0.5
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, out["linear-clinical+regions"]["score"]) > 0.8
    few = linear_baseline_predictions(train, other, train_subjects=["sub-000", "sub-001",
                                                                     "sub-002", "sub-003"])
    assert not np.allclose(few["linear-clinical"]["score"], out["linear-clinical"]["score"])
    table = pd.read_csv(other).drop(columns=["feat_3"])
    table.to_csv(other, index=False)
    with pytest.raises(ValueError, match=r"`clinical columns` must be the training cohort's"):
        linear_baseline_predictions(train, other)


def test_aal_regions_give_the_atlas_means(tiny_cohort: Path) -> None:
    grid = get_grid("demo_4mm")
    aal = atlas_on_grid(grid, "aal")
    cohort = read_manifest(tiny_cohort, check_images=False)
    mri, pet = (nib.load(cohort.table.loc[0, c]).get_fdata() for c in ("mri", "pet"))
    features = regional_features(mri, pet, grid, regions="aal")
    assert list(features) == [f"mri_{n}" for n in aal.names] + [f"pet_{n}" for n in aal.names]
    brain = template_on_grid("brain_mask", grid) > 0
    z = (mri - mri[brain].mean()) / (mri[brain].std() + 1e-8)
    hippocampus = aal.ids[aal.names.index("Hippocampus_L")]
    assert features["mri_Hippocampus_L"] == pytest.approx(z[aal.labels == hippocampus].mean())
    ratio = pet / (pet[brain].mean() + 1e-8)
    assert features["pet_Precuneus_R"] == pytest.approx(
        ratio[aal.labels == aal.ids[aal.names.index("Precuneus_R")]].mean())
    result = baseline_aucs(tiny_cohort, seed=3, regions="aal")
    assert result["regions"] == "aal" and result["n_image"] == 2 * len(aal.ids)
    assert 0.0 <= result["image"] <= 1.0
    assert baseline_aucs(tiny_cohort, seed=3)["regions"] == "generator"
    with pytest.raises(ValueError, match=r"`regions` must be 'generator', one of \['aal', "
                       r"'aal3', 'aal\+ventricles', 'aal3\+ventricles'\], an Atlas or an "
                       r"existing label NIfTI, got 'aal2'"):
        regional_features(mri, pet, grid, regions="aal2")


def test_a_user_atlas_on_another_grid_gives_its_region_means(tiny_cohort: Path,
                                                              tmp_path: Path) -> None:
    fine = get_grid("mni152_2mm")  # the user's atlas at 2 mm; the cohort is at 4 mm
    labels = np.zeros(fine.shape, np.int16)
    labels[20:45, 30:60, 20:45] = 4
    labels[46:70, 30:60, 20:45] = 9
    path = tmp_path / "my_atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, fine.affine), path)
    names = tmp_path / "my_atlas.tsv"
    names.write_text("index\tname\n4\tright box\n9\tleft box\n")  # header; names with spaces
    grid = get_grid("demo_4mm")
    atlas = atlas_on_grid(grid, path, names)  # nearest neighbour onto the cohort's grid
    assert atlas.ids == (4, 9) and atlas.names == ("right box", "left box")
    assert set(np.unique(atlas.labels)) == {0, 4, 9}
    cohort = read_manifest(tiny_cohort, check_images=False)
    mri = nib.load(cohort.table.loc[0, "mri"]).get_fdata()
    features = regional_features(mri, None, grid, regions=path, region_names=names)
    brain = template_on_grid("brain_mask", grid) > 0
    z = (mri - mri[brain].mean()) / (mri[brain].std() + 1e-8)
    assert features["mri_left box"] == pytest.approx(z[atlas.labels == 9].mean())
    assert np.isnan(features["pet_right box"])  # no PET given
    result = baseline_aucs(tiny_cohort, regions=atlas)
    assert result["regions"] == "my_atlas" and result["n_image"] == 4
    with pytest.raises(ValueError, match=r"`regions atlas` must be on the images' grid"):
        regional_features(mri, None, grid, regions=atlas_on_grid("mni152_2mm", path, names))
    names.write_text("4\tright box\n4\tagain\n")
    with pytest.raises(ValueError, match=r"`atlas names` must be one line per index, got index "
                       r"4 again \('right box' and 'again'\) \(.*my_atlas.tsv; line 2\)"):
        atlas_on_grid(grid, path, names)
