"""Typed configuration tree, named presets and ``a.b=c`` overrides.

One source of truth for every default: the dataclasses below. Presets in
``gazimed_lab/presets/*.yaml`` only hold the values that differ from them.
Unknown keys are rejected with the nearest valid key named.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CACHE_DTYPES",
    "CHANNELS",
    "CLIP_ALGORITHMS",
    "DEMO_SUBJECTS",
    "EVAL_SESSIONS",
    "IMAGE_PATHWAYS",
    "LOSSES",
    "MODES",
    "NONFINITE_POLICIES",
    "PET_REFERENCES",
    "POOLINGS",
    "PRETRAINED_TARGETS",
    "REGION_READOUTS",
    "REMOVED_KEYS",
    "RESAMPLERS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SystemConfig",
    "TrainerConfig",
    "available_presets",
    "config_to_dict",
    "load_config",
    "overrides_from",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration value, key or file is not valid."""


# Allowed values, listed once (the modules that use them import them from here).
#: ``model.mode``: which inputs the network reads.
MODES: tuple[str, ...] = ("multimodal", "image_only", "clinical_only")
#: ``optim.loss`` base losses; ``"weighted"`` combines them with ``optim.loss_weights``.
LOSSES: tuple[str, ...] = ("mse", "mae", "huber", "bce")
#: ``model.fusion_pooling``: how a fused stage's tokens become one vector.
POOLINGS: tuple[str, ...] = ("attention", "flatten", "mean")
#: ``data.channels``: 1 = MRI; 2 = MRI, PET; 3 = MRI, PET, PET - MRI.
CHANNELS: tuple[int, ...] = (1, 2, 3)
#: ``data.pet_reference``: the region PET is divided by.
PET_REFERENCES: tuple[str, ...] = ("whole_brain", "cerebellum", "pons")
#: ``data.cache_dtype``: storage dtype of the preprocessed volumes.
CACHE_DTYPES: tuple[str, ...] = ("float16", "float32")
#: ``model.image_pathway``: Swin encoders with cross-attention, atlas-region means, or both.
IMAGE_PATHWAYS: tuple[str, ...] = ("swin", "regions", "swin+regions")
#: ``model.region_readout``: how the regions pathway maps its standardized regional means
#: to its output: an MLP, one linear map trained with the network (a ridge-like regional
#: score), or one ridge regression fitted in closed form before training and kept fixed.
REGION_READOUTS: tuple[str, ...] = ("mlp", "linear", "ridge")
#: ``model.pretrained_encoders``: which Swin encoders ``model.pretrained`` initializes.
PRETRAINED_TARGETS: tuple[str, ...] = ("both", "mri", "pet")
#: ``trainer.gradient_clip_algorithm``.
CLIP_ALGORITHMS: tuple[str, ...] = ("norm", "value")
#: ``trainer.nonfinite_policy``: what a non-finite training loss does.
NONFINITE_POLICIES: tuple[str, ...] = ("stop", "skip")
#: ``data.eval_sessions``: which sessions of a validation or test subject are scored (a
#: manifest with a ``session_id`` column): the first by session order (the baseline), the
#: last, or all of them (metrics then average each subject's sessions: one value per subject).
EVAL_SESSIONS: tuple[str, ...] = ("first", "last", "all")
#: ``data.aug_resampler``: how the random affine resamples a volume
#: (``gazimed_lab.data.resample``): exact trilinear (a compiled kernel on CPU, one 3D
#: ``grid_sample`` on CUDA) or in two 2D passes (bilinear in-plane, then linear across
#: slices: the same positions, slightly different weights).
RESAMPLERS: tuple[str, ...] = ("two_pass", "trilinear")

#: Size of the demo cohort (``make demo``, ``gazimed-lab demo`` / ``ablate``): 1000 since
#: issue 11 (300 subjects left the image branch below a linear model on regional means).
DEMO_SUBJECTS = 1000

#: Keys that configs no longer have, with what replaces them. The data decide these
#: (the fitted input contract, ``gazimed_lab.data.spec.InputSpec``), not the user.
REMOVED_KEYS: dict[str, str] = {
    "model.in_channels": "the input channels are `data.channels` (InputSpec.channels)",
    "model.img_size": "the input size is the grid's shape: set `data.grid` (or "
                      "`data.grid_shape` + `data.grid_affine`; InputSpec.grid)",
    "model.clinical_features_dim": "the clinical feature count comes from the data "
                                   "(`data.clinical_columns`, or the manifest's numeric "
                                   "columns; InputSpec.n_features)",
}


@dataclass
class DataConfig:
    """Where the cohort is and how volumes and clinical features are prepared."""

    manifest: str = "data_samples/manifest.csv"
    grid: str = "mni152_2mm"
    grid_shape: list[int] | None = None
    grid_affine: list[list[float]] | None = None
    channels: int = 2
    pet_reference: str = "whole_brain"
    clinical_columns: list[str] | None = None
    require_targets: bool = True
    batch_size: int = 2
    num_workers: int = 0
    pin_memory: bool = False
    cache_dir: str = ".cache/gazimed-lab"
    cache_dtype: str = "float16"
    #: Processes that build missing cache entries in parallel (one subject each at a time):
    #: 0 = in this process, -1 = one per available CPU core. Pays off for 1 mm inputs
    #: conformed to the grid (README, Performance).
    cache_workers: int = 0
    #: Train and predict on images QA flags as probably not in MNI space (brain coverage
    #: below the minimum) instead of refusing them; they are listed in
    #: ``run_dir/qa/accepted_flagged.csv``.
    accept_flagged_images: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    n_folds: int = 0
    fold: int = 0
    #: With several sessions per subject (a ``session_id`` column), the sessions of a
    #: validation or test subject that are scored (``EVAL_SESSIONS``); a training subject
    #: trains on every session. Splits are always made by subject.
    eval_sessions: str = "first"
    #: A numeric manifest column that orders each subject's sessions (e.g. months since
    #: baseline); ``None``: the natural order of ``session_id`` (ses-M000 < ses-M006 < ses-M012).
    session_order_column: str | None = None
    augment: bool = True
    aug_prob: float = 0.5
    aug_rotate_deg: float = 5.0
    aug_scale: float = 0.05
    aug_translate_vox: float = 2.0
    aug_intensity: float = 0.1
    aug_noise_std: float = 0.02
    #: How the random affine resamples (``RESAMPLERS``): ``trilinear`` is MONAI's
    #: interpolation, and on CPU the faster of the two at 2 mm (its compiled kernel computes
    #: only the voxels the brain mask can reach: README, Performance); ``two_pass`` samples
    #: the same positions with slightly different weights.
    aug_resampler: str = "trilinear"


@dataclass
class ModelConfig:
    """Network architecture (see ``gazimed_lab.models``)."""

    mode: str = "multimodal"
    patch_size: list[int] = field(default_factory=lambda: [4, 4, 4])
    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: list[int] = field(default_factory=lambda: [7, 7, 7])
    shared_encoder: bool = False
    fusion_stages: list[int] = field(default_factory=lambda: [3, 4])
    fusion_heads: int = 8
    fusion_pooling: str = "attention"
    fusion_pool_queries: int = 4
    fusion_dim: int = 256
    clinical_hidden: list[int] = field(default_factory=lambda: [256, 512, 256])
    clinical_out_dim: int = 128
    clinical_feature_dropout: float = 0.0
    head_hidden: list[int] = field(default_factory=lambda: [256, 64])
    dropout: float = 0.1
    drop_path_rate: float = 0.1
    modality_dropout: float = 0.1
    activation_checkpointing: bool = False
    #: Deep supervision: in multimodal mode, an auxiliary head per branch (image, clinical)
    #: scores the target from that branch alone; their losses, weighted by
    #: ``aux_loss_weight``, are added to the main loss in training.
    deep_supervision: bool = False
    aux_loss_weight: float = 0.5
    #: How the image branch reads the volumes: ``swin`` (Swin encoders + MRI->PET
    #: cross-attention), ``regions`` (mean of each channel in each atlas region,
    #: standardized across subjects, then an MLP) or ``swin+regions`` (both, concatenated).
    image_pathway: str = "swin"
    #: Atlas of the ``regions`` pathway: ``aal``, ``aal3`` (shipped), or a label NIfTI path
    #: with a names file beside it (same stem, ``.txt``).
    region_atlas: str = "aal"
    #: ``mlp``, ``linear`` or ``ridge`` (:data:`REGION_READOUTS`): the regions pathway's
    #: readout of its standardized regional means (``ridge``: fitted in closed form on the
    #: training split before the first epoch, then fixed; needs ``region_dim: 1``).
    region_readout: str = "mlp"
    #: Output width of the regions pathway; ``None`` = ``fusion_dim``.
    region_dim: int | None = None
    #: False: the image branch ignores the MRI channel (a PET-only model, data.channels >= 2).
    use_mri: bool = True
    #: A local file of Swin encoder weights in MONAI's layouts (a ``SwinUNETR`` state dict,
    #: or the self-supervised ``SwinViT`` checkpoint with ``module.`` keys under
    #: ``state_dict``), copied into ``pretrained_encoders`` when a fresh fit starts (never
    #: downloaded; see ``gazimed_lab.models.pretrained``). None: random initialization.
    pretrained: str | None = None
    #: ``both``, ``mri`` or ``pet`` (:data:`PRETRAINED_TARGETS`).
    pretrained_encoders: str = "both"
    #: Keep the pretrained encoders frozen for this many epochs (0: train them at once).
    freeze_encoders_epochs: int = 0


@dataclass
class OptimConfig:
    """Loss, optimizer and learning-rate schedule."""

    learning_rate: float = 1e-4
    #: Learning-rate factor for the image branch (encoders, fusion); 1 = same rate.
    image_lr_scale: float = 1.0
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_epochs: int = 5
    min_lr: float = 1e-6
    loss: str = "mse"
    loss_weights: dict[str, float] | None = None
    huber_delta: float = 0.1
    threshold: float = 0.5


@dataclass
class TrainerConfig:
    """Lightning trainer settings (``create_trainer``)."""

    max_epochs: int = 100
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    accumulate_grad_batches: int = 8
    gradient_clip_val: float | None = 1.0
    gradient_clip_algorithm: str = "norm"
    monitor: str = "val/auroc"
    monitor_mode: str = "max"
    early_stopping: bool = True
    early_stopping_patience: int = 10
    early_stopping_min_delta: float = 1e-3
    save_top_k: int = 3
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    wandb: bool = False
    nonfinite_policy: str = "stop"


@dataclass
class SystemConfig:
    """Seeds, run folder and threads."""

    seed: int = 42
    run_dir: str = "runs/default"
    num_threads: int | None = None


@dataclass
class Config:
    """The whole configuration tree: data / model / optim / trainer / system."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    preset: str = "default"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("gazimed_lab") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _schema_fields(schema: Any) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(schema: Any, key: str) -> Any | None:
    is_class = isinstance(schema, type) and dataclasses.is_dataclass(schema)
    default = getattr(schema(), key) if is_class else None
    return type(default) if dataclasses.is_dataclass(default) else None


def _check_keys(values: dict[str, Any], schema: type, prefix: str, source: str) -> None:
    """Reject keys that are not in ``schema``, naming the nearest valid one."""
    valid = _schema_fields(schema)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in REMOVED_KEYS:
            raise ConfigError(
                f"config key `{path}` must not be set: it was removed in gazimed-lab 0.2 "
                f"({source}); {REMOVED_KEYS[path]}. Delete the key (README: Configuration)"
            )
        if key not in valid:
            candidates = [f"{prefix}{k}" for k in valid]
            close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.5)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {sorted(valid)}"
            raise ConfigError(f"config key `{path}` is not a valid key ({source}){hint}")
        sub = _nested_schema(schema, key)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config section `{path}` must be a mapping, got {type(value).__name__} "
                    f"({source})"
                )
            _check_keys(value, sub, f"{path}.", source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"config file keys must be unique in a section, got `{key}` twice (lines "
                    f"{seen[key]} and {line} of {self.name}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loader = _UniqueKeyLoader(path.read_text())
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file must be valid YAML, got a parse error ({path}): {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file must hold a mapping, got {type(data).__name__} ({path})")
    return data


def _preset_values(name: str) -> dict[str, Any]:
    folder = resources.files("gazimed_lab") / "presets"
    resource = folder / f"{name}.yaml"
    if not resource.is_file():
        close = difflib.get_close_matches(name, available_presets(), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise ConfigError(
            f"config must be a preset name {available_presets()} or a YAML file path, "
            f"got `{name}`{hint}"
        )
    with resources.as_file(resource) as path:
        return _read_yaml(Path(path))


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override must look like `section.key=value`, got `{item}`")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override must look like `section.key=value`, got `{item}`")
    value = yaml.safe_load(raw) if raw.strip() else None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(
    name_or_path: str | Path = "default", overrides: list[str] | None = None
) -> DictConfig:
    """Load a preset by name, or a YAML file, then apply ``a.b=c`` overrides.

    Parameters
    ----------
    name_or_path
        A preset name (see :func:`available_presets`) or the path to a YAML file
        (for instance a run folder's ``config.yaml``). A YAML file may name a
        ``preset`` to start from.
    overrides
        Strings of the form ``"section.key=value"``; values are parsed as YAML.

    Returns
    -------
    DictConfig
        A typed (structured) OmegaConf config: assigning a wrong type or an
        unknown key raises.
    """
    overrides = list(overrides or [])
    base = OmegaConf.structured(Config)
    path = Path(str(name_or_path))
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            state = "a directory" if path.is_dir() else "a missing path"
            raise ConfigError(f"config file must be an existing YAML file, got {state} ({path}); "
                              "name a preset or a .yaml file")
        values = _read_yaml(path)
        source = str(path)
        preset = values.get("preset", "default")
        layers = [(_preset_values(preset), f"preset {preset}")] if preset != "default" else []
        layers.append((values, source))
    else:
        preset = str(name_or_path)
        layers = [(_preset_values(preset), f"preset {preset}")]
    for item in overrides:
        key, value = _parse_override(item)
        layers.append((_nest(key, value), f"override `{item}`"))
    for values, source in layers:
        _check_keys(values, Config, "", source)
        try:
            base = OmegaConf.merge(base, OmegaConf.create(values))
        except Exception as exc:  # omegaconf validation errors: wrong type
            raise ConfigError(f"config value is not valid ({source}): {exc}") from exc
    base.preset = preset if isinstance(preset, str) else "default"
    _validate(base)
    return base


def overrides_from(values: dict[str, Any]) -> list[str]:
    """``{"trainer.max_epochs": 5, "data.batch_size": None}`` -> ``["trainer.max_epochs=5"]``.

    ``None`` means "keep the preset's value", so notebook parameters can default to it.
    """
    # JSON is valid YAML, and load_config parses override values as YAML.
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def _validate(cfg: DictConfig) -> None:
    # a ridge readout in use: the regions pathway reads images
    ridge = (cfg.model.region_readout == "ridge" and cfg.model.mode != "clinical_only"
             and "regions" in cfg.model.image_pathway)

    def one_of(values: tuple[Any, ...]) -> str:
        return "one of " + ", ".join(map(str, values))

    checks = [
        (cfg.data.channels in CHANNELS, "data.channels", one_of(CHANNELS), cfg.data.channels),
        (cfg.data.pet_reference in PET_REFERENCES, "data.pet_reference", one_of(PET_REFERENCES),
         cfg.data.pet_reference),
        (cfg.model.mode in MODES, "model.mode", one_of(MODES), cfg.model.mode),
        (cfg.model.fusion_pooling in POOLINGS, "model.fusion_pooling", one_of(POOLINGS),
         cfg.model.fusion_pooling),
        (cfg.optim.loss in (*LOSSES, "weighted"), "optim.loss", one_of((*LOSSES, "weighted")),
         cfg.optim.loss),
        (cfg.model.image_pathway in IMAGE_PATHWAYS, "model.image_pathway",
         one_of(IMAGE_PATHWAYS), cfg.model.image_pathway),
        (cfg.model.region_readout in REGION_READOUTS, "model.region_readout",
         one_of(REGION_READOUTS), cfg.model.region_readout),
        (cfg.model.region_dim is None or cfg.model.region_dim >= 1, "model.region_dim",
         ">= 1 (or null: model.fusion_dim)", cfg.model.region_dim),
        (cfg.model.region_readout != "ridge" or cfg.model.region_dim == 1, "model.region_dim",
         "1 with model.region_readout=ridge (one fitted regional score)",
         cfg.model.region_dim),
        (not ridge or not cfg.data.augment, "data.augment",
         "false with model.region_readout=ridge (augmented intensities jitter the fixed "
         "regional score, and the head learns to shrink it)", cfg.data.augment),
        (not ridge or cfg.model.mode != "image_only"
         or str(cfg.trainer.monitor).endswith(("loss", "mse", "mae")), "trainer.monitor",
         "a loss or error (val/loss, val/mse or val/mae, trainer.monitor_mode=min) with "
         "model.region_readout=ridge and model.mode=image_only (the fixed readout leaves a "
         "ranking metric unchanged from the first epoch: the checkpoint would hold an untrained "
         "head)", cfg.trainer.monitor),
        (cfg.model.pretrained_encoders in PRETRAINED_TARGETS, "model.pretrained_encoders",
         one_of(PRETRAINED_TARGETS), cfg.model.pretrained_encoders),
        (cfg.model.freeze_encoders_epochs >= 0, "model.freeze_encoders_epochs", ">= 0",
         cfg.model.freeze_encoders_epochs),
        (cfg.model.freeze_encoders_epochs == 0 or cfg.model.pretrained is not None,
         "model.freeze_encoders_epochs", "0 without model.pretrained (only pretrained "
         "encoders are frozen)", cfg.model.freeze_encoders_epochs),
        (cfg.model.use_mri or cfg.data.channels >= 2 or cfg.model.mode == "clinical_only",
         "data.channels", ">= 2 with model.use_mri=false (a PET-only model needs PET)",
         cfg.data.channels),
        (cfg.model.aux_loss_weight >= 0, "model.aux_loss_weight", ">= 0",
         cfg.model.aux_loss_weight),
        (0.0 < cfg.optim.threshold < 1.0, "optim.threshold", "in (0, 1)", cfg.optim.threshold),
        (cfg.optim.image_lr_scale > 0, "optim.image_lr_scale", "> 0", cfg.optim.image_lr_scale),
        (0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction", "in [0, 1)",
         cfg.data.val_fraction),
        (0.0 <= cfg.data.test_fraction < 1.0, "data.test_fraction", "in [0, 1)",
         cfg.data.test_fraction),
        (cfg.data.batch_size >= 1, "data.batch_size", ">= 1", cfg.data.batch_size),
        (cfg.trainer.max_epochs >= 1 or cfg.trainer.max_epochs == -1, "trainer.max_epochs",
         ">= 1 (or -1: until early stopping)", cfg.trainer.max_epochs),
        (cfg.trainer.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", ">= 1",
         cfg.trainer.accumulate_grad_batches),
        (cfg.trainer.gradient_clip_algorithm in CLIP_ALGORITHMS,
         "trainer.gradient_clip_algorithm", one_of(CLIP_ALGORITHMS),
         cfg.trainer.gradient_clip_algorithm),
        (cfg.trainer.nonfinite_policy in NONFINITE_POLICIES, "trainer.nonfinite_policy",
         one_of(NONFINITE_POLICIES), cfg.trainer.nonfinite_policy),
        (cfg.data.cache_dtype in CACHE_DTYPES, "data.cache_dtype", one_of(CACHE_DTYPES),
         cfg.data.cache_dtype),
        (cfg.data.cache_workers >= -1, "data.cache_workers",
         ">= 0 (or -1: one per CPU core)", cfg.data.cache_workers),
        (cfg.data.eval_sessions in EVAL_SESSIONS, "data.eval_sessions", one_of(EVAL_SESSIONS),
         cfg.data.eval_sessions),
        (cfg.data.aug_resampler in RESAMPLERS, "data.aug_resampler", one_of(RESAMPLERS),
         cfg.data.aug_resampler),
    ]
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"`{key}` must be {expected}, got {got!r}")


def config_to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain nested dict of a config (resolved), e.g. for checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML; :func:`load_config` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def config_from_dict(values: dict[str, Any]) -> DictConfig:
    """Rebuild a typed config from :func:`config_to_dict` output (checked keys)."""
    _check_keys(values, Config, "", "saved config")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(values))
    assert isinstance(cfg, DictConfig)
    _validate(cfg)
    return cfg
