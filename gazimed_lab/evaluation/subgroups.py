"""Metrics per subgroup (sex, age band, site, ...) of a predictions table."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gazimed_lab.evaluation.bootstrap import bootstrap_ci
from gazimed_lab.evaluation.metrics import METRICS
from gazimed_lab.evaluation.predictions import PredictionsLike, binary_truth, read_predictions

__all__ = ["add_age_band", "subgroup_metrics"]

_MISSING = "missing"


def _band_labels(edges: Sequence[float]) -> list[str]:
    labels = []
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        if i == 0 and lo <= 0:
            labels.append(f"<{hi:g}")
        elif i == len(edges) - 2 and hi >= 120:
            labels.append(f"≥{lo:g}")
        else:
            labels.append(f"{lo:g}-{hi:g}")
    return labels


def add_age_band(df: pd.DataFrame, age_bands: Sequence[float] = (0, 65, 75, 200)) -> pd.DataFrame:
    """Return a copy with an ordered categorical ``age_band`` column.

    Bands are ``[lo, hi)``; an unknown age gives ``"missing"``.

    Raises
    ------
    ValueError
        If ``age_bands`` is not increasing or an age falls outside the bands.
    """
    edges = [float(e) for e in age_bands]
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"`age_bands` must be >= 2 increasing edges, got {list(age_bands)}")
    out = df.copy()
    age = pd.to_numeric(out["age"], errors="coerce")
    outside = age.notna() & ((age < edges[0]) | (age >= edges[-1]))
    if outside.any():
        row = int(np.flatnonzero(outside.to_numpy())[0])
        raise ValueError(
            f"`age` must lie in [{edges[0]:g}, {edges[-1]:g}) to fall in `age_bands`, got "
            f"{age.iloc[row]} (row {row + 1}); widen `age_bands`"
        )
    labels = [*_band_labels(edges), _MISSING]
    bands = pd.cut(age, bins=edges, right=False, labels=labels[:-1]).astype(object)
    out["age_band"] = pd.Categorical(bands.where(age.notna(), _MISSING), categories=labels)
    return out


def _group_row(
    sub: pd.DataFrame, group: str, value: object, threshold: float, n_boot: int, seed: int
) -> dict[str, object]:
    y, t, s = binary_truth(sub), sub["target"].to_numpy(float), sub["score"].to_numpy(float)
    row: dict[str, object] = {"group": group, "value": str(value), "n": int(y.size),
                              "n_pos": int(y.sum())}
    for name in ("auroc", "accuracy", "balanced_accuracy", "recall", "specificity", "mae",
                 "brier"):
        row[name] = METRICS[name](y, t, s, threshold)
    if n_boot > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = bootstrap_ci(sub, "auroc", n_boot=n_boot, seed=seed)
        row["auroc_low"], row["auroc_high"] = res.low, res.high
    row["mean_score"] = float(s.mean())
    row["mean_target"] = float(t.mean())
    return row


def subgroup_metrics(
    df: PredictionsLike,
    by: Sequence[str] = ("sex", "age_band", "site"),
    age_bands: Sequence[float] = (0, 65, 75, 200),
    threshold: float = 0.5,
    n_boot: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics of every subgroup, with an ``all`` row first.

    Parameters
    ----------
    df
        Predictions table.
    by
        Columns to group by; ``age_band`` is derived from ``age`` with ``age_bands``.
        Columns absent from the table are skipped with a warning.
    age_bands
        Edges of the age bands, ``[lo, hi)``.
    threshold
        Decision threshold for accuracy, recall and specificity.
    n_boot
        If > 0, add ``auroc_low``/``auroc_high`` (95 % bootstrap interval).
    seed
        Bootstrap seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``value``, ``n``, ``n_pos``, ``auroc`` (NaN when the
        group has a single class), ``accuracy``, ``balanced_accuracy``, ``recall``,
        ``specificity``, ``mae``, ``brier``, [``auroc_low``, ``auroc_high``],
        ``mean_score``, ``mean_target``. Unknown values form a ``missing`` group, so
        the ``n`` of each grouping sums to the table's rows.
    """
    table = read_predictions(df)
    rows = [_group_row(table, "all", "all", threshold, n_boot, seed)]
    for column in by:
        if column == "age_band" and "age_band" not in table.columns:
            if "age" not in table.columns:
                warnings.warn("no `age` column: skipping `age_band` subgroups", stacklevel=2)
                continue
            table = add_age_band(table, age_bands)
        elif column not in table.columns:
            warnings.warn(f"no `{column}` column in the predictions table: skipping it",
                          stacklevel=2)
            continue
        values = table[column].astype(object).where(table[column].notna(), _MISSING).astype(str)
        order = [*sorted(set(values) - {_MISSING}), _MISSING]
        if column == "age_band" and isinstance(table["age_band"].dtype, pd.CategoricalDtype):
            order = [str(c) for c in table["age_band"].cat.categories]
            order += [] if _MISSING in order else [_MISSING]
        for value in order:
            sub = table[values == value]
            if len(sub):
                rows.append(_group_row(sub, column, value, threshold, n_boot, seed))
    return pd.DataFrame(rows)
