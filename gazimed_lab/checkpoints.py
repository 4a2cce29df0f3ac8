"""Reading checkpoints safely, and checking one fits a config before resuming.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain
Python values only, no pickled code is run. gazimed-lab writes nothing else
into them (the config is a plain dict, the preprocessing statistics are
JSON-able, the scheduler state is numbers), so this never gets in the way of
its own checkpoints.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gazimed_lab.config import config_from_dict, config_to_dict
from gazimed_lab.models.lightning import AlzheimersLightningModule

__all__ = [
    "CheckpointError",
    "check_resumable",
    "checkpoint_config",
    "config_differences",
    "load_checkpoint",
    "read_checkpoint",
]

#: Config keys a resumed run must share with its checkpoint (besides all of ``model``).
RESUME_KEYS = ("data.channels", "data.grid", "data.pet_reference", "data.clinical_columns")


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely, or does not fit the config it is used with."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a gazimed-lab checkpoint on CPU with ``weights_only=True``.

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
        raise FileNotFoundError(f"`ckpt` must be a checkpoint file, got a missing path ({path})")
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
    return ckpt


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


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       keys: tuple[str, ...] = RESUME_KEYS) -> list[str]:
    """``"model.embed_dim: checkpoint 12, config 24"`` for every differing key.

    Compares the whole ``model`` section plus ``keys``.
    """
    old, new = _flatten(saved), _flatten(current)
    wanted = sorted(
        k for k in set(old) | set(new) if k.startswith("model.") or k in keys
    )
    return [f"{k}: checkpoint {old.get(k)!r}, config {new.get(k)!r}"
            for k in wanted if old.get(k) != new.get(k)]


def check_resumable(cfg: Any, path: str | Path) -> dict[str, Any]:
    """Fail clearly when the checkpoint at ``path`` was trained with another config.

    ``cfg`` must be resolved like the model's (``fit_config_to_data``). Returns the
    checkpoint. Settings outside ``model`` and :data:`RESUME_KEYS` (e.g.
    ``trainer.max_epochs``) may change on resume.
    """
    ckpt = read_checkpoint(path)
    diffs = config_differences(checkpoint_config(ckpt, path), config_to_dict(cfg))
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CheckpointError(
            f"checkpoint must come from the same model and data settings to resume, got "
            f"{len(diffs)} difference(s) ({path}): {shown}. Resume with the run's own config "
            "(its config.yaml), or start a new run without --resume"
        )
    return ckpt


def load_checkpoint(path: str | Path) -> AlzheimersLightningModule:
    """Rebuild an ``AlzheimersLightningModule`` from a checkpoint alone (CPU, eval mode).

    Equivalent to Lightning's ``load_from_checkpoint``, with the safe read above and
    a clear error when the weights do not fit the saved config.
    """
    ckpt = read_checkpoint(path)
    model = AlzheimersLightningModule(config_from_dict(checkpoint_config(ckpt, path)))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint weights must fit the config saved with them, got a mismatch ({path}): "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from exc
    model.on_load_checkpoint(ckpt)
    return model.eval()
