"""AlzheimersLightningModule: fit, checkpoints, predict, non-finite policy (CPU, tiny)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from test_models import GRID, N_CLIN, TINY_OVERRIDES, tiny_spec
from torch.utils.data import DataLoader, Dataset

from gazimed_lab.config import load_config
from gazimed_lab.data.spec import SpecError
from gazimed_lab.models import AlzheimersLightningModule, flatten_predictions
from gazimed_lab.models.metrics import METRIC_NAMES
from gazimed_lab.training import best_checkpoint, create_trainer


class RandomCohort(Dataset):
    """In-memory subjects in the datamodule's batch format; targets alternate low/high."""

    def __init__(self, n: int, channels: int = 2, seed: int = 0, prefix: str = "sub",
                 targets: bool = True, bad: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(seed)
        truth = torch.tensor([0.2 + 0.6 * (i % 2) for i in range(n)])
        truth += 0.05 * torch.rand(n, generator=g)
        self.targets = truth if targets else torch.full((n,), math.nan)
        # the target leaves a trace in the MRI and in a clinical feature
        self.images = torch.randn(n, channels, *GRID, generator=g) * 0.5
        self.images[:, 0] += truth.view(-1, 1, 1, 1)
        self.features = torch.randn(n, N_CLIN, generator=g)
        self.features[:, 0] = truth * 2
        self.mask = torch.ones(n, N_CLIN)
        self.modality = torch.ones(n, 2)
        self.modality[::3, 1] = 0  # every third subject has no PET
        self.images[::3, 1:] = 0
        for i in bad:
            self.features[i, 1] = math.nan  # observed but not a number: a data bug
        self.ids = [f"{prefix}-{i:03d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "images": self.images[i], "modality_mask": self.modality[i],
            "clinical_features": self.features[i], "clinical_mask": self.mask[i],
            "targets": self.targets[i], "subject_id": self.ids[i],
        }


class TinyDataModule(pl.LightningDataModule):
    """Random batches plus a fitted input spec, like MNIDataModule."""

    def __init__(self, n_train: int = 8, n_val: int = 4, batch_size: int = 4,
                 bad: tuple[int, ...] = (), channels: int = 2, n_clin: int = N_CLIN) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.spec = tiny_spec(channels, n_clin, fitted=True)
        self.train = RandomCohort(n_train, channels, seed=1, prefix="train", bad=bad)
        self.val = RandomCohort(n_val, channels, seed=2, prefix="val")
        self.predict = RandomCohort(3, channels, seed=3, prefix="new", targets=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.predict, batch_size=2)


def tiny_cfg(*extra: str):
    return load_config("cpu-demo", overrides=[*TINY_OVERRIDES, *extra])


def tiny_model(*extra: str) -> AlzheimersLightningModule:
    """The tiny network, built (like a model without data) from an unfitted spec."""
    return AlzheimersLightningModule(tiny_cfg(*extra), spec=tiny_spec())


def test_fast_dev_run_fit(tmp_path):
    pl.seed_everything(0)
    model = tiny_model()
    assert not model.spec.fitted
    trainer = create_trainer(model.cfg, run_dir=tmp_path, fast_dev_run=True)
    trainer.fit(model, datamodule=TinyDataModule())
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # the model adopted the data's fitted spec, and will save it
    assert model.spec == TinyDataModule().spec and model.spec.fitted
    assert model.hparams["spec"] == model.spec.to_dict()


@pytest.mark.slow
def test_fit_checkpoint_roundtrip_identical_predictions(tmp_path):
    pl.seed_everything(0)
    cfg = tiny_cfg("trainer.max_epochs=2")
    dm = TinyDataModule()
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = create_trainer(cfg, run_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    for stage in ("train", "val"):
        for name in (*METRIC_NAMES, "loss"):
            assert f"{stage}/{name}" in trainer.callback_metrics
    assert "train/skipped_nonfinite" in trainer.callback_metrics

    last = tmp_path / "checkpoints" / "last.ckpt"
    raw = torch.load(last, map_location="cpu", weights_only=True)  # plain contents only
    assert raw["hyper_parameters"]["spec"] == dm.spec.to_dict()  # saved once, fitted
    assert "preprocessing" not in raw and "MNIDataModule" not in raw
    assert raw["hyper_parameters"]["cfg"]["model"]["embed_dim"] == 6

    loaded = AlzheimersLightningModule.load_from_checkpoint(last)
    assert loaded.spec == dm.spec
    assert loaded.cfg == model.cfg
    model.eval()
    loaded.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))

    best = AlzheimersLightningModule.load_from_checkpoint(best_checkpoint(tmp_path))
    records = flatten_predictions(pl.Trainer(logger=False, enable_progress_bar=False)
                                  .predict(best, datamodule=dm))
    assert [r["subject_id"] for r in records] == ["new-000", "new-001", "new-002"]
    for r in records:
        assert set(r) == {"subject_id", "score", "label", "target"}
        assert 0.0 <= r["score"] <= 1.0 and r["label"] == int(r["score"] > 0.5)
        assert math.isnan(r["target"])

    results = trainer.test(model, datamodule=dm, ckpt_path="best")
    assert {"test/auroc", "test/loss", "test/specificity"} <= set(results[0])


def test_bf16_mixed_precision_fit_on_cpu(tmp_path):
    cfg = tiny_cfg("trainer.precision=bf16-mixed")
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = create_trainer(cfg, run_dir=tmp_path, fast_dev_run=True)
    trainer.fit(model, datamodule=TinyDataModule())
    loss = trainer.callback_metrics["train/loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_fit_start_checks_datamodule_features(tmp_path):
    cfg = tiny_cfg()
    trainer = create_trainer(cfg, run_dir=tmp_path, fast_dev_run=True)
    with pytest.raises(SpecError, match=r"clinical features: model 5, data 7.*spec=dm\.spec"):
        trainer.fit(AlzheimersLightningModule(cfg, spec=tiny_spec()),
                    datamodule=TinyDataModule(n_clin=7))
    trainer = create_trainer(cfg, run_dir=tmp_path, fast_dev_run=True)
    with pytest.raises(SpecError, match=r"channels: model 2, data 1"):
        trainer.fit(AlzheimersLightningModule(cfg, spec=tiny_spec()),
                    datamodule=TinyDataModule(channels=1))


# Feature dropout could hide the NaN feature (it replaces dropped values): off here.
NO_FEATURE_DROPOUT = "model.clinical_feature_dropout=0.0"


def test_nonfinite_loss_stops_naming_subjects(tmp_path):
    cfg = tiny_cfg(NO_FEATURE_DROPOUT)
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = create_trainer(cfg, run_dir=tmp_path, fast_dev_run=True)
    with pytest.raises(FloatingPointError, match=r"train-002.*nonfinite_policy=skip"):
        trainer.fit(model, datamodule=TinyDataModule(bad=(2,)))


def test_nonfinite_loss_skip_policy_counts_and_logs():
    cfg = tiny_cfg("trainer.nonfinite_policy=skip", "trainer.max_epochs=1", NO_FEATURE_DROPOUT)
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    dm = TinyDataModule(bad=(5,))
    trainer.fit(model, datamodule=dm)
    assert model.skipped_nonfinite == 1
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_missing_targets_rejected_outside_predict():
    model = tiny_model()
    batch = next(iter(DataLoader(RandomCohort(2, targets=False), batch_size=2)))
    with pytest.raises(ValueError, match=r"`targets` must be finite for val.*sub-000"):
        model.validation_step(batch, 0)


def test_a_full_disk_while_checkpointing_leaves_no_truncated_checkpoint(tmp_path, monkeypatch):
    import errno

    real_save = torch.save
    calls = {"n": 0}

    def half_then_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint is written; the disk fills during the next
            Path(f).write_bytes(b"\x80" * 100)  # a partial file under the temporary name
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    model = tiny_model("trainer.max_epochs=3")
    trainer = create_trainer(model.cfg, run_dir=tmp_path)
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match=r"`checkpoint` could not be written to .*the disk is "
                                      r"full; free space"):
        trainer.fit(model, datamodule=TinyDataModule())
    monkeypatch.setattr(torch, "save", real_save)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert not [f for f in files if ".tmp-" in f]  # no partial temporary file left
    for name in files:  # every checkpoint under a normal name is complete
        if name.endswith(".ckpt") and not (tmp_path / "checkpoints" / name).is_symlink():
            assert AlzheimersLightningModule.load_from_checkpoint(
                tmp_path / "checkpoints" / name).spec.fitted
