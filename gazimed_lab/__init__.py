"""gazimed-lab: Alzheimer's disease score from MNI-space MRI, FDG-PET and clinical features.

The public API is imported lazily so that ``import gazimed_lab`` stays light
(the config tools need neither torch nor Lightning).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_config": "gazimed_lab.config",
    "save_config": "gazimed_lab.config",
    "ConfigError": "gazimed_lab.config",
    "get_grid": "gazimed_lab.data.grid",
    "MNIDataModule": "gazimed_lab.data.datamodule",
    "PredictDataModule": "gazimed_lab.data.predict",
    "InputSpec": "gazimed_lab.data.spec",
    "load_checkpoint": "gazimed_lab.checkpoints",
    "TrainerFactory": "gazimed_lab.training",
    "make_synthetic_cohort": "gazimed_lab.data.synthetic",
    "read_manifest": "gazimed_lab.data.manifest",
    "AlzheimersLightningModule": "gazimed_lab.models.lightning",
    "create_trainer": "gazimed_lab.training",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gazimed_lab' has no attribute {name!r}")
