"""Networks and the LightningModule: Swin encoders, cross-modal fusion, clinical MLP."""

from __future__ import annotations

from gazimed_lab.models.clinical import ClinicalEncoder
from gazimed_lab.models.encoders import SwinImageEncoder, padded_grid
from gazimed_lab.models.fusion import CrossAttentionBlock, CrossModalFusion
from gazimed_lab.models.lightning import (
    AlzheimersLightningModule,
    flatten_predictions,
    resolve_config,
    resolve_spec,
)
from gazimed_lab.models.losses import ScoreLoss
from gazimed_lab.models.metrics import METRIC_NAMES, ScoreMetrics
from gazimed_lab.models.network import MultimodalAlzheimersNet, build_network, network_kwargs
from gazimed_lab.models.optim import WarmupCosine, build_optimizer, param_groups

__all__ = [
    "METRIC_NAMES",
    "AlzheimersLightningModule",
    "ClinicalEncoder",
    "CrossAttentionBlock",
    "CrossModalFusion",
    "MultimodalAlzheimersNet",
    "ScoreLoss",
    "ScoreMetrics",
    "SwinImageEncoder",
    "WarmupCosine",
    "build_network",
    "build_optimizer",
    "flatten_predictions",
    "network_kwargs",
    "padded_grid",
    "param_groups",
    "resolve_config",
    "resolve_spec",
]
