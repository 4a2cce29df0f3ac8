"""``AlzheimersLightningModule``: wires the network, loss, metrics and optimizer.

Thin by design (lightning-hydra-template style): the architecture lives in
:mod:`gazimed_lab.models.network`, everything else in its own module. Two things
are saved in the hyperparameters, hence in every checkpoint: the resolved config
(what the user chose) and the fitted :class:`~gazimed_lab.data.spec.InputSpec`
(what the data decided), so ``load_from_checkpoint(path)`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gazimed_lab import __version__
from gazimed_lab.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from gazimed_lab.data.grid import grid_from_config
from gazimed_lab.data.sampling import derive_seed
from gazimed_lab.data.spec import InputSpec, SpecError
from gazimed_lab.models.losses import ScoreLoss
from gazimed_lab.models.metrics import ScoreMetrics
from gazimed_lab.models.network import build_network
from gazimed_lab.models.optim import build_optimizer

__all__ = ["AlzheimersLightningModule", "flatten_predictions", "resolve_config", "resolve_spec"]

log = logging.getLogger(__name__)

_SECTIONS = ("model", "optim", "trainer", "data", "system")
#: Keywords of the reference design that describe the data, not a config field.
_SPEC_KEYWORDS = ("img_size", "in_channels", "clinical_features_dim")
#: Batch entries a network reads, in the order of the tensor form of ``forward``.
NETWORK_INPUTS = ("images", "clinical_features", "modality_mask", "clinical_mask")


def _field_sections() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section in _SECTIONS:
        for f in dataclasses.fields(type(getattr(Config(), section))):
            out.setdefault(f.name, []).append(section)
    return out


def _keyword_paths(key: str, value: Any, base: DictConfig) -> list[tuple[str, Any]]:
    """Config paths and values for one keyword argument of the keyword form."""
    if isinstance(value, tuple):
        value = list(value)
    if key == "use_mixed_precision":
        # True: mixed precision where the hardware has it (trainer.precision None = auto).
        return [("trainer.precision", None if value else "32-true")]
    if key == "in_channels":
        return [("data.channels", value)]
    if key == "img_size":
        grid = grid_from_config(base)
        if [int(v) for v in value] == list(grid.shape):
            return []
        # Another size on the configured grid's voxel size and origin: a custom grid.
        return [("data.grid_shape", [int(v) for v in value]),
                ("data.grid_affine", [list(row) for row in grid.affine_tuple])]
    sections = _field_sections().get(key)
    if not sections:
        known = [*_field_sections(), "use_mixed_precision", *_SPEC_KEYWORDS]
        close = difflib.get_close_matches(key, known, n=1)
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

    Keywords name config fields (``learning_rate=1e-4``), or are ``use_mixed_precision``,
    ``in_channels`` (sets ``data.channels``) or ``img_size`` (a grid of that shape on
    the configured grid's voxel size and origin).
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
        for path, val in _keyword_paths(key, value, base):
            try:
                OmegaConf.update(base, path, val, merge=False)
            except Exception as exc:  # omegaconf validation errors
                raise ConfigError(f"keyword `{key}` is not valid for `{path}`: {exc}") from exc
    return config_from_dict(config_to_dict(base))


def _manifest_columns(cfg: DictConfig) -> list[str] | None:
    """Clinical columns the data module will read, without fitting anything."""
    data = cfg.data
    if data.clinical_columns:
        return [str(c) for c in data.clinical_columns]
    manifest = Path(str(data.manifest))
    if not manifest.is_file():
        return None
    from gazimed_lab.data.manifest import read_manifest

    return read_manifest(manifest, require_targets=False, check_images=False).clinical_columns


def resolve_spec(cfg: DictConfig, spec: InputSpec | dict[str, Any] | None = None,
                 n_features: int | None = None) -> InputSpec:
    """Return the input spec a model is built from.

    ``spec`` when given (e.g. ``dm.spec``, or a checkpoint's); else an unfitted spec
    from the config's data choices, with the clinical columns of ``data.clinical_columns``
    or of the manifest's header, or ``n_features`` (the keyword
    ``clinical_features_dim``). At fit time the model adopts the data module's fitted
    spec (:meth:`InputSpec.adopt`).
    """
    if spec is not None:
        spec = InputSpec.from_dict(spec, "spec")
        if n_features is not None and int(n_features) != spec.n_features:
            raise SpecError(
                f"`clinical_features_dim` must equal the spec's feature count "
                f"{spec.n_features}, got {n_features}; leave it out when passing a spec"
            )
        return spec
    data = cfg.data
    grid = grid_from_config(cfg)
    names = None if n_features is not None else _manifest_columns(cfg)
    if names is None and n_features is None:
        if cfg.model.mode != "image_only":
            raise SpecError(
                f"the clinical feature count must be known to build the clinical encoder, got "
                f"no manifest at `data.manifest` ({data.manifest}) and no data.clinical_columns;"
                " pass spec=dm.spec, or clinical_features_dim=N"
            )
    return InputSpec.unfitted(grid, int(data.channels), str(data.pet_reference),
                              n_features, names, str(data.cache_dtype))


def flatten_predictions(outputs: list[Any]) -> list[dict[str, Any]]:
    """Flatten ``trainer.predict`` output (a list per batch, or per dataloader) to records."""
    records: list[dict[str, Any]] = []
    for item in outputs or []:
        if isinstance(item, dict):
            records.append(item)
        else:
            records.extend(flatten_predictions(item))
    return records


def default_modality_mask(images: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` presence mask for an image tensor: MRI present, PET where it is nonzero."""
    batch = images.shape[0]
    pet = (images[:, 1:].reshape(batch, -1) != 0).any(dim=1) if images.shape[1] > 1 else (
        torch.zeros(batch, dtype=torch.bool, device=images.device))
    return torch.stack([torch.ones_like(pet), pet], dim=1).to(images.dtype)


class _CustomNetworkCall:
    """Calls a user's ``nn.Module`` with the batch entries its ``forward`` names.

    A forward naming none of :data:`NETWORK_INPUTS` gets the image tensor alone,
    positionally (``forward(self, x)``). Its output must be one logit per subject.
    """

    def __init__(self, network: nn.Module) -> None:
        params = inspect.signature(network.forward).parameters
        self.name = type(network).__qualname__
        self.keywords = [name for name in NETWORK_INPUTS if name in params]

    def __call__(self, network: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self.keywords:
            out = network(**{k: inputs[k] for k in self.keywords})
        else:
            out = network(inputs["images"])
        if not torch.is_tensor(out) or out.ndim not in (1, 2) or (
                out.ndim == 2 and out.shape[1] != 1):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"custom network `{self.name}` must return one logit per subject, shape (B,) "
                f"or (B, 1), got {got}"
            )
        return out.reshape(-1)


class AlzheimersLightningModule(pl.LightningModule):
    """Train, evaluate and predict the Alzheimer's disease score.

    Parameters
    ----------
    cfg
        A config from :func:`gazimed_lab.load_config`, a preset name / YAML path,
        a plain dict (as saved in checkpoints), or ``None`` for the defaults.
    spec
        The data's :class:`~gazimed_lab.data.spec.InputSpec` (``dm.spec``) or its dict.
        Without it the model is built from the config's data choices and the
        manifest's columns, and adopts the data module's fitted spec when fit starts.
    model
        Bring your own network (any ``nn.Module``) instead of the configured one;
        it is trained with the same data, loss, metrics, optimizer and run folder.
        Its ``forward`` receives the batch entries it names among ``images``,
        ``clinical_features``, ``modality_mask`` and ``clinical_mask`` (or the
        images alone, positionally) and returns one logit per subject.
    **kwargs
        Keyword form of the reference design: any config field by its name
        (``patch_size``, ``learning_rate``, ``weight_decay``, ``gradient_clip_val``,
        ``accumulate_grad_batches``, ...), ``use_mixed_precision``, and the data sizes
        ``img_size``, ``in_channels``, ``clinical_features_dim``. Trainer settings land
        in ``self.cfg.trainer`` so that ``create_trainer(model.cfg)`` honours them.

    Attributes
    ----------
    cfg : omegaconf.DictConfig
        The resolved configuration.
    spec : InputSpec
        The input contract (fitted once the model has been fit on a data module).
    model : torch.nn.Module
        The network (``net`` is the same object).
    skipped_nonfinite : int
        Training batches skipped for a non-finite loss (policy ``skip``).
    """

    def __init__(self, cfg: Any = None, spec: InputSpec | dict[str, Any] | None = None,
                 model: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__()
        n_features = kwargs.pop("clinical_features_dim", None)
        self.cfg = resolve_config(cfg, kwargs)
        self.spec = resolve_spec(self.cfg, spec, n_features)
        hparams: dict[str, Any] = {"cfg": config_to_dict(self.cfg), "spec": self.spec.to_dict()}
        self._custom = _CustomNetworkCall(model) if model is not None else None
        if model is not None:
            hparams["custom_model"] = self._custom.name  # type: ignore[union-attr]
        self.save_hyperparameters(hparams)
        self.model: nn.Module = model if model is not None else build_network(
            self.cfg.model, self.spec)
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
        self.skipped_nonfinite = 0
        self.pretrained_report: dict[str, Any] | None = None

    @property
    def net(self) -> nn.Module:
        """The network (an alias of :attr:`model`)."""
        return self.model

    def set_spec(self, spec: InputSpec) -> None:
        """Take a (fitted) spec; it is saved with the next checkpoint."""
        self.spec = spec
        self.hparams["spec"] = spec.to_dict()

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        batch: Mapping[str, Any] | torch.Tensor | None,
        clinical_features: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        clinical_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``(B,)`` in [0, 1].

        Either a batch dict (see the data module) or tensors:
        ``model(images, clinical_features)``. With tensors, ``modality_mask``
        defaults to MRI present and PET present where its channels are nonzero (the
        data module zeroes a missing PET), ``clinical_mask`` to the finite values.
        """
        if isinstance(batch, Mapping):
            inputs = {k: batch.get(k) for k in NETWORK_INPUTS}
        else:
            if batch is not None and modality_mask is None:
                modality_mask = default_modality_mask(batch)
            inputs = {"images": batch, "clinical_features": clinical_features,
                      "modality_mask": modality_mask, "clinical_mask": clinical_mask}
        return torch.sigmoid(self._logits(inputs).float())

    def _logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = {k: batch.get(k) for k in NETWORK_INPUTS}
        if self._custom is not None:
            return self._custom(self.model, inputs)
        return self.model.logits(**inputs)  # type: ignore[operator]

    def _step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        targets = batch["targets"].float()
        missing = ~torch.isfinite(targets)
        if missing.any():
            ids = [batch["subject_id"][i] for i in missing.nonzero().flatten().tolist()]
            raise ValueError(
                f"`targets` must be finite for {stage}, got NaN for subject_id {ids}; "
                "targets may be missing only for prediction"
            )
        aux: dict[str, torch.Tensor] = {}
        if self._custom is None and stage == "train":
            logits, aux = self.model.branch_logits(  # type: ignore[operator]
                **{k: batch.get(k) for k in NETWORK_INPUTS})
        else:
            logits = self._logits(batch)
        loss = self.loss_fn(logits, targets)
        if aux:  # deep supervision: each branch also scores the target alone
            aux_loss = torch.stack([self.loss_fn(a, targets) for a in aux.values()]).mean()
            self.log("train/aux_loss", aux_loss, on_step=False, on_epoch=True,
                     batch_size=len(targets), sync_dist=True)
            loss = loss + float(self.cfg.model.aux_loss_weight) * aux_loss
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
        self.train_metrics.update(scores, batch["targets"], batch.get("subject_index"))
        self._log_loss("train", loss, len(scores))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and metric update of one validation batch."""
        loss, scores = self._step(batch, "val")
        self.val_metrics.update(scores, batch["targets"], batch.get("subject_index"))
        self._log_loss("val", loss, len(scores))
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and metric update of one test batch."""
        loss, scores = self._step(batch, "test")
        self.test_metrics.update(scores, batch["targets"], batch.get("subject_index"))
        self._log_loss("test", loss, len(scores))
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per-row records ``{subject_id, [session_id,] score, label, target}``.

        ``label`` is 1 when ``score > optim.threshold`` (the torchmetrics rule);
        ``target`` is NaN when unknown; ``session_id`` only when the batch has sessions.
        """
        scores = self(batch).detach().float().cpu().tolist()
        targets = batch.get("targets")
        targets = [math.nan] * len(scores) if targets is None else targets.float().cpu().tolist()
        sessions = batch.get("session_id")
        records = []
        for i, (sid, s, t) in enumerate(zip(batch["subject_id"], scores, targets)):
            record: dict[str, Any] = {"subject_id": str(sid)}
            if sessions is not None:
                record["session_id"] = str(sessions[i])
            record.update(score=float(s), label=int(s > self.threshold), target=float(t))
            records.append(record)
        return records

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

    def on_train_start(self) -> None:
        """Fit the network's statistics of fixed input features once, on the training batches.

        The regions pathway standardizes its regional means with the training split's
        mean and variance (``MultimodalAlzheimersNet.fit_statistics``), fitted here
        before the first epoch; a resumed run reads them from its checkpoint.
        """
        if self._custom is not None or not getattr(self.model, "needs_statistics", False):
            return
        loader = self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("the regions pathway must see the training batches to fit its "
                               "standardization, got no train dataloader")
        keys = ("images", "modality_mask", "targets")
        n = self.model.fit_statistics(  # type: ignore[operator]
            {k: batch[k].to(self.device) for k in keys if k in batch} for batch in loader)
        log.info("fitted the regions pathway's standardization on %d training subjects", n)

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
    def configure_optimizers(self) -> Any:
        """AdamW + warmup/cosine stepped per optimizer step over the real number of steps."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "`trainer.max_epochs` must be set (>= 1) for the cosine schedule, got an "
                "unbounded run"
            )
        epochs = self.trainer.max_epochs
        per_epoch = math.ceil(total / epochs) if epochs and epochs > 0 else int(total)
        optimizer, scheduler = build_optimizer(self.model, self.cfg.optim, int(total), per_epoch)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------ data state / ckpts
    def on_fit_start(self) -> None:
        """Meet the data module's input spec; load ``model.pretrained`` into a fresh fit.

        The spec is adopted when it fits, else fit fails naming why. Pretrained encoder
        weights initialize a fit that does not resume (a resumed or loaded model keeps
        its own weights); the report is logged and kept in :attr:`pretrained_report`.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        data_spec = getattr(datamodule, "spec", None)
        if isinstance(data_spec, InputSpec):
            self.set_spec(self.spec.adopt(data_spec, ("model", "data")))
        model_cfg = self.cfg.model
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None) or {}
        if (int(model_cfg.freeze_encoders_epochs) and self.trainer.world_size > 1
                and not ddp_kwargs.get("find_unused_parameters")):
            raise ConfigError(
                "`model.freeze_encoders_epochs` must be 0 with several processes unless DDP "
                "looks for unused parameters, got "
                f"{model_cfg.freeze_encoders_epochs} with {self.trainer.world_size} processes; "
                "set trainer.strategy=ddp_find_unused_parameters_true")
        if model_cfg.pretrained and self._custom is None and self.trainer.ckpt_path is None:
            from gazimed_lab.models.pretrained import load_pretrained

            report = load_pretrained(self.model, str(model_cfg.pretrained),
                                     str(model_cfg.pretrained_encoders))
            self.pretrained_report = report.to_dict()
            log.info(report.summary())
            if self.trainer.is_global_zero:  # beside the run's config: what was loaded
                import json

                from gazimed_lab.paths import atomic_write

                target = Path(self.trainer.default_root_dir) / "pretrained.json"
                text = json.dumps(self.pretrained_report, indent=1)
                atomic_write(target, lambda tmp: Path(tmp).write_text(text), "pretrained report")

    def on_train_epoch_start(self) -> None:
        """Keep pretrained encoders frozen for ``model.freeze_encoders_epochs`` epochs."""
        epochs = int(self.cfg.model.freeze_encoders_epochs)
        if epochs and self._custom is None:
            from gazimed_lab.models.pretrained import set_encoders_trainable

            set_encoders_trainable(self.model, str(self.cfg.model.pretrained_encoders),
                                   self.current_epoch >= epochs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the package version (the spec travels in the hyperparameters)."""
        checkpoint["gazimed_lab_version"] = __version__

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, hparams_file: Any = None,
        strict: bool | None = None, **kwargs: Any,
    ) -> AlzheimersLightningModule:
        """Rebuild a model from a checkpoint alone (safe read; older layouts migrated).

        ``cfg=`` replaces the saved config (its ``model`` section must still fit the
        weights), ``model=`` supplies a custom network. See
        :func:`gazimed_lab.checkpoints.load_checkpoint`.
        """
        from gazimed_lab.checkpoints import load_checkpoint

        if hparams_file is not None:
            raise ValueError("`hparams_file` must be None: the config and spec are inside "
                             f"the checkpoint, got {hparams_file}")
        model = load_checkpoint(checkpoint_path, cfg=kwargs.pop("cfg", None),
                                model=kwargs.pop("model", None),
                                strict=True if strict is None else bool(strict))
        if kwargs:
            raise TypeError(f"load_from_checkpoint got unexpected arguments {sorted(kwargs)}")
        return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model

    def get_model_info(self) -> dict[str, Any]:
        """Parameters per component, input grid and padding, loss and precision settings."""
        get_info = getattr(self.model, "get_model_info", None)
        info: dict[str, Any] = get_info() if callable(get_info) else {
            "custom_model": type(self.model).__qualname__,
            "parameters": {"total": sum(p.numel() for p in self.model.parameters())},
        }
        info.update(
            loss=self.cfg.optim.loss,
            precision=self.cfg.trainer.precision,
            activation_checkpointing=bool(self.cfg.model.activation_checkpointing),
        )
        return info
