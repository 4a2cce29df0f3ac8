"""Subject-level bootstrap: confidence intervals of metrics and of ROC / PR curves.

Resampling draws subjects (all rows of a drawn subject come along), with
replacement; ``stratified=True`` draws positives and negatives separately so
every resample keeps the class counts. Resamples where a metric is undefined
(e.g. a single class for AUROC) are skipped and counted in ``n_skipped``.
Intervals are percentile intervals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import sklearn
from sklearn import metrics as skm

from gazimed_lab.evaluation.metrics import METRICS, _both_classes
from gazimed_lab.evaluation.predictions import PredictionsLike, binary_truth, read_predictions

__all__ = [
    "BootstrapCI",
    "PairedDifference",
    "bootstrap_ci",
    "metrics_table",
    "paired_bootstrap",
    "pr_curve_ci",
    "roc_curve_ci",
]


class BootstrapCI(tuple):
    """``(point, low, high)`` with ``n_boot``, ``n_skipped``, ``ci`` and ``metric`` attributes."""

    point: float
    low: float
    high: float
    metric: str
    ci: float
    n_boot: int
    n_skipped: int

    def __new__(
        cls, point: float, low: float, high: float, *, metric: str, ci: float,
        n_boot: int, n_skipped: int,
    ) -> BootstrapCI:
        """Build from the three numbers and the run's bookkeeping."""
        obj = super().__new__(cls, (float(point), float(low), float(high)))
        obj.point, obj.low, obj.high = obj
        obj.metric, obj.ci, obj.n_boot, obj.n_skipped = metric, ci, n_boot, n_skipped
        return obj

    def __repr__(self) -> str:
        return (
            f"BootstrapCI({self.metric}={self.point:.3f}, {self.ci:.0%} CI "
            f"[{self.low:.3f}, {self.high:.3f}], n_boot={self.n_boot}, skipped={self.n_skipped})"
        )


def _resamples(
    df: pd.DataFrame, n_boot: int, seed: int, stratified: bool
) -> Iterator[np.ndarray]:
    """Yield row-index arrays of subject-level bootstrap resamples."""
    rng = np.random.default_rng(seed)
    codes, _ = pd.factorize(df["subject_id"])
    y = binary_truth(df)
    n_subjects = int(codes.max()) + 1
    unique = n_subjects == len(df)  # then codes == arange(n): subject i is row i
    subject_rows: list[np.ndarray] = []
    if unique:
        subject_class = y
    else:
        order = np.argsort(codes, kind="stable")
        splits = np.cumsum(np.bincount(codes))[:-1]
        subject_rows = np.split(order, splits)
        subject_class = np.array([y[rows].max() for rows in subject_rows])
    strata = (
        [np.flatnonzero(subject_class == c) for c in (0, 1)]
        if stratified
        else [np.arange(n_subjects)]
    )
    strata = [s for s in strata if s.size]
    for _ in range(n_boot):
        drawn = np.concatenate([rng.choice(s, size=s.size, replace=True) for s in strata])
        if unique:
            yield drawn
        else:
            yield np.concatenate([subject_rows[i] for i in drawn])


def _interval(values: list[float], ci: float) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"`ci` must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"`n_boot` must be >= 1, got {n_boot}")


def _resampled_values(table: pd.DataFrame, compute: Callable[..., float], n_boot: int, seed: int,
                      stratified: bool, name: str) -> list[float]:
    """Finite values of ``compute(rows)`` over the bootstrap resamples (others counted)."""
    values = []
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for rows in _resamples(table, n_boot, seed, stratified):
            value = compute(rows)
            if np.isfinite(value):
                values.append(value)
    _warn_skipped(name, n_boot - len(values), n_boot)
    return values


def _warn_skipped(what: str, n_skipped: int, n_boot: int) -> None:
    if n_skipped > 0.1 * n_boot:
        warnings.warn(
            f"{n_skipped} of {n_boot} bootstrap resamples had an undefined {what} "
            "(single class) and were skipped; use stratified=True or more subjects",
            RuntimeWarning,
            stacklevel=3,
        )


def bootstrap_ci(
    df: PredictionsLike,
    metric: str | Callable[[pd.DataFrame], float] = "auroc",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    threshold: float = 0.5,
) -> BootstrapCI:
    """Point estimate and percentile bootstrap interval of a metric.

    Parameters
    ----------
    df
        Predictions table (DataFrame, CSV path or run folder).
    metric
        A name from ``gazimed_lab.evaluation.METRICS`` or a function
        ``table -> float`` (NaN when undefined).
    n_boot
        Number of subject-level resamples.
    ci
        Interval coverage, e.g. 0.95.
    seed
        Seed of the resampling generator (same seed, same interval).
    stratified
        Resample positives and negatives separately (keeps both classes).
    threshold
        Decision threshold for threshold-based metrics.

    Returns
    -------
    BootstrapCI
        A ``(point, low, high)`` tuple; ``.n_skipped`` counts resamples where the
        metric was undefined. All NaN when the metric is undefined on the full table.
    """
    _check_ci(ci, n_boot)
    table = read_predictions(df)
    if callable(metric):
        name = getattr(metric, "__name__", "metric")

        def compute(rows: np.ndarray | None) -> float:
            sub = table if rows is None else table.iloc[rows].reset_index(drop=True)
            return float(metric(sub))
    else:
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {sorted(METRICS)}, got `{metric}`")
        name, fn = metric, METRICS[metric]
        y, t, s = binary_truth(table), table["target"].to_numpy(float), table["score"].to_numpy(
            float
        )

        def compute(rows: np.ndarray | None) -> float:
            if rows is None:
                return fn(y, t, s, threshold)
            return fn(y[rows], t[rows], s[rows], threshold)

    point = compute(None)
    nan = float("nan")
    if not np.isfinite(point):
        return BootstrapCI(nan, nan, nan, metric=name, ci=ci, n_boot=n_boot, n_skipped=n_boot)
    values = _resampled_values(table, compute, n_boot, seed, stratified, name)
    n_skipped = n_boot - len(values)
    low, high = _interval(values, ci)
    return BootstrapCI(point, low, high, metric=name, ci=ci, n_boot=n_boot, n_skipped=n_skipped)


def _interp_precision(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Interpolated precision: the best precision at recall >= r, on a recall grid."""
    order = np.argsort(recall, kind="stable")
    rec, prec = recall[order], precision[order]
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.clip(np.searchsorted(rec, grid, side="left"), 0, rec.size - 1)
    return envelope[idx]


def _roc_on_grid(y: np.ndarray, s: np.ndarray, grid: np.ndarray) -> np.ndarray:
    fpr, tpr, _ = skm.roc_curve(y, s)
    out = np.interp(grid, fpr, tpr)
    out[0] = 0.0
    return out


def _pr_on_grid(y: np.ndarray, s: np.ndarray, grid: np.ndarray) -> np.ndarray:
    precision, recall, _ = skm.precision_recall_curve(y, s)
    return _interp_precision(recall, precision, grid)


def _curve_ci(
    df: PredictionsLike, kind: str, n_boot: int, ci: float, seed: int, stratified: bool,
    n_points: int,
) -> dict[str, object]:
    _check_ci(ci, n_boot)
    table = read_predictions(df)
    y, s = binary_truth(table), table["score"].to_numpy(float)
    if not _both_classes(y):
        raise ValueError(
            f"`target` must contain both classes to draw a {kind.upper()} curve, got "
            f"{int(y.sum())} positive of {y.size} ({table.attrs.get('source', 'DataFrame')})"
        )
    grid = np.linspace(0.0, 1.0, n_points)
    on_grid = _roc_on_grid if kind == "roc" else _pr_on_grid
    summary = skm.roc_auc_score if kind == "roc" else skm.average_precision_score
    curves, summaries = [], []
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for rows in _resamples(table, n_boot, seed, stratified):
            if _both_classes(y[rows]):
                curves.append(on_grid(y[rows], s[rows], grid))
                summaries.append(float(summary(y[rows], s[rows])))
    n_skipped = n_boot - len(curves)
    _warn_skipped(f"{kind.upper()} curve", n_skipped, n_boot)
    alpha = (1.0 - ci) / 2.0
    if curves:
        stack = np.vstack(curves)
        mean = stack.mean(0)
        low, high = np.quantile(stack, [alpha, 1.0 - alpha], axis=0)
    else:
        mean = low = high = np.full_like(grid, np.nan)
    point_low, point_high = _interval(summaries, ci)
    out: dict[str, object] = {"n_boot": n_boot, "n_skipped": n_skipped, "ci": ci,
                              "n": int(y.size), "n_pos": int(y.sum())}
    if kind == "roc":
        fpr, tpr, thresholds = skm.roc_curve(y, s)
        out.update(fpr=grid, tpr=_roc_on_grid(y, s, grid), tpr_mean=mean, tpr_low=low,
                   tpr_high=high, fpr_raw=fpr, tpr_raw=tpr, thresholds=thresholds,
                   auroc=float(summary(y, s)), auroc_low=point_low, auroc_high=point_high)
    else:
        precision, recall, thresholds = skm.precision_recall_curve(y, s)
        out.update(recall=grid, precision=_pr_on_grid(y, s, grid), precision_mean=mean,
                   precision_low=low, precision_high=high, recall_raw=recall,
                   precision_raw=precision, thresholds=thresholds,
                   average_precision=float(summary(y, s)), average_precision_low=point_low,
                   average_precision_high=point_high, prevalence=float(y.mean()))
    return out


def roc_curve_ci(
    df: PredictionsLike, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
    stratified: bool = True, n_points: int = 101,
) -> dict[str, object]:
    """ROC curve with a bootstrap band of the TPR on a fixed FPR grid.

    Returns
    -------
    dict
        ``fpr`` (grid), ``tpr`` (full-data curve on the grid), ``tpr_mean``,
        ``tpr_low``, ``tpr_high`` (band), ``fpr_raw``/``tpr_raw``/``thresholds``
        (the exact curve), ``auroc``, ``auroc_low``, ``auroc_high``, ``n``, ``n_pos``,
        ``n_boot``, ``n_skipped``, ``ci``.
    """
    return _curve_ci(df, "roc", n_boot, ci, seed, stratified, n_points)


def pr_curve_ci(
    df: PredictionsLike, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
    stratified: bool = True, n_points: int = 101,
) -> dict[str, object]:
    """Precision-recall curve with a bootstrap band of interpolated precision on a recall grid.

    Returns
    -------
    dict
        ``recall`` (grid), ``precision``, ``precision_mean``, ``precision_low``,
        ``precision_high``, ``recall_raw``/``precision_raw``/``thresholds``,
        ``average_precision`` (+ ``_low``/``_high``), ``prevalence``, ``n``, ``n_pos``,
        ``n_boot``, ``n_skipped``, ``ci``.
    """
    return _curve_ci(df, "pr", n_boot, ci, seed, stratified, n_points)


def metrics_table(
    df: PredictionsLike,
    metrics: tuple[str, ...] = ("auroc", "average_precision", "accuracy", "balanced_accuracy",
                                "recall", "specificity", "f1", "mae", "r2", "brier"),
    n_boot: int = 1000, ci: float = 0.95, seed: int = 0, threshold: float = 0.5,
) -> pd.DataFrame:
    """Tabulate metrics for display: ``metric``, ``value``, ``low``, ``high`` (bootstrap CI)."""
    rows = []
    for name in metrics:
        res = bootstrap_ci(df, name, n_boot=n_boot, ci=ci, seed=seed, threshold=threshold)
        rows.append({"metric": name, "value": res.point, "low": res.low, "high": res.high,
                     "n_skipped": res.n_skipped})
    return pd.DataFrame(rows)


class PairedDifference(tuple):
    """``(difference, low, high)`` of ``metric(a) - metric(b)`` on the same resampled subjects.

    Attributes: ``difference`` (on all subjects), ``mean`` (of the resampled
    differences), ``low``, ``high`` (percentile interval), ``p_value`` (two-sided:
    twice the smaller share of resampled differences at or below / at or above 0,
    at most 1), ``metric``, ``ci``, ``n``, ``n_boot``, ``n_skipped``.
    """

    difference: float
    low: float
    high: float
    mean: float
    p_value: float
    metric: str
    ci: float
    n: int
    n_boot: int
    n_skipped: int

    def __new__(
        cls, difference: float, low: float, high: float, *, mean: float, p_value: float,
        metric: str, ci: float, n: int, n_boot: int, n_skipped: int,
    ) -> PairedDifference:
        """Build from the three numbers and the run's bookkeeping."""
        obj = super().__new__(cls, (float(difference), float(low), float(high)))
        obj.difference, obj.low, obj.high = obj
        obj.mean, obj.p_value = float(mean), float(p_value)
        obj.metric, obj.ci, obj.n, obj.n_boot, obj.n_skipped = metric, ci, n, n_boot, n_skipped
        return obj

    def __repr__(self) -> str:
        return (
            f"PairedDifference({self.metric} a - b = {self.difference:+.3f}, {self.ci:.0%} CI "
            f"[{self.low:+.3f}, {self.high:+.3f}], mean {self.mean:+.3f}, p = {self.p_value:.3g}, "
            f"n = {self.n}, n_boot={self.n_boot}, skipped={self.n_skipped})"
        )


def _paired_tables(a: PredictionsLike, b: PredictionsLike) -> tuple[pd.DataFrame, np.ndarray]:
    """Align two predictions tables on ``subject_id``: ``a`` and ``b``'s scores in a's order."""
    ta, tb = read_predictions(a), read_predictions(b)
    for table in (ta, tb):
        dup = table["subject_id"].duplicated()
        if dup.any():
            raise ValueError(
                f"`subject_id` must be unique for a paired bootstrap, got "
                f"{table['subject_id'][dup].iloc[0]} twice ({table.attrs['source']})")
    ids_a, ids_b = set(ta["subject_id"]), set(tb["subject_id"])
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise ValueError(
            "both tables must score the same subjects for a paired bootstrap, got "
            f"{len(only_a)} only in {ta.attrs['source']} (e.g. {only_a[:3]}) and "
            f"{len(only_b)} only in {tb.attrs['source']} (e.g. {only_b[:3]})")
    tb = tb.set_index("subject_id").loc[ta["subject_id"]]
    differs = np.abs(tb["target"].to_numpy(float) - ta["target"].to_numpy(float)) > 1e-6
    if differs.any():
        sid = ta["subject_id"].iloc[int(np.flatnonzero(differs)[0])]
        raise ValueError(
            f"`target` must agree between the two tables, got a different target for "
            f"{sid} ({ta.attrs['source']} vs {tb.attrs.get('source', 'DataFrame')})")
    return ta, tb["score"].to_numpy(float)


def paired_bootstrap(
    a: PredictionsLike,
    b: PredictionsLike,
    metric: str = "auroc",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    threshold: float = 0.5,
) -> PairedDifference:
    """Difference of a metric between two scorings of the same subjects, with a paired CI.

    Each resample draws subjects once and scores both tables on them, so what the
    two have in common (which subjects are hard) cancels: the interval is that of the
    difference, far narrower than two separate intervals suggest.

    Parameters
    ----------
    a, b
        Predictions tables (DataFrame, CSV path or run folder) on the same subjects
        (one row each) with the same targets.
    metric
        A name from ``gazimed_lab.evaluation.METRICS``.
    n_boot, ci, seed, stratified, threshold
        As for :func:`bootstrap_ci` (same seed, same resamples).

    Returns
    -------
    PairedDifference
        ``metric(a) - metric(b)`` on all subjects, its percentile interval, the mean
        resampled difference and a two-sided bootstrap p-value. Resamples where the
        metric is undefined for either table are skipped.

    Raises
    ------
    ValueError
        If the tables score different subjects, repeat a subject or disagree on a target.
    """
    _check_ci(ci, n_boot)
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {sorted(METRICS)}, got `{metric}`")
    table, score_b = _paired_tables(a, b)
    fn = METRICS[metric]
    y, t = binary_truth(table), table["target"].to_numpy(float)
    score_a = table["score"].to_numpy(float)

    def diff(rows: np.ndarray | slice) -> float:
        return fn(y[rows], t[rows], score_a[rows], threshold) - fn(
            y[rows], t[rows], score_b[rows], threshold)

    point = diff(slice(None))
    nan = float("nan")
    if not np.isfinite(point):
        return PairedDifference(nan, nan, nan, mean=nan, p_value=nan, metric=metric, ci=ci,
                                n=len(table), n_boot=n_boot, n_skipped=n_boot)
    values = _resampled_values(table, diff, n_boot, seed, stratified, metric)
    n_skipped = n_boot - len(values)
    low, high = _interval(values, ci)
    arr = np.asarray(values)
    mean = float(arr.mean()) if arr.size else nan
    p_value = min(1.0, 2.0 * min(float((arr <= 0).mean()), float((arr >= 0).mean()))) \
        if arr.size else nan
    return PairedDifference(point, low, high, mean=mean, p_value=p_value, metric=metric,
                            ci=ci, n=len(table), n_boot=n_boot, n_skipped=n_skipped)
