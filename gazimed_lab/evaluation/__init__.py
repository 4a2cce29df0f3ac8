"""Evaluation: the predictions table, metrics with bootstrap CIs, calibration, subgroups, runs.

Conventions: the binary truth is ``target > 0.5``; a subject is predicted AD when
``score > threshold``; a subject scored on several sessions counts once (its sessions
averaged, see ``per_subject``)
(the torchmetrics rule the model uses). Every function taking a predictions table also accepts a
CSV path or a run folder (see ``read_predictions``).

Examples
--------
>>> from gazimed_lab import evaluation as ev
>>> df = ev.read_predictions("runs/demo", split="test")      # doctest: +SKIP
>>> ev.binary_metrics(df)["auroc"]                            # doctest: +SKIP
>>> point, low, high = ev.bootstrap_ci(df, "auroc", n_boot=1000)  # doctest: +SKIP
>>> ev.paired_bootstrap(df_a, df_b, "auroc")                  # doctest: +SKIP

External cohorts: :mod:`gazimed_lab.evaluation.external` (``gazimed-lab evaluate``);
ceilings of generated cohorts from their ``truth.csv``: :mod:`gazimed_lab.evaluation.oracle`.
"""

from __future__ import annotations

from gazimed_lab.evaluation.bootstrap import (
    BootstrapCI,
    PairedDifference,
    bootstrap_ci,
    metrics_table,
    paired_bootstrap,
    pr_curve_ci,
    roc_curve_ci,
)
from gazimed_lab.evaluation.metrics import (
    LOWER_IS_BETTER,
    METRICS,
    binary_metrics,
    calibration,
    confusion,
    metric_value,
    youden_threshold,
)
from gazimed_lab.evaluation.predictions import (
    PredictionsError,
    binary_truth,
    per_subject,
    read_predictions,
)
from gazimed_lab.evaluation.runs import (
    compare_runs,
    find_training_log,
    read_training_log,
    write_metrics_json,
)
from gazimed_lab.evaluation.subgroups import add_age_band, subgroup_metrics

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "BootstrapCI",
    "PairedDifference",
    "PredictionsError",
    "add_age_band",
    "binary_metrics",
    "binary_truth",
    "bootstrap_ci",
    "calibration",
    "compare_runs",
    "confusion",
    "find_training_log",
    "metric_value",
    "metrics_table",
    "paired_bootstrap",
    "per_subject",
    "pr_curve_ci",
    "read_predictions",
    "read_training_log",
    "roc_curve_ci",
    "subgroup_metrics",
    "write_metrics_json",
    "youden_threshold",
]
