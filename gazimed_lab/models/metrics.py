"""Epoch-level score metrics with torchmetrics: regression on the score, binary on the label.

Binary truth is ``target > 0.5``; the decision threshold for accuracy,
precision, recall, F1 and specificity is ``optim.threshold``. Torchmetrics
syncs the states across processes when computing (DDP-safe).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    PearsonCorrCoef,
    R2Score,
)

__all__ = ["METRIC_NAMES", "ScoreMetrics"]

METRIC_NAMES = (
    "mse", "mae", "r2", "pearson",
    "auroc", "accuracy", "precision", "recall", "f1", "specificity",
)


class ScoreMetrics(nn.Module):
    """Metrics of one stage (``train``, ``val`` or ``test``), logged as ``{stage}/{name}``.

    Parameters
    ----------
    stage
        Prefix of the metric names.
    threshold
        Score at or above which the predicted label is 1.
    truth_threshold
        Target above which the true label is 1 (0.5).

    Notes
    -----
    Metrics that are undefined for the epoch (AUROC with one class, R2 with
    fewer than two subjects) come out as NaN instead of an error.
    """

    def __init__(self, stage: str, threshold: float = 0.5, truth_threshold: float = 0.5) -> None:
        super().__init__()
        self.stage = stage
        self.truth_threshold = float(truth_threshold)
        self.regression = MetricCollection(
            {
                "mse": MeanSquaredError(),
                "mae": MeanAbsoluteError(),
                "r2": R2Score(),
                "pearson": PearsonCorrCoef(),
            }
        )
        self.classification = MetricCollection(
            {
                "auroc": BinaryAUROC(),
                "accuracy": BinaryAccuracy(threshold=threshold),
                "precision": BinaryPrecision(threshold=threshold),
                "recall": BinaryRecall(threshold=threshold),
                "f1": BinaryF1Score(threshold=threshold),
                "specificity": BinarySpecificity(threshold=threshold),
            }
        )
        self.positives = SumMetric()
        self.count = SumMetric()

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of scores and target scores (both ``(B,)``)."""
        scores = scores.detach().float().reshape(-1)
        targets = targets.detach().float().reshape(-1)
        labels = (targets > self.truth_threshold).long()
        self.regression.update(scores, targets)
        self.classification.update(scores, labels)
        self.positives.update(labels.sum().float())
        self.count.update(torch.tensor(float(labels.numel()), device=labels.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"{stage}/{name}": value}`` over everything seen since the last reset."""
        device = self.count.device
        nan = torch.tensor(math.nan, device=device)
        count = float(self.count.compute())
        positives = float(self.positives.compute())
        out: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for collection in (self.regression, self.classification):
                for name, metric in collection.items():
                    try:
                        value = metric.compute().float()
                    except (ValueError, RuntimeError):
                        value = nan
                    out[name] = value.to(device)
        if positives in (0.0, count):
            out["auroc"] = nan
        if count < 2:
            out["r2"] = out["pearson"] = nan
        return {f"{self.stage}/{name}": out[name].detach() for name in METRIC_NAMES}

    def reset(self) -> None:
        """Forget the epoch."""
        self.regression.reset()
        self.classification.reset()
        self.positives.reset()
        self.count.reset()

    @property
    def updated(self) -> bool:
        """Whether anything was added since the last reset."""
        return bool(self.count.update_count)
