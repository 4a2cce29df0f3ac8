"""create_trainer: precision, accumulation, clipping, callbacks, loggers, run folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from test_lightning import TinyDataModule, tiny_cfg
from test_models import tiny_spec

from gazimed_lab.config import load_config
from gazimed_lab.models import AlzheimersLightningModule, WarmupCosine
from gazimed_lab.training import best_checkpoint, create_trainer, resolve_precision


def _callback(trainer, kind):
    found = [c for c in trainer.callbacks if isinstance(c, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}"
    return found[0]


def test_settings_reach_the_trainer(tmp_path):
    cfg = tiny_cfg("trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5",
                   "trainer.gradient_clip_algorithm=value", "trainer.accumulate_grad_batches=3",
                   "trainer.early_stopping_patience=4", "trainer.early_stopping_min_delta=0.01",
                   "trainer.enable_progress_bar=true", "trainer.save_top_k=2")
    trainer = create_trainer(cfg, run_dir=tmp_path)
    assert trainer.precision == "bf16-mixed"
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert trainer.accumulate_grad_batches == 3
    ckpt = _callback(trainer, ModelCheckpoint)
    assert (ckpt.monitor, ckpt.mode, ckpt.save_top_k) == ("val/auroc", "max", 2)
    assert ckpt.save_last is True
    assert ckpt.dirpath == str(tmp_path / "checkpoints")
    name = ckpt.format_checkpoint_name({"epoch": 3, "val/auroc": torch.tensor(0.81234)})
    assert name.endswith("checkpoints/epoch=03-val_auroc=0.812.ckpt")
    stop = _callback(trainer, EarlyStopping)
    assert (stop.monitor, stop.patience, stop.min_delta) == ("val/auroc", 4, 0.01)
    _callback(trainer, LearningRateMonitor)
    _callback(trainer, TQDMProgressBar)
    csv = next(lg for lg in trainer.loggers if isinstance(lg, CSVLogger))
    tb = next(lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger))
    assert Path(csv.log_dir) == tmp_path / "logs" / "csv"
    assert Path(tb.log_dir) == tmp_path / "logs" / "tensorboard"
    # run folder
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    assert load_config(tmp_path / "config.yaml") == model.cfg
    env = (tmp_path / "environment.txt").read_text()
    assert "torch: " in env and "git commit: " in env and "numpy==" in env


def test_precision_defaults_and_keyword_form_settings(tmp_path):
    if not torch.cuda.is_available():
        assert resolve_precision(None) == "32-true"
    assert resolve_precision(None, "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    model = AlzheimersLightningModule(
        tiny_cfg(), spec=tiny_spec(), use_mixed_precision=False, gradient_clip_val=2.0,
        accumulate_grad_batches=5)
    trainer = create_trainer(model.cfg, run_dir=tmp_path)
    assert trainer.precision == "32-true"
    assert trainer.gradient_clip_val == 2.0 and trainer.accumulate_grad_batches == 5
    clipless = create_trainer(tiny_cfg("trainer.gradient_clip_val=null"), run_dir=tmp_path)
    assert clipless.gradient_clip_val is None


def test_deterministic_flag(tmp_path):
    try:
        create_trainer(tiny_cfg("trainer.deterministic=true"), run_dir=tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("n_train", "accumulate", "steps"), [(4, 2, 2), (5, 2, 3)])
def test_optimizer_steps_are_batches_over_accumulation(n_train, accumulate, steps):
    pl.seed_everything(0)
    cfg = tiny_cfg(f"trainer.accumulate_grad_batches={accumulate}", "trainer.max_epochs=1",
                   "data.batch_size=1")
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=accumulate, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=TinyDataModule(n_train=n_train, batch_size=1))
    assert trainer.global_step == steps
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.total_steps == trainer.estimated_stepping_batches == steps


@pytest.mark.slow
def test_tiny_run_folder_best_checkpoint_and_lr_schedule(tmp_path):
    pl.seed_everything(0)
    cfg = tiny_cfg("trainer.max_epochs=3", "data.batch_size=2", "trainer.save_top_k=2",
                   "trainer.early_stopping=false", "optim.warmup_epochs=1",
                   "optim.learning_rate=0.001", "optim.min_lr=0.00001")
    model = AlzheimersLightningModule(cfg, spec=tiny_spec())
    trainer = create_trainer(cfg, run_dir=tmp_path)
    trainer.fit(model, datamodule=TinyDataModule(n_train=8, n_val=4, batch_size=2))
    assert trainer.global_step == 12
    # per-step lr: warmup over the first epoch (4 steps), cosine to min_lr after
    metrics = pd.read_csv(tmp_path / "logs" / "csv" / "metrics.csv")
    assert {"train/loss", "val/loss", "val/auroc", "val/f1", "epoch", "step"} <= set(metrics)
    lrs = metrics["lr-AdamW/decay"].dropna().tolist()
    expected = WarmupCosine(4, 12, 1e-3, 1e-5)
    assert lrs == pytest.approx([expected.lr(s) for s in range(12)], rel=1e-5)
    assert metrics["lr-AdamW/no_decay"].dropna().tolist() == pytest.approx(lrs)

    folder = tmp_path / "checkpoints"
    ckpt = _callback(trainer, ModelCheckpoint)
    assert (folder / "last.ckpt").is_file()
    assert best_checkpoint(tmp_path).resolve().name == ckpt.best_model_path.rsplit("/", 1)[-1]
    topk = sorted(p.name for p in folder.glob("epoch=*.ckpt"))
    assert len(topk) == 2 and all("-val_auroc=" in n for n in topk)
    (folder / "best.ckpt").unlink()
    def score(name):
        return float(name.rsplit("=", 1)[1][: -len(".ckpt")])

    fallback = best_checkpoint(tmp_path)
    assert score(fallback.name) == max(score(n) for n in topk)
    for path in folder.glob("epoch=*.ckpt"):
        path.unlink()
    assert best_checkpoint(tmp_path).name == "last.ckpt"
    (folder / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="must hold a checkpoint"):
        best_checkpoint(tmp_path)
