"""The synthetic cohort generator, the committed data_samples/ cohort and the baselines."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gazimed_lab.data import synthetic
from gazimed_lab.data.baselines import (
    REFERENCE_BASELINES,
    RESERVED_COLUMNS,
    baseline_aucs,
    clinical_columns,
)
from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.synthetic import demo_cohort, make_synthetic_cohort
from gazimed_lab.data.synthetic_features import FEATURES
from gazimed_lab.data.synthetic_images import region_mask, subject_images

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO / "data_samples"
SAMPLE_ARGS = dict(n_subjects=40, seed=20261121, grid="demo_4mm", pet_missing_fraction=0.15)
GRID = get_grid("demo_4mm")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data_samples/ regenerated from scratch with its documented arguments."""
    out = tmp_path_factory.mktemp("regenerated")
    make_synthetic_cohort(out, **SAMPLE_ARGS)
    return out


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return pd.read_csv(DATA_SAMPLES / "manifest.csv")


def test_generator_reproduces_data_samples_byte_for_byte(regenerated: Path) -> None:
    committed = file_hashes(DATA_SAMPLES)
    fresh = file_hashes(regenerated)
    assert sorted(committed) == sorted(fresh)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"regenerated files differ from data_samples/: {changed[:5]}"


def test_data_samples_is_small() -> None:
    total = sum(p.stat().st_size for p in DATA_SAMPLES.rglob("*") if p.is_file())
    assert total < 15 * 1024**2


def test_same_args_identical_different_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_cohort(tmp_path / "a", n_subjects=6, seed=5)
    b = make_synthetic_cohort(tmp_path / "b", n_subjects=6, seed=5)
    c = make_synthetic_cohort(tmp_path / "c", n_subjects=6, seed=6)
    assert a == tmp_path / "a" / "manifest.csv"
    assert file_hashes(a.parent) == file_hashes(b.parent)
    ha, hc = file_hashes(a.parent), file_hashes(c.parent)
    assert ha["manifest.csv"] != hc["manifest.csv"]
    assert ha["mri/sub-0001_T1w.nii.gz"] != hc["mri/sub-0001_T1w.nii.gz"]


def test_gzip_header_has_no_timestamp_or_name() -> None:
    raw = next((DATA_SAMPLES / "mri").glob("*.nii.gz")).read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # mtime
    assert raw[3] & 0x08 == 0  # no FNAME field


def test_manifest_has_118_clinical_columns(manifest: pd.DataFrame) -> None:
    assert list(manifest.columns[:8]) == [
        "subject_id", "mri", "pet", "target", "diagnosis", "site", "age", "sex"]
    numeric = [c for c in manifest.columns
               if c not in RESERVED_COLUMNS and pd.api.types.is_numeric_dtype(manifest[c])]
    assert len(numeric) == 118
    assert numeric == clinical_columns(manifest)
    assert set(numeric) == {f.name for f in FEATURES}
    assert "age" in numeric and "sex_male" in numeric
    assert manifest["subject_id"].is_unique
    assert set(manifest["sex"]) <= {"M", "F"}
    assert ((manifest["sex"] == "M") == (manifest["sex_male"] == 1)).all()
    assert manifest["site"].nunique() >= 3
    assert manifest["age"].between(55, 90).all()


def test_diagnosis_consistent_with_target(manifest: pd.DataFrame) -> None:
    t, dx = manifest["target"], manifest["diagnosis"]
    assert set(dx) == {"CN", "MCI", "AD"}
    assert t.between(0, 1).all() and t.notna().all()
    assert (t[dx == "CN"] < 0.42).all()
    assert (t[dx == "AD"] > 0.58).all()
    assert t[dx == "MCI"].between(0.28, 0.72).all()
    means = t.groupby(dx).mean()
    assert means["CN"] < means["MCI"] < means["AD"]


def test_about_15_percent_missing_pet(manifest: pd.DataFrame, tmp_path: Path) -> None:
    missing = manifest["pet"].isna()
    assert abs(missing.mean() - 0.15) <= 0.03
    for rel in manifest.loc[~missing, "pet"]:
        assert (DATA_SAMPLES / rel).is_file()
    on_disk = {f"pet/{p.name}" for p in (DATA_SAMPLES / "pet").glob("*.nii.gz")}
    assert on_disk == set(manifest.loc[~missing, "pet"])
    m = pd.read_csv(make_synthetic_cohort(tmp_path, n_subjects=10, seed=1,
                                          pet_missing_fraction=0.5))
    assert m["pet"].isna().sum() == 5


def test_images_on_grid_and_finite(manifest: pd.DataFrame) -> None:
    paths = list(manifest["mri"]) + list(manifest["pet"].dropna())
    for rel in paths:
        img = nib.load(DATA_SAMPLES / rel)
        assert GRID.matches(img.shape, img.affine), rel
        data = img.get_fdata()
        assert np.isfinite(data).all() and data.max() > 0, rel
        assert img.get_data_dtype() == np.int16
        assert img.header.get_sform(coded=True)[1] == 4  # MNI


def _hippocampal_gm(arr: np.ndarray) -> float:
    brain = template_on_grid("brain_mask", GRID) > 0
    roi = region_mask("hippocampus", GRID) & (template_on_grid("gm", GRID) > 0.5)
    z = (arr - arr[brain].mean()) / arr[brain].std()
    return float(z[roi].mean())


def test_disease_effect_in_cohort(manifest: pd.DataFrame) -> None:
    hip = np.array([_hippocampal_gm(nib.load(DATA_SAMPLES / r).get_fdata())
                    for r in manifest["mri"]])
    dx = manifest["diagnosis"].to_numpy()
    assert hip[dx == "AD"].mean() < hip[dx == "CN"].mean() - 0.1

    pcc = region_mask("posterior_cingulate", GRID)
    brain = template_on_grid("brain_mask", GRID) > 0
    ratio = {}
    for d in ("CN", "AD"):
        rows = manifest[(manifest["diagnosis"] == d) & manifest["pet"].notna()]
        vals = [nib.load(DATA_SAMPLES / r).get_fdata() for r in rows["pet"]]
        ratio[d] = np.mean([v[pcc].mean() / v[brain].mean() for v in vals])
    assert ratio["AD"] < ratio["CN"] - 0.03


def test_disease_effect_same_subject() -> None:
    def draw(s: float):
        return subject_images(GRID, s, s, 70.0, "site1", True, np.random.default_rng(3))

    healthy, sick = draw(0.0), draw(1.0)  # same anatomy, noise and site; only s differs
    hip = [_hippocampal_gm(img.mri.astype(float)) for img in (healthy, sick)]
    assert hip[1] < hip[0] - 0.3  # medial temporal grey-matter loss
    vent, ref = region_mask("lateral_ventricles", GRID), region_mask("sensorimotor", GRID)
    dark = [img.mri[vent].mean() / img.mri[ref].mean() for img in (healthy, sick)]
    assert dark[1] < dark[0] - 0.08  # widened ventricles (more CSF)
    pcc, occ = region_mask("posterior_cingulate", GRID), region_mask("occipital", GRID)
    ratio = [img.pet[pcc].mean() / img.pet[occ].mean() for img in (healthy, sick)]
    assert ratio[1] < 0.9 * ratio[0]  # posterior cingulate hypometabolism


def test_missingness_within_declared_range(manifest: pd.DataFrame) -> None:
    for f in FEATURES:
        frac = manifest[f.name].isna().mean()
        if f.missing > 0:
            assert 0.05 <= frac <= 0.20, (f.name, frac)
        else:
            assert frac == 0, (f.name, frac)
    assert manifest["age"].notna().all() and manifest["sex_male"].notna().all()


def test_data_dictionary_covers_every_column(manifest: pd.DataFrame) -> None:
    dd = pd.read_csv(DATA_SAMPLES / "data_dictionary.csv", keep_default_na=False)
    assert list(dd.columns) == ["name", "role", "unit", "meaning", "relation_to_s",
                                "missing_fraction"]
    assert list(dd["name"]) == list(manifest.columns)
    assert (dd["role"] == "clinical").sum() == 118
    assert (dd["meaning"] != "").all() and (dd["relation_to_s"] != "").all()
    declared = dict(zip(dd["name"], dd["missing_fraction"].astype(float)))
    for name in manifest.columns:
        assert declared[name] == pytest.approx(manifest[name].isna().mean(), abs=1e-3)
    readme = (DATA_SAMPLES / "README.md").read_text()
    assert "csf_abeta42" in readme and "## Baselines" in readme


def test_baselines_match_readme(manifest: pd.DataFrame) -> None:
    result = baseline_aucs(DATA_SAMPLES / "manifest.csv")
    assert result["n_subjects"] == 40 and result["n_clinical"] == 118
    for key in ("clinical", "image", "both"):
        assert 0.5 < result[key] <= 1.0
    row = (f"| this cohort (n = 40) | {result['clinical']:.3f} | {result['image']:.3f} | "
           f"{result['both']:.3f} |")
    assert row in (DATA_SAMPLES / "README.md").read_text()


def test_removes_stale_volumes(tmp_path: Path) -> None:
    make_synthetic_cohort(tmp_path, n_subjects=8, seed=2)
    (tmp_path / "notes.txt").write_text("keep me")
    make_synthetic_cohort(tmp_path, n_subjects=5, seed=2)
    assert len(list((tmp_path / "mri").glob("*.nii.gz"))) == 5
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(n_subjects=1), ValueError, r"`n_subjects` must be >= 3, got 1"),
        (dict(n_subjects=2.5), TypeError, r"`n_subjects` must be an integer, got 2.5"),
        (dict(seed=-1), ValueError, r"`seed` must be a non-negative integer, got -1"),
        (dict(pet_missing_fraction=1.0), ValueError,
         r"`pet_missing_fraction` must be in \[0, 1\), got 1.0"),
        (dict(grid="mni_3mm"), ValueError, r"`data.grid` must be one of"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make_synthetic_cohort(tmp_path, **{"n_subjects": 5, **kwargs})


def test_demo_cohort_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = demo_cohort(tmp_path, n_subjects=5, seed=3)
    assert manifest == tmp_path / "demo_cohort_n5_s3" / "manifest.csv"
    assert (manifest.parent / ".complete").is_file()
    assert not list(tmp_path.glob(".*tmp*"))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached cohort was regenerated")

    monkeypatch.setattr(synthetic, "make_synthetic_cohort", boom)
    assert demo_cohort(tmp_path, n_subjects=5, seed=3) == manifest
    monkeypatch.undo()

    (manifest.parent / ".complete").unlink()  # an interrupted generation
    (manifest.parent / "mri" / "sub-0001_T1w.nii.gz").unlink()
    assert demo_cohort(tmp_path, n_subjects=5, seed=3) == manifest
    assert (manifest.parent / "mri" / "sub-0001_T1w.nii.gz").is_file()

    monkeypatch.setenv("GAZIMED_CACHE", str(tmp_path / "env_root"))
    monkeypatch.chdir(tmp_path)
    env_manifest = demo_cohort(n_subjects=4, seed=3)
    assert env_manifest == tmp_path / "env_root" / "demo_cohort_n4_s3" / "manifest.csv"


@pytest.mark.slow
def test_reference_baselines_on_demo_cohort(tmp_path: Path) -> None:
    result = baseline_aucs(demo_cohort(tmp_path, n_subjects=300, seed=1234))
    for key in ("clinical", "image", "both"):
        assert round(result[key], 3) == REFERENCE_BASELINES[key]
    # The clinical signal is learnable but not trivial; the images add to it.
    assert 0.75 <= result["clinical"] <= 0.88
    assert result["both"] > result["clinical"]
