"""The reference documents' examples (../shared/reference/), as written, with this project's names.

The Connectomics Lightning page (``load_config`` / ``ConnectomicsDataModule`` /
``ConnectomicsModule`` / ``create_trainer``) maps to ``load_config`` / ``MNIDataModule``
/ ``AlzheimersLightningModule`` / ``create_trainer``; the gazimed module summary's
``TrainerFactory`` and keyword form keep their names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from conftest import cohort_config

from gazimed_lab import AlzheimersLightningModule, MNIDataModule, create_trainer, load_config
from gazimed_lab.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from gazimed_lab.runner import predict_manifest

QUICK = ("trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.batch_size=4")


def _cfg(manifest: Path, tmp_path: Path, *extra: str):
    return cohort_config(manifest, tmp_path, *QUICK, *extra)


def test_quick_example_fit_then_test(tiny_cohort: Path, tmp_path: Path) -> None:
    from pytorch_lightning import seed_everything

    cfg = _cfg(tiny_cohort, tmp_path)
    seed_everything(cfg.system.seed)
    datamodule = MNIDataModule(cfg)
    model = AlzheimersLightningModule(cfg)
    trainer = create_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(model, datamodule=datamodule)
    assert {"test/auroc", "test/loss"} <= set(results[0])
    # the model saw only the config, then took the data's fitted spec at fit start
    assert model.spec == datamodule.spec and model.spec.fitted

    # Access underlying model / model info
    print(model.model)
    assert model.model is model.net
    info = model.get_model_info()
    assert info["img_size"] == [40, 48, 40] and info["parameters"]["total"] > 0

    # create_trainer properties
    assert trainer.max_epochs == 1 and trainer.precision == "32-true"
    assert trainer.num_devices == 1

    # Inference: load_from_checkpoint(path, cfg=cfg), then model(input_batch)
    last = Path(cfg.system.run_dir) / "checkpoints" / "last.ckpt"
    loaded = AlzheimersLightningModule.load_from_checkpoint(last, cfg=cfg)
    loaded.eval()
    input_batch = next(iter(datamodule.val_dataloader()))
    model.eval()
    with torch.no_grad():
        output = loaded(input_batch)
        assert torch.equal(output, model(input_batch))

    # Full dataset inference and resuming
    predictions = trainer.predict(loaded, datamodule=datamodule)
    assert sum(len(batch) for batch in predictions) == len(datamodule.splits["test"])
    cfg.trainer.max_epochs = 2
    again = create_trainer(cfg)
    again.fit(AlzheimersLightningModule(cfg), datamodule=datamodule, ckpt_path=str(last))
    assert again.current_epoch == 2


def test_datamodule_example_lengths(tiny_cohort: Path, tmp_path: Path) -> None:
    datamodule = MNIDataModule(_cfg(tiny_cohort, tmp_path))
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    val_loader = datamodule.val_dataloader()
    print(f"Train samples: {len(datamodule.train_dataset)}")
    print(f"Val samples: {len(datamodule.val_dataset)}")
    assert len(datamodule.train_dataset) == len(datamodule.splits["train"]) == 12
    assert len(datamodule.val_dataset) == 2
    assert sum(len(b["subject_id"]) for b in val_loader) == 2
    assert sum(len(b["subject_id"]) for b in train_loader) == 12


class MyModel(nn.Module):
    """A user's network: one logit per subject from the pooled images and the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, padding=1)
        self.head = nn.Linear(2 + 6, 1)

    def forward(self, images: torch.Tensor, clinical_features: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(images).mean(dim=(2, 3, 4))
        return self.head(torch.cat([pooled, clinical_features], dim=1))


class ImagesOnly(nn.Module):
    """``forward(self, x)`` as in the reference page: gets the images alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(1, 2, 3, 4))


def test_custom_model_trains_with_the_same_data_loss_and_run_folder(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_cohort, tmp_path)
    custom_model = MyModel()
    lit_model = AlzheimersLightningModule(cfg, model=custom_model)
    assert lit_model.model is custom_model
    before = custom_model.head.weight.detach().clone()
    trainer = create_trainer(cfg)
    trainer.fit(lit_model, datamodule=MNIDataModule(cfg))
    assert not torch.equal(before, custom_model.head.weight)  # the optimizer reached it
    assert "val/auroc" in trainer.callback_metrics
    last = Path(cfg.system.run_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"custom network `MyModel`.*model=MyModel"):
        load_checkpoint(last)
    again = AlzheimersLightningModule.load_from_checkpoint(last, model=MyModel())
    assert torch.equal(again.model.head.weight, custom_model.head.weight)
    assert again.get_model_info()["custom_model"] == "MyModel"

    positional = AlzheimersLightningModule(cfg, model=ImagesOnly())
    batch = next(iter(MNIDataModule(cfg).split_dataloader("val")))
    assert positional(batch).shape == (2,)

    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 0, 0, :2]

    with pytest.raises(ValueError, match=r"custom network `.*Wrong` must return one logit"):
        AlzheimersLightningModule(cfg, model=Wrong())(batch)


def test_forward_takes_tensors_with_sensible_default_masks(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_cohort, tmp_path, "model.modality_dropout=0.0")
    dm = MNIDataModule(cfg)
    model = AlzheimersLightningModule(cfg, spec=dm.spec).eval()
    batches = list(dm.split_dataloader("train"))
    batch = {k: torch.cat([b[k] for b in batches]) if torch.is_tensor(batches[0][k]) else
             [sid for b in batches for sid in b[k]] for k in batches[0]}
    assert (batch["modality_mask"][:, 1] == 0).any()  # a subject without PET is in there
    images, clinical_features = batch["images"], batch["clinical_features"]
    with torch.no_grad():
        from_dict = model(batch)
        from_tensors = model(images, clinical_features)
        assert torch.allclose(from_tensors, from_dict, atol=1e-6)
        # NaN = missing: the default clinical mask is the finite values
        gaps = clinical_features.clone()
        gaps[:, 0] = float("nan")
        masked = {**batch, "clinical_mask": batch["clinical_mask"].clone()}
        masked["clinical_mask"][:, 0] = 0
        assert torch.allclose(model(images, gaps), model(masked), atol=1e-6)
        # an explicit modality mask wins over the default
        absent = torch.tensor([[1.0, 0.0]]).repeat(len(images), 1)
        assert not torch.allclose(model(images, clinical_features, modality_mask=absent),
                                  from_tensors)


def test_trainer_factory_and_keyword_form(tiny_cohort: Path, tmp_path: Path) -> None:
    from gazimed_lab.training import DEFAULT_TRAINING_CONFIG, TrainerFactory

    # Create model (the summary's keyword form; sizes of this cohort)
    model = AlzheimersLightningModule(
        img_size=(40, 48, 40),
        patch_size=(2, 2, 2),
        in_channels=2,
        clinical_features_dim=6,
        learning_rate=1e-4,
        weight_decay=1e-2,
        use_mixed_precision=True,
        gradient_clip_val=1.0,
        accumulate_grad_batches=8,
        embed_dim=12, num_heads=[1, 2, 2, 4], window_size=[4, 4, 4], depths=[1, 1, 1, 1],
        fusion_stages=[2, 3], fusion_dim=16, fusion_heads=2,
    )
    assert DEFAULT_TRAINING_CONFIG.preset == "default"
    config = load_config("default", overrides=[
        f"system.run_dir={tmp_path / 'runs' / 'default'}", *QUICK])
    trainer = TrainerFactory.create_trainer(config=config,
                                            experiment_name="alzheimers_detection_v1")
    assert (tmp_path / "runs" / "alzheimers_detection_v1" / "config.yaml").is_file()
    dm = MNIDataModule(_cfg(tiny_cohort, tmp_path))
    dm.setup("fit")
    train_dataloader, val_dataloader = dm.train_dataloader(), dm.val_dataloader()
    trainer.fit(model, train_dataloader, val_dataloader)
    assert trainer.current_epoch == 1 and "val/loss" in trainer.callback_metrics
    with pytest.raises(ValueError, match=r"`experiment_name` must be a plain folder name"):
        TrainerFactory.create_trainer(config=config, experiment_name="../escape")


def test_gazimed_lab_0_1_checkpoint_still_predicts(tmp_path: Path) -> None:
    """A run trained before the InputSpec (tests/data/legacy_v1.ckpt, made by gazimed-lab
    0.1 on ``make_tiny_cohort(seed=0)``) predicts the same scores after migration."""
    from conftest import make_tiny_cohort

    data = Path(__file__).parent / "data"
    manifest = make_tiny_cohort(tmp_path / "cohort")
    ckpt = shutil.copy(data / "legacy_v1.ckpt", tmp_path / "legacy.ckpt")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "preprocessing" in raw and "spec" not in raw["hyper_parameters"]
    model = load_checkpoint(ckpt)
    assert model.spec.grid.name == "demo_4mm" and model.spec.n_features == 6
    assert "in_channels" not in model.cfg.model
    scores = predict_manifest(ckpt, manifest, cache_dir=tmp_path / "cache")
    expected = pd.read_csv(data / "legacy_v1_scores.csv")
    assert list(scores["subject_id"]) == list(expected["subject_id"])
    assert (scores["score"] - expected["score"]).abs().max() < 1e-6

    # a spec of an unknown (future) version is refused, naming the file and both versions
    raw = read_checkpoint(ckpt)  # migrated
    raw["hyper_parameters"]["spec"] = {**model.spec.to_dict(), "version": 9}
    future = tmp_path / "future.ckpt"
    torch.save(raw, future)
    with pytest.raises(CheckpointError, match=rf"version must be one of \[1, 2\].*reads up to "
                                              rf"2\), got 9 \({future}\)"):
        load_checkpoint(future)


def test_spec_mismatch_on_fit_names_every_difference(tiny_cohort: Path, tmp_path: Path) -> None:
    dm = MNIDataModule(_cfg(tiny_cohort, tmp_path))
    other = MNIDataModule(_cfg(tiny_cohort, tmp_path, "data.channels=1"))
    model = AlzheimersLightningModule(_cfg(tiny_cohort, tmp_path), spec=dm.spec)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"channels: model 2, data 1.*spec=model\.spec"):
        trainer.fit(model, datamodule=other)
