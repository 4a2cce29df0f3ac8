"""Point metrics on a predictions table (scikit-learn / scipy underneath).

Predicted positive means ``score > threshold`` (the torchmetrics rule the model
uses); the truth is ``target > 0.5``.
Regression metrics (``mse``, ``mae``, ``r2``, ``pearson``) compare ``score``
with the continuous ``target``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from gazimed_lab.evaluation.predictions import PredictionsLike, binary_truth, read_predictions

__all__ = [
    "METRICS",
    "binary_metrics",
    "calibration",
    "confusion",
    "metric_value",
    "youden_threshold",
]

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float], float]


def _both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def _auroc(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    return float(skm.roc_auc_score(y, s)) if _both_classes(y) else float("nan")


def _ap(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    return float(skm.average_precision_score(y, s)) if _both_classes(y) else float("nan")


def _classification(fn: Callable[..., float], **kw: object) -> MetricFn:
    def metric(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(y, (s > thr).astype(int), **kw))

    return metric


def _balanced_accuracy(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    if not _both_classes(y):
        return float("nan")
    return float(skm.balanced_accuracy_score(y, (s > thr).astype(int)))


def _r2(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    if t.size < 2 or np.ptp(t) == 0:
        return float("nan")
    return float(skm.r2_score(t, s))


def _pearson(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(s) == 0:
        return float("nan")
    return float(stats.pearsonr(t, s)[0])


def _brier(y: np.ndarray, t: np.ndarray, s: np.ndarray, thr: float) -> float:
    return float(skm.brier_score_loss(y, s, labels=[0, 1]))


#: Metric name -> fn(y_binary, target, score, threshold). NaN when undefined.
METRICS: dict[str, MetricFn] = {
    "auroc": _auroc,
    "average_precision": _ap,
    "accuracy": _classification(skm.accuracy_score),
    "balanced_accuracy": _balanced_accuracy,
    "precision": _classification(skm.precision_score, zero_division=np.nan),
    "recall": _classification(skm.recall_score, zero_division=np.nan),
    "specificity": _classification(skm.recall_score, pos_label=0, zero_division=np.nan),
    "f1": _classification(skm.f1_score, zero_division=np.nan),
    "mse": lambda y, t, s, thr: float(skm.mean_squared_error(t, s)),
    "mae": lambda y, t, s, thr: float(skm.mean_absolute_error(t, s)),
    "r2": _r2,
    "pearson": _pearson,
    "brier": _brier,
}

#: Metrics where lower is better (used by dashboards and run comparisons).
LOWER_IS_BETTER = frozenset({"mse", "mae", "brier", "loss"})


def _arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return binary_truth(df), df["target"].to_numpy(float), df["score"].to_numpy(float)


def metric_value(df: PredictionsLike, metric: str, threshold: float = 0.5) -> float:
    """One metric by name (see ``METRICS``) on a predictions table; NaN when undefined."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {sorted(METRICS)}, got `{metric}`")
    return METRICS[metric](*_arrays(read_predictions(df)), threshold)


def binary_metrics(df: PredictionsLike, threshold: float = 0.5) -> dict[str, float]:
    """Classification, regression and calibration metrics of a predictions table.

    Parameters
    ----------
    df
        Predictions table (DataFrame, CSV path or run folder; see ``read_predictions``).
    threshold
        Score at or above which a subject is predicted AD.

    Returns
    -------
    dict
        ``auroc``, ``average_precision``, ``accuracy``, ``balanced_accuracy``,
        ``precision``, ``recall`` (sensitivity), ``specificity``, ``f1``, ``mse``,
        ``mae``, ``r2``, ``pearson``, ``brier``, plus ``threshold``, ``n`` (rows) and
        ``n_pos`` (rows with ``target > 0.5``). Undefined values (e.g. AUROC with a
        single class) are NaN.
    """
    y, t, s = _arrays(read_predictions(df))
    out: dict[str, float] = {name: fn(y, t, s, threshold) for name, fn in METRICS.items()}
    out["threshold"] = float(threshold)
    out["n"] = int(y.size)
    out["n_pos"] = int(y.sum())
    return out


def confusion(df: PredictionsLike, threshold: float = 0.5) -> np.ndarray:
    """Count the 2 x 2 confusion matrix ``[[TN, FP], [FN, TP]]`` (rows = truth)."""
    y, _, s = _arrays(read_predictions(df))
    return skm.confusion_matrix(y, (s > threshold).astype(int), labels=[0, 1])


def youden_threshold(df: PredictionsLike) -> float:
    """Threshold that maximizes Youden's J = TPR - FPR (compute it on validation predictions).

    The threshold returned lies midway between the lowest score called positive
    at the optimum and the next lower score, so ``score >= t`` and ``score > t``
    give the same labels. Ties in J go to the highest threshold.

    Raises
    ------
    ValueError
        If the table holds a single class.
    """
    table = read_predictions(df)
    y, _, s = _arrays(table)
    if not _both_classes(y):
        raise ValueError(
            "`target` must contain both classes (> 0.5 and <= 0.5) to choose a threshold, "
            f"got {int(y.sum())} positive of {y.size} ({table.attrs.get('source', 'DataFrame')})"
        )
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))
    if not np.isfinite(thresholds[k]):  # the (0, 0) corner: nothing positive
        return float(np.nextafter(s.max(), np.inf))
    lower = thresholds[k + 1] if k + 1 < thresholds.size else thresholds[k]
    return float((thresholds[k] + lower) / 2.0)


def calibration(
    df: PredictionsLike, n_bins: int = 10, strategy: str = "uniform"
) -> pd.DataFrame:
    """Reliability table: observed AD fraction per score bin.

    Parameters
    ----------
    df
        Predictions table.
    n_bins
        Number of score bins.
    strategy
        ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal counts).

    Returns
    -------
    pandas.DataFrame
        One row per bin (empty bins included, count 0): ``bin``, ``bin_low``,
        ``bin_high``, ``mean_score``, ``frac_positive``, ``count``. ``attrs`` holds
        ``brier`` (Brier score) and ``ece`` (expected calibration error, count-weighted
        mean of ``|frac_positive - mean_score|``).
    """
    if n_bins < 1:
        raise ValueError(f"`n_bins` must be >= 1, got {n_bins}")
    y, _, s = _arrays(read_predictions(df))
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise ValueError(f"`strategy` must be 'uniform' or 'quantile', got `{strategy}`")
    # Same bin rule as sklearn.calibration.calibration_curve.
    ids = np.searchsorted(edges[1:-1], s, side="right")
    frame = pd.DataFrame({"bin": ids, "score": s, "y": y})
    grouped = frame.groupby("bin").agg(
        mean_score=("score", "mean"), frac_positive=("y", "mean"), count=("y", "size")
    )
    table = pd.DataFrame({"bin": np.arange(n_bins), "bin_low": edges[:-1], "bin_high": edges[1:]})
    table = table.merge(grouped, left_on="bin", right_index=True, how="left")
    table["count"] = table["count"].fillna(0).astype(int)
    used = table["count"] > 0
    gap = (table.loc[used, "frac_positive"] - table.loc[used, "mean_score"]).abs()
    table.attrs["brier"] = METRICS["brier"](y, y, s, 0.5)
    table.attrs["ece"] = float((gap * table.loc[used, "count"]).sum() / max(s.size, 1))
    table.attrs["n"] = int(s.size)
    return table.reset_index(drop=True)
