"""Ground truth beside generated cohorts (truth.csv, effect-region masks) and the oracle."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from gazimed_lab.data.grid import get_grid, template_on_grid
from gazimed_lab.data.synthetic import (
    TRUTH_COLUMNS,
    cohort_truth,
    demo_cohort,
    make_synthetic_cohort,
)
from gazimed_lab.data.synthetic_clinical import S_MIXTURE, S_RANGE
from gazimed_lab.data.synthetic_images import EFFECT_REGIONS, subject_images
from gazimed_lab.evaluation.oracle import (
    find_truth,
    oracle_predictions,
    oracle_scores,
    oracle_table,
    parse_views,
    read_truth,
)

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO / "data_samples"
GRID = get_grid("demo_4mm")
TRUTH_ONLY = [c for c in TRUTH_COLUMNS if c not in ("subject_id", "age", "education_years")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 16-subject cohort (4 mm): its manifest path."""
    return make_synthetic_cohort(tmp_path_factory.mktemp("gen") / "cohort", n_subjects=16,
                                 seed=11, pet_missing_fraction=0.25)


# ------------------------------------------------------------------ the oracle
def hand_truth() -> pd.DataFrame:
    # Two positives (a, b), two negatives (c, d). Clinical ranks them perfectly, the
    # image views put negative c on top.
    return pd.DataFrame({
        "subject_id": ["a", "b", "c", "d"],
        "s": [0.8, 0.7, 0.3, 0.2],
        "s_clin": [0.9, 0.6, 0.4, 0.1],
        "s_mri": [0.2, 0.7, 0.9, 0.1],
        "s_pet": [0.3, 0.8, 0.9, 0.2],
        "has_pet": [1, 1, 1, 0],
        "age": [70.0, 70.0, 70.0, 70.0],
        "education_years": [15, 15, 15, 15],
    })


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_oracle_gaussian_matches_hand_computed_scores_and_auroc() -> None:
    truth = hand_truth()
    # Precisions: clinical 1 / 0.25^2 = 16, each image view 1 / 0.3^2 = 100 / 9.
    # a: m = (16 * 0.9 + 100/9 * (0.2 + 0.3)) / (16 + 200/9) = 19.9556 / 38.2222 = 0.52209
    # b: (9.6 + 100/9 * 1.5) / 38.2222 = 0.68721; c: (6.4 + 20) / 38.2222 = 0.69070
    # d has no PET: (16 * 0.1 + 100/9 * 0.1) / (16 + 100/9) = 2.7111 / 27.1111 = 0.1
    expected = {
        "a": phi((0.52209 - 0.5) * math.sqrt(38.2222)),
        "b": phi((0.68721 - 0.5) * math.sqrt(38.2222)),
        "c": phi((0.69070 - 0.5) * math.sqrt(38.2222)),
        "d": phi((0.1 - 0.5) * math.sqrt(27.1111)),
    }
    scores = oracle_scores(truth, "all")
    assert list(scores.index) == ["a", "b", "c", "d"]
    for sid, value in expected.items():
        assert scores[sid] == pytest.approx(value, abs=2e-4)
    # Ranking c > b > a > d: of the 4 (positive, negative) pairs, (a, d) and (b, d) are
    # ordered right, (a, c) and (b, c) wrong: AUROC 2 / 4.
    table = oracle_table(truth, ["all", "clinical", "mri", "pet"]).set_index("subset")
    assert table.loc["all", "auroc"] == pytest.approx(0.5)
    assert table.loc["clinical", "auroc"] == pytest.approx(1.0)  # 0.9, 0.6 > 0.4, 0.1
    assert table.loc["mri", "auroc"] == pytest.approx(0.5)  # 0.2 < 0.9, 0.7 < 0.9
    # PET: d has none (score 0.5, the flat prior). a 0.3 -> Phi(-2/3) = 0.25, b 0.8 ->
    # Phi(1) = 0.84, c 0.9 -> Phi(4/3) = 0.91: only (b, d) is ordered right, 1 of 4.
    assert oracle_scores(truth, "pet")["d"] == 0.5
    assert table.loc["pet", "auroc"] == pytest.approx(0.25)
    assert table.loc["all", "n"] == 4 and table.loc["all", "n_pos"] == 2
    # Without respecting the missing PET, d's view (0.2) counts.
    full = oracle_scores(truth, "pet", respect_missing_pet=False)
    assert full["d"] == pytest.approx(phi((0.2 - 0.5) / 0.3))


def test_oracle_single_view_ranks_like_the_view_itself() -> None:
    truth = cohort_truth(200, seed=3)
    y = truth["s"] > 0.5
    for view, column in (("clinical", "s_clin"), ("mri", "s_mri")):
        scores = oracle_scores(truth, view)
        assert roc_auc_score(y, scores) == pytest.approx(roc_auc_score(y, truth[column]))
        assert stats.spearmanr(scores, truth[column]).statistic == pytest.approx(1.0)


def test_posterior_oracle_matches_numerical_integration_of_the_generator_prior() -> None:
    truth = hand_truth().iloc[[0, 2]]  # clinical view 0.9 and 0.4

    def prior(s: float) -> float:
        return sum(w * stats.beta.pdf(s, a, b) for w, a, b in S_MIXTURE)

    for (sid, value), got in zip(truth[["subject_id", "s_clin"]].itertuples(index=False),
                                 oracle_scores(truth, "clinical", method="posterior")):
        def joint(s: float, v: float = value) -> float:
            return prior(s) * stats.norm.pdf(v, s, 0.25)

        above = integrate.quad(joint, 0.5, S_RANGE[1], points=[0.9])[0]
        total = integrate.quad(joint, S_RANGE[0], S_RANGE[1], points=[0.5])[0]
        assert got == pytest.approx(above / total, abs=2e-3), sid


def test_posterior_and_gaussian_oracles_agree_and_views_add_up() -> None:
    truth = cohort_truth(600, seed=4)
    gauss = oracle_table(truth, method="gaussian").set_index("subset")["auroc"]
    post = oracle_table(truth, method="posterior").set_index("subset")["auroc"]
    assert (gauss - post).abs().max() < 0.01
    # More views never hurt the optimal scorer (up to sampling noise).
    assert gauss["mri+pet"] > max(gauss["mri"], gauss["pet"])
    assert gauss["all"] > gauss["mri+pet"] and gauss["all"] > gauss["clinical"]
    assert gauss["all+demographics"] >= gauss["all"] - 0.002


def test_oracle_predictions_follow_given_subjects_and_targets() -> None:
    truth = hand_truth()
    targets = pd.DataFrame({"subject_id": ["c", "a"], "target": [0.9, 0.1]})
    preds = oracle_predictions(truth, "clinical", targets=targets)
    assert list(preds["subject_id"]) == ["c", "a"]
    assert list(preds["target"]) == [0.9, 0.1]
    assert preds["score"].iloc[0] == pytest.approx(phi((0.4 - 0.5) / 0.25))
    with pytest.raises(ValueError, match="subjects must be in the truth table"):
        oracle_predictions(truth, "clinical", targets=pd.DataFrame(
            {"subject_id": ["zz"], "target": [0.5]}))


def test_parse_views_and_truth_errors(tmp_path: Path) -> None:
    assert parse_views("all") == ("clinical", "mri", "pet")
    assert parse_views("mri+pet+mri") == ("mri", "pet")
    assert parse_views("all+demographics")[-2:] == ("age", "education")
    with pytest.raises(ValueError, match="`spect`"):
        parse_views("mri+spect")
    with pytest.raises(ValueError, match="must be 'gaussian'"):
        oracle_scores(hand_truth(), "mri", method="bayes")
    bad = hand_truth().drop(columns="s_mri")
    bad.to_csv(tmp_path / "truth.csv", index=False)
    with pytest.raises(ValueError, match=r"must have columns .*s_mri.*truth\.csv"):
        read_truth(tmp_path / "truth.csv")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="beside the manifest"):
        read_truth(tmp_path / "m" / "manifest.csv")


# ------------------------------------------------------- truth beside the cohort
def test_generator_writes_truth_beside_the_manifest_not_in_it(cohort: Path) -> None:
    manifest = pd.read_csv(cohort, dtype={"subject_id": str})
    truth = pd.read_csv(cohort.parent / "truth.csv", dtype={"subject_id": str})
    assert find_truth(cohort) == cohort.parent / "truth.csv"
    assert list(truth.columns) == list(TRUTH_COLUMNS)
    assert list(truth["subject_id"]) == list(manifest["subject_id"])
    assert not set(TRUTH_ONLY) & set(manifest.columns)
    assert (truth["s"] - manifest["target"]).abs().max() <= 5.1e-5  # target: s to 4 decimals
    has_pet = manifest["pet"].notna() & (manifest["pet"].astype(str) != "")
    assert (truth["has_pet"] == has_pet.astype(int)).all() and (~has_pet).sum() == 4
    assert truth.loc[~has_pet, "pet_hypo_posterior_cingulate"].isna().all()
    assert truth.loc[has_pet, "pet_hypo_posterior_cingulate"].notna().all()
    # The views are s plus noise; image views clipped to [0, 1].
    assert truth[["s_mri", "s_pet"]].stack().between(0, 1).all()
    assert 0.1 < (truth["s_clin"] - truth["s"]).std() < 0.45
    # Effects grow with the views that drive them.
    assert stats.spearmanr(truth["s_pet"][has_pet],
                           truth["pet_hypo_temporoparietal"][has_pet]).statistic == 1.0
    assert stats.spearmanr(truth["s_mri"], truth["ventricle_growth"]).statistic > 0.7
    # The table without images is the same, byte for byte as read.
    pd.testing.assert_frame_equal(truth, cohort_truth(16, seed=11, pet_missing_fraction=0.25))


def test_committed_data_samples_truth_matches_the_generator() -> None:
    truth = read_truth(DATA_SAMPLES / "manifest.csv")
    fresh = cohort_truth(40, seed=20261121, pet_missing_fraction=0.15)
    pd.testing.assert_frame_equal(truth, fresh, check_dtype=False)
    assert "truth.csv" in (DATA_SAMPLES / "README.md").read_text()


def test_effect_masks_are_on_the_grid_non_empty_and_consistent(cohort: Path) -> None:
    folder = cohort.parent / "truth"
    labels_img = nib.load(folder / "effect_regions.nii.gz")
    assert labels_img.shape == GRID.shape
    assert np.allclose(labels_img.affine, GRID.affine)
    labels = np.asarray(labels_img.dataobj)
    table = pd.read_csv(folder / "effect_regions.csv")
    assert list(table["label"]) == [r.label for r in EFFECT_REGIONS]
    brain = template_on_grid("brain_mask", GRID) > 0
    assert not (labels[~brain]).any()
    for row in table.itertuples(index=False):
        assert (labels == row.label).sum() == row.n_voxels > 50, row.name
    for modality, wanted in (("mri", {1, 2}), ("pet", {1, 3, 4, 5})):
        img = nib.load(folder / f"{modality}_effect_mask.nii.gz")
        assert img.shape == GRID.shape and np.allclose(img.affine, GRID.affine)
        mask = np.asarray(img.dataobj) > 0
        assert np.array_equal(mask, np.isin(labels, sorted(wanted)))


def test_effect_masks_are_where_the_images_change(cohort: Path) -> None:
    folder = cohort.parent / "truth"
    mri_mask = np.asarray(nib.load(folder / "mri_effect_mask.nii.gz").dataobj) > 0
    pet_only = np.isin(np.asarray(nib.load(folder / "effect_regions.nii.gz").dataobj),
                       [3, 4, 5])
    brain = template_on_grid("brain_mask", GRID) > 0
    healthy = subject_images(GRID, 0.0, 0.0, 70.0, "site1", True, np.random.default_rng(9))
    sick = subject_images(GRID, 1.0, 1.0, 70.0, "site1", True, np.random.default_rng(9))
    d_mri = np.abs(sick.mri.astype(float) - healthy.mri.astype(float))
    d_pet = np.abs(sick.pet * sick.pet_slope - healthy.pet * healthy.pet_slope)
    outside = brain & ~mri_mask
    assert d_mri[mri_mask].mean() > 3 * d_mri[outside].mean()
    assert d_pet[pet_only].mean() > 3 * d_pet[brain & ~pet_only & ~mri_mask].mean()


def test_demo_cohort_cached_without_truth_gets_it_back(tmp_path: Path) -> None:
    manifest = demo_cohort(tmp_path, n_subjects=5, seed=2)
    folder = manifest.parent
    truth = (folder / "truth.csv").read_bytes()
    masks = (folder / "truth" / "effect_regions.nii.gz").read_bytes()
    image = next((folder / "mri").glob("*.nii.gz"))
    stamp = image.stat().st_mtime_ns
    (folder / "truth.csv").unlink()
    shutil.rmtree(folder / "truth")
    assert demo_cohort(tmp_path, n_subjects=5, seed=2) == manifest
    assert (folder / "truth.csv").read_bytes() == truth
    assert (folder / "truth" / "effect_regions.nii.gz").read_bytes() == masks
    assert image.stat().st_mtime_ns == stamp  # the cohort itself was not regenerated


# ------------------------------------------------------------------ no leak
LEAK_SCRIPT = textwrap.dedent('''
    import os, sys
    from pathlib import Path

    cohort, tmp, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    forbidden = (str((cohort / "truth.csv").resolve()), str((cohort / "truth").resolve()))
    opened = []

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            try:
                path = os.path.realpath(path)
            except (OSError, ValueError):
                return
            if path.startswith(forbidden):
                opened.append(path)
                raise PermissionError(f"truth file opened: {path}")

    sys.addaudithook(hook)
    from gazimed_lab import MNIDataModule, load_config

    overrides = [f"data.manifest={cohort / 'manifest.csv'}",
                 f"data.cache_dir={tmp / 'cache'}", f"system.run_dir={tmp / 'run'}",
                 "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "data.batch_size=4"]
    if mode == "datamodule":
        dm = MNIDataModule(load_config("cpu-demo", overrides=overrides))
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
        next(iter(dm.val_dataloader()))
        dm.setup("test")
        next(iter(dm.test_dataloader()))
    else:
        from gazimed_lab.runner import predict_manifest, train_and_evaluate

        small = ["model.embed_dim=12", "model.fusion_dim=32", "model.clinical_hidden=[32]",
                 "model.clinical_out_dim=16", "model.head_hidden=[16]"]
        result = train_and_evaluate(load_config("cpu-demo", overrides=overrides + small))
        predict_manifest(result.best_checkpoint, cohort / "manifest.csv")
    assert not opened, opened
    # The hook works: reading the truth now is caught.
    try:
        open(cohort / "truth.csv").close()
    except PermissionError:
        print("LEAK-FREE")
''')


def _run_leak_check(cohort: Path, tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.parent, folder)
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-c", LEAK_SCRIPT, str(folder), str(tmp_path), mode],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAK-FREE" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert hashlib.sha256((folder / "truth.csv").read_bytes()).digest() == hashlib.sha256(
        (cohort.parent / "truth.csv").read_bytes()).digest()


def test_datamodule_never_opens_the_truth(cohort: Path, tmp_path: Path) -> None:
    _run_leak_check(cohort, tmp_path, "datamodule")


@pytest.mark.slow
def test_training_and_prediction_never_open_the_truth(cohort: Path, tmp_path: Path) -> None:
    _run_leak_check(cohort, tmp_path, "train")
