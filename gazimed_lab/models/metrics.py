"""Epoch-level score metrics with torchmetrics: regression on the score, binary on the label.

Binary truth is ``target > 0.5``; the decision threshold for accuracy,
precision, recall, F1 and specificity is ``optim.threshold``. Torchmetrics
syncs the states across processes when computing (DDP-safe).

With several sessions per subject, batches carry ``subject_index`` and the metrics
average each subject's scores and targets over its sessions first (the rule of
:func:`gazimed_lab.evaluation.read_predictions`): a subject counts once.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
)
from torchmetrics.functional.regression import (
    mean_absolute_error,
    mean_squared_error,
    pearson_corrcoef,
    r2_score,
)
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    PearsonCorrCoef,
    R2Score,
)
from torchmetrics.utilities import dim_zero_cat

__all__ = ["METRIC_NAMES", "ScoreMetrics"]

METRIC_NAMES = (
    "mse", "mae", "r2", "pearson",
    "auroc", "accuracy", "precision", "recall", "f1", "specificity",
)


class _SubjectRows(Metric):
    """Every (score, target, subject index) of an epoch, gathered across processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[torch.Tensor]
        self.targets: list[torch.Tensor]
        self.groups: list[torch.Tensor]
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch."""
        self.scores.append(scores)
        self.targets.append(targets)
        self.groups.append(groups.to(device=scores.device, dtype=torch.int64).reshape(-1))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-subject mean score and mean target (one entry per subject)."""
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        _, inverse = torch.unique(dim_zero_cat(self.groups), return_inverse=True)
        n = int(inverse.max()) + 1 if inverse.numel() else 0
        counts = torch.zeros(n, device=scores.device).index_add_(
            0, inverse, torch.ones_like(scores))
        mean = [torch.zeros(n, device=scores.device).index_add_(0, inverse, v) / counts
                for v in (scores, targets)]
        return mean[0], mean[1]


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
        self.threshold = float(threshold)
        self.subject_rows = _SubjectRows()

    def update(self, scores: torch.Tensor, targets: torch.Tensor,
               subject_index: torch.Tensor | None = None) -> None:
        """Add a batch of scores and target scores (both ``(B,)``).

        ``subject_index`` (``(B,)``, from batches of a manifest with sessions): the
        subject of each row; the epoch's metrics then average each subject's rows.
        """
        scores = scores.detach().float().reshape(-1)
        targets = targets.detach().float().reshape(-1)
        labels = (targets > self.truth_threshold).long()
        if subject_index is not None:
            self.subject_rows.update(scores, targets, subject_index)
        else:
            self.regression.update(scores, targets)
            self.classification.update(scores, labels)
            self.positives.update(labels.sum().float())
        self.count.update(torch.tensor(float(labels.numel()), device=labels.device))

    def _per_subject(self) -> tuple[dict[str, torch.Tensor], float, float]:
        """Metrics of the per-subject means, their subject count and positives."""
        scores, targets = self.subject_rows.compute()
        labels = (targets > self.truth_threshold).long()
        thr = self.threshold
        functions = {
            "mse": lambda: mean_squared_error(scores, targets),
            "mae": lambda: mean_absolute_error(scores, targets),
            "r2": lambda: r2_score(scores, targets),
            "pearson": lambda: pearson_corrcoef(scores, targets),
            "auroc": lambda: binary_auroc(scores, labels),
            "accuracy": lambda: binary_accuracy(scores, labels, threshold=thr),
            "precision": lambda: binary_precision(scores, labels, threshold=thr),
            "recall": lambda: binary_recall(scores, labels, threshold=thr),
            "f1": lambda: binary_f1_score(scores, labels, threshold=thr),
            "specificity": lambda: binary_specificity(scores, labels, threshold=thr),
        }
        out = {}
        for name, fn in functions.items():
            try:
                out[name] = fn().float()
            except (ValueError, RuntimeError):
                out[name] = torch.tensor(math.nan, device=scores.device)
        return out, float(labels.numel()), float(labels.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"{stage}/{name}": value}`` over everything seen since the last reset."""
        device = self.count.device
        nan = torch.tensor(math.nan, device=device)
        out: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.subject_rows.update_count:
                values, count, positives = self._per_subject()
                out = {name: value.to(device) for name, value in values.items()}
            else:
                count = float(self.count.compute())
                positives = float(self.positives.compute())
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
        self.subject_rows.reset()

    @property
    def updated(self) -> bool:
        """Whether anything was added since the last reset."""
        return bool(self.count.update_count)
