"""Defaults are typed once, in the config dataclasses; the modules below take them from there."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from gazimed_lab.config import DataConfig, ModelConfig, SystemConfig
from gazimed_lab.data.augment import BatchAugment
from gazimed_lab.data.splits import make_splits
from gazimed_lab.models.encoders import SwinImageEncoder


def _defaults(func: Callable[..., Any]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _as_config(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("func", "config", "names"),
    [
        (SwinImageEncoder.__init__, ModelConfig(),
         {n: n for n in ("patch_size", "embed_dim", "depths", "num_heads", "window_size")}),
        (BatchAugment.__init__, DataConfig(),
         {n: f"aug_{n}" for n in ("prob", "rotate_deg", "scale", "translate_vox", "intensity",
                                   "noise_std")}),
        (make_splits, DataConfig(),
         {n: n for n in ("val_fraction", "test_fraction", "n_folds", "fold")}),
        (make_splits, SystemConfig(), {"seed": "seed"}),
    ],
    ids=["encoder", "augment", "splits", "split-seed"],
)
def test_defaults_come_from_the_config(func: Callable[..., Any], config: Any,
                                       names: dict[str, str]) -> None:
    defaults = _defaults(func)
    for arg, field in names.items():
        assert _as_config(defaults[arg]) == getattr(config, field), arg
