"""AdamW with decoupled weight decay on weights only, and warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "IMAGE_MODULES", "NO_DECAY_KEYWORDS", "WarmupCosine", "build_optimizer", "param_groups",
]

#: Parameter names that never get weight decay (tokens, position tables, embeddings).
NO_DECAY_KEYWORDS = ("token", "pos_embed", "relative_position_bias_table", "position_embedding")
_NO_DECAY_MODULES = (
    nn.LayerNorm, nn.GroupNorm, nn.Embedding,
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
)


#: Top-level submodules of :class:`~gazimed_lab.models.network.MultimodalAlzheimersNet`
#: that make the image branch (what ``optim.image_lr_scale`` applies to).
IMAGE_MODULES = ("mri_encoder", "pet_encoder", "pet_adapter", "fusion", "image_norm",
                 "region_encoder")


def param_groups(
    module: nn.Module,
    weight_decay: float,
    lr: float | None = None,
    image_lr_scale: float = 1.0,
    image_modules: Sequence[str] = IMAGE_MODULES,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``decay`` (weights) and ``no_decay``, per learning rate.

    No decay on biases, normalization and embedding parameters, and on
    parameters whose name contains one of :data:`NO_DECAY_KEYWORDS`.

    Parameters
    ----------
    module
        The network.
    weight_decay
        Decay of the ``decay`` groups.
    lr
        Base learning rate. When given, every group carries its own ``lr``.
    image_lr_scale
        Learning-rate factor for the parameters under ``image_modules``. With a
        factor other than 1 there are four groups: ``decay`` / ``no_decay`` (the
        clinical encoder and the head, at ``lr``) and ``image_decay`` /
        ``image_no_decay`` (at ``lr * image_lr_scale``); with 1, two groups.
    image_modules
        Names of the top-level submodules that make the image branch.

    Returns
    -------
    list of dict
        Groups with ``params``, ``weight_decay``, ``name`` (and ``lr`` when given).
    """
    if image_lr_scale <= 0:
        raise ValueError(f"`optim.image_lr_scale` must be > 0, got {image_lr_scale}")
    split_image = float(image_lr_scale) != 1.0
    groups: dict[str, list[nn.Parameter]] = {
        "decay": [], "no_decay": [], "image_decay": [], "image_no_decay": []}
    seen: set[int] = set()
    for module_name, sub in module.named_modules():
        for name, param in sub.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            skip = (
                isinstance(sub, _NO_DECAY_MODULES)
                or name == "bias"
                or param.ndim <= 1
                or any(key in full for key in NO_DECAY_KEYWORDS)
            )
            image = split_image and full.split(".", 1)[0] in image_modules
            groups[("image_" if image else "") + ("no_decay" if skip else "decay")].append(param)
    out = []
    for key in ("decay", "no_decay", "image_decay", "image_no_decay"):
        if key.startswith("image_") and not split_image:
            continue
        group: dict[str, Any] = {
            "params": groups[key],
            "weight_decay": 0.0 if key.endswith("no_decay") else float(weight_decay),
            "name": key,
        }
        if lr is not None:
            group["lr"] = float(lr) * (float(image_lr_scale) if key.startswith("image_") else 1.0)
        out.append(group)
    return out


class WarmupCosine:
    """Learning-rate factor for ``LambdaLR``: linear warmup, then cosine to ``min_lr``.

    With base rate ``lr`` the rate at optimizer step ``s`` (0-based) is
    ``lr * (s + 1) / warmup_steps`` during warmup, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1].
    Only plain numbers are stored, so the scheduler state is weights_only-safe.

    Parameters
    ----------
    warmup_steps, total_steps
        Optimizer steps (after gradient accumulation).
    base_lr, min_lr
        Peak and final learning rates.
    """

    def __init__(self, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> None:
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1, got {total_steps}")
        if base_lr <= 0 or not 0 <= min_lr <= base_lr:
            raise ValueError(
                f"`optim.min_lr` must be in [0, learning_rate], got min_lr={min_lr}, "
                f"learning_rate={base_lr}"
            )
        self.warmup_steps = int(min(max(warmup_steps, 0), total_steps))
        self.total_steps = int(total_steps)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)

    def lr(self, step: int) -> float:
        """Learning rate at optimizer step ``step``."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __call__(self, step: int) -> float:
        """Return the factor ``lr(step) / base_lr`` (what ``LambdaLR`` wants)."""
        return self.lr(step) / self.base_lr


def build_optimizer(
    module: nn.Module, optim: Any, total_steps: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + per-step :class:`WarmupCosine` ``LambdaLR`` from an ``optim`` config section.

    ``warmup_steps = optim.warmup_epochs * steps_per_epoch``. The image branch
    (:data:`IMAGE_MODULES`) learns at ``optim.image_lr_scale`` times the base rate; the
    schedule multiplies every group's rate by the same factor, so its warmup, peak and
    cosine floor are ``image_lr_scale`` times those of the other groups.
    """
    optimizer = torch.optim.AdamW(
        param_groups(module, optim.weight_decay, lr=float(optim.learning_rate),
                     image_lr_scale=float(optim.image_lr_scale)),
        lr=float(optim.learning_rate),
        betas=(float(optim.betas[0]), float(optim.betas[1])),
        eps=float(optim.eps),
    )
    schedule = WarmupCosine(
        int(optim.warmup_epochs) * max(int(steps_per_epoch), 1), max(int(total_steps), 1),
        float(optim.learning_rate), float(optim.min_lr),
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
