"""Group attribution maps on a cohort (``gazimed-lab evaluate --maps``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, cohort_config

from gazimed_lab.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_evaluate_maps_writes_group_maps_scored_against_the_truth(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gazimed_lab.attribution import cohort_reference, integrated_gradients
    from gazimed_lab.checkpoints import load_checkpoint
    from gazimed_lab.data.predict import PredictDataModule
    from gazimed_lab.data.synthetic import make_synthetic_cohort
    from gazimed_lab.evaluation.maps import group_maps
    from gazimed_lab.runner import train_and_evaluate

    train = make_synthetic_cohort(tmp_path / "train", n_subjects=24, seed=3, grid="demo_4mm")
    cfg = cohort_config(train, tmp_path, *SMALL, "trainer.max_epochs=1")
    ckpt = train_and_evaluate(cfg).best_checkpoint
    clinical = train_and_evaluate(cohort_config(
        train, tmp_path, *SMALL, "trainer.max_epochs=1", "model.mode=clinical_only",
        f"system.run_dir={tmp_path / 'clinical'}")).best_checkpoint
    # A generated cohort on the same grid, with truth/ beside it (never read by training).
    shutil.copytree(REPO / "data_samples", tmp_path / "external")
    external = tmp_path / "external" / "manifest.csv"
    out = tmp_path / "evaluate"
    code = main(["evaluate", "--ckpt", f"full={ckpt}", "--ckpt", f"clin={clinical}",
                 "--manifest", str(external),
                 "--out", str(out), "--n-boot", "20", "--no-figures", "--maps", "AD",
                 "--maps-subjects", "3"])
    assert code == 0, capsys.readouterr().err
    folder = out / "maps" / "full"
    for modality in ("MRI", "PET"):
        image = nib.load(folder / f"group_AD_ig_{modality}.nii.gz")
        assert image.shape == (40, 48, 40) and np.abs(image.get_fdata()).sum() > 0
        assert (folder / f"group_AD_ig_{modality}.png").read_bytes()[:8] == PNG
        ranking = pd.read_csv(folder / f"regions_AD_{modality}.csv")
        assert list(ranking["rank"]) == list(range(1, len(ranking) + 1))
        assert ranking["mean_abs"].is_monotonic_decreasing
    local = pd.read_csv(folder / "localization.csv").set_index("map")
    assert list(local.index) == ["AD MRI", "AD PET"]
    assert ((local >= 0) & (local <= 1)).all().all()
    printed = capsys.readouterr().out
    assert "auroc_mri" in printed and "clin: no image input, no group maps" in printed
    assert not (out / "maps" / "clin").exists()
    with pytest.raises(ValueError, match=r"`checkpoint` must be a model that reads images"):
        group_maps(clinical, external, cache_dir=tmp_path / "cache")
    # The map is the mean of the group's integrated gradients from the cohort-mean image.
    one = group_maps(ckpt, external, group="AD", max_subjects=1, steps=4,
                     cache_dir=tmp_path / "cache")
    model = load_checkpoint(ckpt)
    dm = PredictDataModule(model.spec, external, cache_dir=tmp_path / "cache")
    table = dm.subjects
    first = int(np.flatnonzero(table["diagnosis"].to_numpy() == "AD")[0])
    item = dm.dataset[first]
    batch = {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in item.items()}
    reference = cohort_reference(dm.predict_dataloader())
    direct = integrated_gradients(model, batch, reference, steps=4)[0]
    from gazimed_lab.data.grid import template_on_grid

    brain = template_on_grid("brain_mask", dm.spec.grid)
    assert one.n_subjects == 1
    assert np.allclose(one.maps["MRI"], direct[0] * brain, atol=1e-6)
    with pytest.raises(ValueError, match=r"`group` must be a value of `diagnosis` \(AD, CN, "
                                         r"MCI\), got 'XX'"):
        group_maps(ckpt, external, group="XX", cache_dir=tmp_path / "cache")
