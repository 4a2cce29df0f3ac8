"""Reading checkpoints safely, and checking one fits a config before resuming.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain
Python values only, no pickled code is run. gazimed-lab writes nothing else
into them (the config and the input spec are plain dicts, the scheduler state is
numbers), so this never gets in the way of its own checkpoints. Checkpoints of
gazimed-lab 0.1 are migrated when read (:func:`migrate_checkpoint`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gazimed_lab.config import REMOVED_KEYS, config_from_dict, config_to_dict
from gazimed_lab.data.spec import InputSpec, SpecError
from gazimed_lab.models.lightning import AlzheimersLightningModule

__all__ = [
    "CheckpointError",
    "check_resumable",
    "checkpoint_config",
    "checkpoint_spec",
    "config_differences",
    "load_checkpoint",
    "migrate_checkpoint",
    "read_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely, or does not fit the config it is used with."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a gazimed-lab checkpoint on CPU with ``weights_only=True``.

    A checkpoint written by gazimed-lab 0.1 is migrated (:func:`migrate_checkpoint`).

    Raises
    ------
    FileNotFoundError
        The path is not a file.
    CheckpointError
        Unreadable (truncated, not a torch file), holding objects that would need
        pickled code to load, or not written by gazimed-lab (no config inside).
    """
    path = Path(path)
    if not path.is_file():
        state = "a directory" if path.is_dir() else "a missing path"
        raise FileNotFoundError(f"`ckpt` must be a checkpoint file, got {state} ({path})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            "checkpoint must hold only tensors and plain values (it is loaded with "
            f"weights_only=True, so no pickled code runs), got something else ({path}): "
            f"{first}. Only if you trust its origin, re-save its state_dict and config as "
            "plain values"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint must be a complete torch checkpoint, got a file torch cannot read "
            f"({path}): {exc}. It may be truncated (a run killed while saving): use "
            "checkpoints/last.ckpt or another top-k file of the run"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"checkpoint must be a dict written by Lightning, got {type(ckpt).__name__} ({path})"
        )
    checkpoint_config(ckpt, path)  # fails when it is not ours
    return migrate_checkpoint(ckpt, path)


def migrate_checkpoint(ckpt: dict[str, Any], path: str | Path = "") -> dict[str, Any]:
    """Bring a gazimed-lab 0.1 checkpoint to the current layout (in place; returned).

    0.1 kept the data sizes in the config (``model.in_channels``, ``model.img_size``,
    ``model.clinical_features_dim``), the fitted preprocessing in
    ``checkpoint["preprocessing"]`` (spec version 1) and the network under ``net.``.
    The sizes must agree with the preprocessing; they are then dropped, the
    preprocessing becomes the spec and the weights move under ``model.``.
    """
    hparams = ckpt["hyper_parameters"]
    if "spec" in hparams:
        return ckpt
    legacy = ckpt.get("preprocessing")
    if not isinstance(legacy, dict):
        raise CheckpointError(
            "checkpoint must hold an input spec (hyper_parameters['spec']) or, from gazimed-lab "
            f"0.1, a 'preprocessing' dict, got neither ({path}); it cannot be used to predict"
        )
    spec = InputSpec.from_dict(legacy, str(path))
    cfg = hparams["cfg"]
    model = cfg.get("model", {})
    expected = {"model.in_channels": spec.channels, "model.img_size": list(spec.img_size),
                "model.clinical_features_dim": spec.n_features}
    for key in REMOVED_KEYS:
        saved = model.pop(key.split(".", 1)[1], None)
        unused = {"model.in_channels": "clinical_only",
                  "model.clinical_features_dim": "image_only"}.get(key)
        if saved is not None and saved != expected[key] and model.get("mode") != unused:
            raise CheckpointError(
                f"checkpoint `{key}` must agree with its preprocessing ({expected[key]}) to be "
                f"migrated from gazimed-lab 0.1, got {saved} ({path})"
            )
    hparams["spec"] = spec.to_dict()
    ckpt["state_dict"] = {
        (f"model.{k[len('net.'):]}" if k.startswith("net.") else k): v
        for k, v in ckpt["state_dict"].items()
    }
    ckpt.pop("preprocessing", None)
    ckpt.pop("MNIDataModule", None)
    return ckpt


def checkpoint_spec(ckpt: dict[str, Any], path: str | Path = "") -> InputSpec:
    """Return the input spec saved in a (migrated) checkpoint."""
    try:
        return InputSpec.from_dict(ckpt["hyper_parameters"]["spec"], str(path))
    except SpecError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "") -> dict[str, Any]:
    """Return the resolved config (plain dict) saved in a checkpoint's hyperparameters."""
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg")
    if not isinstance(cfg, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            "checkpoint must be a gazimed-lab checkpoint (config in hyper_parameters['cfg'] and "
            f"a state_dict), got one with keys {sorted(ckpt)} ({path})"
        )
    return cfg


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"model.embed_dim: checkpoint 12, config 24"`` for every differing ``model`` key."""
    old, new = _flatten(saved), _flatten(current)
    wanted = sorted(k for k in set(old) | set(new) if k.startswith("model."))
    return [f"{k}: checkpoint {old.get(k)!r}, config {new.get(k)!r}"
            for k in wanted if old.get(k) != new.get(k)]


def check_resumable(cfg: Any, path: str | Path, spec: InputSpec) -> dict[str, Any]:
    """Fail clearly when the checkpoint at ``path`` was trained with another model or data.

    Compares the ``model`` section of the config and the input spec (``spec``: the data
    module's, :meth:`InputSpec.differences`). Returns the checkpoint. Other settings
    (e.g. ``trainer.max_epochs``) may change on resume.
    """
    ckpt = read_checkpoint(path)
    diffs = config_differences(checkpoint_config(ckpt, path), config_to_dict(cfg))
    diffs += checkpoint_spec(ckpt, path).differences(spec, ("checkpoint", "data"))
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CheckpointError(
            f"checkpoint must come from the same model and data settings to resume, got "
            f"{len(diffs)} difference(s) ({path}): {shown}. Resume with the run's own config "
            "(its config.yaml), or start a new run without --resume"
        )
    return ckpt


def load_checkpoint(path: str | Path, cfg: Any = None, model: nn.Module | None = None,
                    strict: bool = True) -> AlzheimersLightningModule:
    """Rebuild an ``AlzheimersLightningModule`` from a checkpoint alone (CPU, eval mode).

    What ``AlzheimersLightningModule.load_from_checkpoint`` does, with the safe read
    above, the 0.1 migration, and a clear error when the weights do not fit.

    Parameters
    ----------
    path
        The checkpoint.
    cfg
        A config to use instead of the saved one (its ``model`` section must fit the
        weights).
    model
        The custom network a checkpoint of ``AlzheimersLightningModule(cfg, model=...)``
        needs (a fresh instance; the weights are loaded into it).
    strict
        Whether every weight must match (``load_state_dict(strict=...)``).
    """
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    custom = hparams.get("custom_model")
    if custom and model is None:
        raise CheckpointError(
            f"checkpoint holds a custom network `{custom}` ({path}); pass a fresh instance: "
            f"load_checkpoint(path, model={custom}(...))"
        )
    config = cfg if cfg is not None else config_from_dict(checkpoint_config(ckpt, path))
    module = AlzheimersLightningModule(config, spec=checkpoint_spec(ckpt, path), model=model)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint weights must fit the config saved with them, got a mismatch ({path}): "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from exc
    return module.eval()
