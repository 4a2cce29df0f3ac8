"""Clinical features: median imputation, standardization and a missingness mask.

Statistics are fitted on the training split only (:meth:`ClinicalStats.fit`)
and applied unchanged to every other split and to prediction manifests
(:meth:`ClinicalStats.transform`). They are plain lists, so that they can be
saved as JSON in a checkpoint (:meth:`ClinicalStats.to_dict`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ClinicalStats", "align_feature_columns"]

log = logging.getLogger(__name__)

#: A training standard deviation below this is treated as zero (scale 1 instead).
MIN_STD = 1e-8


def _numeric(table: pd.DataFrame, names: list[str], source: str) -> np.ndarray:
    """Read the feature columns as float64 (NaN where missing); raise on non-numbers."""
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(
            f"clinical columns must all be present, got {len(missing)} missing: {missing} "
            f"({source})"
        )
    values = table[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    raw_missing = table[names].isna().to_numpy()
    bad = np.isnan(values) & ~raw_missing
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"clinical column `{names[col]}` must be numeric, got {table[names[col]].iloc[row]!r} "
            f"(row {row}, {source})"
        )
    if np.isinf(values).any():
        row, col = np.argwhere(np.isinf(values))[0]
        raise ValueError(
            f"clinical column `{names[col]}` must be finite or empty, got {values[row, col]} "
            f"(row {row}, {source})"
        )
    return values


@dataclass
class ClinicalStats:
    """Per-feature median (imputation), mean and standard deviation (scaling).

    Attributes
    ----------
    feature_names
        Column names, in the order of the feature vector.
    medians, means, stds
        Training-split statistics, one per feature. A feature with zero
        variance on train has ``std = 1``; a feature never observed on train
        has median 0, mean 0 and std 1.
    """

    feature_names: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]

    @classmethod
    def fit(
        cls, train: pd.DataFrame, names: list[str], source: str = "train split"
    ) -> ClinicalStats:
        """Fit the statistics on the training rows only.

        Means and standard deviations (population, ``ddof=0``) are computed
        over the observed values of each column.
        """
        values = _numeric(train, list(names), source)
        observed = ~np.isnan(values)
        never = [n for n, seen in zip(names, observed.any(axis=0)) if not seen]
        if never:
            warnings.warn(
                f"clinical columns never observed on the training split are imputed with 0: "
                f"{never}",
                stacklevel=2,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            medians = np.nanmedian(values, axis=0) if len(values) else np.full(len(names), np.nan)
            means = np.nanmean(values, axis=0) if len(values) else np.full(len(names), np.nan)
            stds = np.nanstd(values, axis=0) if len(values) else np.full(len(names), np.nan)
        medians = np.nan_to_num(medians, nan=0.0)
        means = np.nan_to_num(means, nan=0.0)
        stds = np.where(np.isfinite(stds) & (stds > MIN_STD), stds, 1.0)
        return cls(
            feature_names=list(names),
            medians=[float(v) for v in medians],
            means=[float(v) for v in means],
            stds=[float(v) for v in stds],
        )

    def transform(
        self, table: pd.DataFrame, source: str = "manifest"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Impute, standardize and mask the feature columns of ``table``.

        Returns
        -------
        features : ndarray, float32, (N, F)
            ``(value_or_median - mean) / std``.
        mask : ndarray, float32, (N, F)
            1 where the value was observed, 0 where it was imputed.
        """
        values = _numeric(table, self.feature_names, source)
        observed = ~np.isnan(values)
        filled = np.where(observed, values, np.asarray(self.medians)[None, :])
        scaled = (filled - np.asarray(self.means)[None, :]) / np.asarray(self.stds)[None, :]
        return scaled.astype(np.float32), observed.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (see :meth:`from_dict`)."""
        return {
            "feature_names": list(self.feature_names),
            "medians": list(self.medians),
            "means": list(self.means),
            "stds": list(self.stds),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ClinicalStats:
        """Rebuild from :meth:`to_dict` output (or a preprocessing state)."""
        try:
            stats = cls(
                feature_names=[str(n) for n in state["feature_names"]],
                medians=[float(v) for v in state["medians"]],
                means=[float(v) for v in state["means"]],
                stds=[float(v) for v in state["stds"]],
            )
        except KeyError as exc:
            raise ValueError(
                f"preprocessing state must hold feature_names, medians, means and stds, "
                f"got no {exc.args[0]!r}"
            ) from exc
        n = len(stats.feature_names)
        if not len(stats.medians) == len(stats.means) == len(stats.stds) == n:
            raise ValueError(
                f"preprocessing state statistics must have one value per feature ({n}), got "
                f"{len(stats.medians)} medians, {len(stats.means)} means, {len(stats.stds)} stds"
            )
        return stats


def align_feature_columns(
    available: list[str], expected: list[str], source: str = "manifest"
) -> list[str]:
    """Check that a table has every expected feature column, in any order.

    Parameters
    ----------
    available
        The numeric (clinical) columns the table holds, in its order.
    expected
        The feature names a model was trained with, in feature-vector order.
    source
        File name for messages.

    Returns
    -------
    list of str
        ``expected`` (the order to read features in).

    Raises
    ------
    ValueError
        If any expected column is missing (all of them are named).

    Warns
    -----
    UserWarning
        When columns are reordered by name or extra columns are ignored.
    """
    missing = [c for c in expected if c not in available]
    if missing:
        raise ValueError(
            f"clinical columns must include every feature the model was trained with, got "
            f"{len(missing)} missing: {missing} ({source}); add them (empty cells are imputed)"
        )
    extra = [c for c in available if c not in expected]
    if extra:
        msg = (
            f"ignoring {len(extra)} clinical column(s) the model was not trained with: "
            f"{extra} ({source})"
        )
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    present = [c for c in available if c in expected]
    if present != list(expected):
        msg = (
            "clinical columns are in a different order than at training; reordered by name "
            f"({source})"
        )
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return list(expected)
