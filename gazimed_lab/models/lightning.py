"""``AlzheimersLightningModule``: wires the network, loss, metrics and optimizer.

Thin by design (lightning-hydra-template style): the architecture lives in
:mod:`gazimed_lab.models.network`, everything else in its own module. The
resolved config is saved as a plain dict in the hyperparameters, and the data
preprocessing statistics in the checkpoint, so ``load_from_checkpoint(path)``
needs nothing else.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from gazimed_lab import __version__
from gazimed_lab.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from gazimed_lab.data.grid import grid_from_config
from gazimed_lab.data.sampling import derive_seed
from gazimed_lab.models.losses import ScoreLoss
from gazimed_lab.models.metrics import ScoreMetrics
from gazimed_lab.models.network import MultimodalAlzheimersNet
from gazimed_lab.models.optim import build_optimizer

__all__ = ["AlzheimersLightningModule", "flatten_predictions", "resolve_config"]

_SECTIONS = ("model", "optim", "trainer", "data", "system")


def _field_sections() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section in _SECTIONS:
        for f in dataclasses.fields(type(getattr(Config(), section))):
            out.setdefault(f.name, []).append(section)
    return out


def _keyword_paths(key: str, value: Any) -> list[tuple[str, Any]]:
    """Config paths and values for one keyword argument of the keyword form."""
    if isinstance(value, tuple):
        value = list(value)
    if key == "use_mixed_precision":
        # True: mixed precision where the hardware has it (trainer.precision None = auto).
        return [("trainer.precision", None if value else "32-true")]
    if key == "in_channels":
        return [("model.in_channels", value), ("data.channels", value)]
    sections = _field_sections().get(key)
    if not sections:
        close = difflib.get_close_matches(key, [*_field_sections(), "use_mixed_precision"], n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ConfigError(f"keyword `{key}` must be a config field name, got an unknown name{hint}")
    if len(sections) > 1:
        raise ConfigError(
            f"keyword `{key}` must name one config field, got one in {sections}; pass a cfg "
            "with load_config(..., overrides=[...]) instead"
        )
    return [(f"{sections[0]}.{key}", value)]


def resolve_config(cfg: Any = None, overrides: dict[str, Any] | None = None) -> DictConfig:
    """Build a checked config from ``cfg`` (config, dict, preset, YAML or None) + keywords.

    ``model.img_size`` is filled from the data grid when unset, and
    ``model.in_channels`` must equal ``data.channels`` for the image modes.
    """
    if cfg is None:
        base = load_config("default")
    elif isinstance(cfg, DictConfig):
        base = config_from_dict(config_to_dict(cfg))
    elif isinstance(cfg, dict):
        base = config_from_dict(cfg)
    elif isinstance(cfg, (str, Path)):
        base = load_config(cfg)
    else:
        raise TypeError(f"`cfg` must be a config, dict, preset name or YAML path, got {type(cfg)}")
    for key, value in (overrides or {}).items():
        for path, val in _keyword_paths(key, value):
            try:
                OmegaConf.update(base, path, val, merge=False)
            except Exception as exc:  # omegaconf validation errors
                raise ConfigError(f"keyword `{key}` is not valid for `{path}`: {exc}") from exc
    model = base.model
    if model.mode != "clinical_only":
        if model.img_size is None:
            model.img_size = list(grid_from_config(base).shape)
        if model.in_channels != base.data.channels:
            raise ConfigError(
                f"`model.in_channels` must equal `data.channels`, got {model.in_channels} and "
                f"{base.data.channels}; set both (the keyword `in_channels` sets both)"
            )
    return config_from_dict(config_to_dict(base))


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Network arguments from the ``model`` section."""
    return config_to_dict(cfg)["model"]


def flatten_predictions(outputs: list[Any]) -> list[dict[str, Any]]:
    """Flatten ``trainer.predict`` output (a list per batch, or per dataloader) to records."""
    records: list[dict[str, Any]] = []
    for item in outputs or []:
        if isinstance(item, dict):
            records.append(item)
        else:
            records.extend(flatten_predictions(item))
    return records


class AlzheimersLightningModule(pl.LightningModule):
    """Train, evaluate and predict the Alzheimer's disease score.

    Parameters
    ----------
    cfg
        A config from :func:`gazimed_lab.load_config`, a preset name / YAML path,
        a plain dict (as saved in checkpoints), or ``None`` for the defaults.
    **kwargs
        Keyword form of the reference design: any config field by its name
        (``img_size``, ``patch_size``, ``in_channels``, ``clinical_features_dim``,
        ``learning_rate``, ``weight_decay``, ``gradient_clip_val``,
        ``accumulate_grad_batches``, ...) plus ``use_mixed_precision``. They
        override ``cfg``; trainer settings land in ``self.cfg.trainer`` so that
        ``create_trainer(model.cfg)`` honours them.

    Attributes
    ----------
    cfg : omegaconf.DictConfig
        The resolved configuration (``model.img_size`` filled in from the grid).
    net : MultimodalAlzheimersNet
        The network.
    preprocessing : dict or None
        The datamodule's ``preprocessing_state()`` taken at fit start; saved in
        and restored from checkpoints under the ``"preprocessing"`` key.
    skipped_nonfinite : int
        Training batches skipped for a non-finite loss (policy ``skip``).
    """

    def __init__(self, cfg: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg, kwargs)
        self.save_hyperparameters({"cfg": config_to_dict(self.cfg)})
        self.net = MultimodalAlzheimersNet(**model_kwargs(self.cfg))
        optim = self.cfg.optim
        self.loss_fn = ScoreLoss(
            optim.loss,
            dict(optim.loss_weights) if optim.loss_weights else None,
            optim.huber_delta,
        )
        self.threshold = float(optim.threshold)
        self.train_metrics = ScoreMetrics("train", self.threshold)
        self.val_metrics = ScoreMetrics("val", self.threshold)
        self.test_metrics = ScoreMetrics("test", self.threshold)
        self.preprocessing: dict[str, Any] | None = None
        self.skipped_nonfinite = 0

    # ----------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scores ``(B,)`` in [0, 1] for a batch dict (see the datamodule)."""
        return torch.sigmoid(self._logits(batch).float())

    def _logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.net.logits(
            images=batch.get("images"),
            modality_mask=batch.get("modality_mask"),
            clinical_features=batch.get("clinical_features"),
            clinical_mask=batch.get("clinical_mask"),
        )

    def _step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        targets = batch["targets"].float()
        missing = ~torch.isfinite(targets)
        if missing.any():
            ids = [batch["subject_id"][i] for i in missing.nonzero().flatten().tolist()]
            raise ValueError(
                f"`targets` must be finite for {stage}, got NaN for subject_id {ids}; "
                "targets may be missing only for prediction"
            )
        logits = self._logits(batch)
        loss = self.loss_fn(logits, targets)
        return loss, torch.sigmoid(logits.detach().float())

    def metrics(self, stage: str) -> ScoreMetrics:
        """Return the metric collection of ``stage`` (``train``, ``val`` or ``test``)."""
        return getattr(self, f"{stage}_metrics")

    def _log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=batch_size, prog_bar=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """Loss of one batch; a non-finite loss stops or skips (``trainer.nonfinite_policy``)."""
        loss, scores = self._step(batch, "train")
        if not torch.isfinite(loss):
            ids = list(batch.get("subject_id", []))
            if self.cfg.trainer.nonfinite_policy == "stop":
                raise FloatingPointError(
                    f"training loss must be finite, got {loss.item()} at epoch "
                    f"{self.current_epoch}, batch {batch_idx} (subject_id {ids}); check these "
                    "subjects' images and clinical values, lower the learning rate, or set "
                    "trainer.nonfinite_policy=skip"
                )
            self.skipped_nonfinite += 1
            return None  # Lightning skips backward and the optimizer step
        self.train_metrics.update(scores, batch["targets"])
        self._log_loss("train", loss, len(scores))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and metric update of one validation batch."""
        loss, scores = self._step(batch, "val")
        self.val_metrics.update(scores, batch["targets"])
        self._log_loss("val", loss, len(scores))
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and metric update of one test batch."""
        loss, scores = self._step(batch, "test")
        self.test_metrics.update(scores, batch["targets"])
        self._log_loss("test", loss, len(scores))
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per-subject records ``{subject_id, score, label, target}``.

        ``label`` is 1 when ``score > optim.threshold`` (the torchmetrics rule);
        ``target`` is NaN when unknown.
        """
        scores = self(batch).detach().float().cpu().tolist()
        targets = batch.get("targets")
        targets = [math.nan] * len(scores) if targets is None else targets.float().cpu().tolist()
        return [
            {"subject_id": str(sid), "score": float(s), "label": int(s > self.threshold),
             "target": float(t)}
            for sid, s, t in zip(batch["subject_id"], scores, targets)
        ]

    def _log_epoch(self, stage: str) -> None:
        metrics = self.metrics(stage)
        if metrics.updated:
            self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Reseed torch's generator from (seed, epoch, batch, rank).

        Dropout and modality dropout draws then depend on nothing else (not on what
        Lightning or the DataLoader drew before), so a resumed run repeats them.
        """
        torch.manual_seed(derive_seed(int(self.cfg.system.seed), self.current_epoch,
                                      batch_idx, self.global_rank))

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training metrics and skipped-batch count."""
        self._log_epoch("train")
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation metrics (``val/auroc`` is the monitor)."""
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        """Log the test metrics."""
        self._log_epoch("test")

    # --------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + warmup/cosine stepped per optimizer step over the real number of steps."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "`trainer.max_epochs` must be set (>= 1) for the cosine schedule, got an "
                "unbounded run"
            )
        epochs = self.trainer.max_epochs
        per_epoch = math.ceil(total / epochs) if epochs and epochs > 0 else int(total)
        optimizer, scheduler = build_optimizer(self.net, self.cfg.optim, int(total), per_epoch)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------ data state / ckpts
    def on_fit_start(self) -> None:
        """Check the model against the datamodule and take its preprocessing statistics."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self._check_datamodule(datamodule)
        state_fn = getattr(datamodule, "preprocessing_state", None)
        if callable(state_fn):
            state = state_fn()
            try:
                self.preprocessing = json.loads(json.dumps(state))
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"`preprocessing_state()` must return a JSON-able dict, got {type(state)}: "
                    f"{exc}"
                ) from exc

    def _check_datamodule(self, datamodule: Any) -> None:
        """Fail before training when the data does not fit the network (grid, features)."""
        net = self.net
        names = getattr(datamodule, "feature_names", None)
        if net.uses_clinical and isinstance(names, (list, tuple)) and names:
            if len(names) != net.clinical_features_dim:
                raise ValueError(
                    f"`model.clinical_features_dim` must equal the number of clinical columns "
                    f"of the data ({len(names)}), got {net.clinical_features_dim}; build the "
                    "model with clinical_features_dim=len(dm.feature_names)"
                )
        size = getattr(datamodule, "img_size", None)
        if net.uses_images and isinstance(size, (list, tuple)):
            if tuple(int(s) for s in size) != net.img_size:
                raise ValueError(
                    f"`model.img_size` must equal the data grid {tuple(size)}, got "
                    f"{net.img_size}; leave model.img_size unset to follow data.grid"
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the preprocessing statistics and the package version (plain types)."""
        checkpoint["preprocessing"] = self.preprocessing
        checkpoint["gazimed_lab_version"] = __version__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the preprocessing statistics."""
        self.preprocessing = checkpoint.get("preprocessing")

    def get_model_info(self) -> dict[str, Any]:
        """Parameters per component, input grid and padding, loss and precision settings."""
        info = self.net.get_model_info()
        info.update(
            loss=self.cfg.optim.loss,
            precision=self.cfg.trainer.precision,
            activation_checkpointing=bool(self.cfg.model.activation_checkpointing),
        )
        return info
