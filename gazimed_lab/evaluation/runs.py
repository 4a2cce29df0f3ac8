"""Run folders: the training log, ``metrics.json`` and comparisons across runs."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gazimed_lab.evaluation.bootstrap import bootstrap_ci
from gazimed_lab.evaluation.metrics import binary_metrics
from gazimed_lab.evaluation.predictions import read_predictions

__all__ = ["compare_runs", "find_training_log", "read_training_log", "write_metrics_json"]


def find_training_log(run_dir: str | Path) -> Path:
    """Find the CSVLogger file of a run.

    That is ``logs/csv/metrics.csv``, or the newest ``logs/**/metrics.csv`` when
    the logger wrote versioned folders.

    Raises
    ------
    FileNotFoundError
        If no ``metrics.csv`` is found.
    """
    path = Path(run_dir)
    if path.is_file():
        return path
    direct = path / "logs" / "csv" / "metrics.csv"
    if direct.exists():
        return direct
    found = sorted((path / "logs").glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"training log must exist at {direct}, got none (run folder {path}); "
            "train with `create_trainer(cfg, run_dir)` so the CSV logger writes it"
        )
    return found[-1]


def read_training_log(run_dir: str | Path) -> pd.DataFrame:
    """Per-epoch table from a Lightning CSVLogger ``metrics.csv`` (sparse rows merged).

    The logger writes one row per logging call, with NaN in the columns not
    logged then; learning-rate rows from ``LearningRateMonitor`` carry no epoch.
    Those rows get the epoch of the next row that has one (the last epoch for
    trailing rows). For every epoch the last logged value of each column is kept.

    Parameters
    ----------
    run_dir
        A run folder or the ``metrics.csv`` path itself.

    Returns
    -------
    pandas.DataFrame
        One row per epoch, sorted: ``epoch`` (int), ``step`` (last step of the
        epoch), then the metric columns in the file's order (``train/loss``,
        ``val/auroc``, ``lr-AdamW``, ...). ``attrs["source"]`` is the file.
    """
    path = find_training_log(run_dir)
    raw = pd.read_csv(path)
    if "epoch" not in raw.columns or "step" not in raw.columns:
        raise ValueError(
            f"training log must have `epoch` and `step` columns, got {list(raw.columns)} ({path})"
        )
    raw = raw.reset_index(drop=True)
    epoch = raw["epoch"]
    if epoch.notna().any():
        order = np.argsort(raw["step"].to_numpy(), kind="stable")
        ordered = epoch.iloc[order]
        filled = ordered.bfill().ffill()
        raw.loc[filled.index, "epoch"] = filled
    else:
        raw["epoch"] = 0
    raw["epoch"] = raw["epoch"].astype(int)
    metrics = [c for c in raw.columns if c not in ("epoch", "step")]
    merged = raw.groupby("epoch", sort=True).agg(
        {"step": "max", **{c: "last" for c in metrics}}
    )
    merged = merged.reset_index()
    merged = merged.dropna(axis=1, how="all")
    merged.attrs["source"] = str(path)
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(
    run_dir: str | Path, metrics: Mapping[str, Any], merge: bool = True
) -> Path:
    """Write ``run_dir/metrics.json`` (NaN -> null, numpy -> Python types).

    Parameters
    ----------
    run_dir
        The run folder (created if absent).
    metrics
        e.g. ``{"test": binary_metrics(df), "val": {...}}``.
    merge
        Keep top-level keys already in the file that ``metrics`` does not set.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(run_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if merge and path.exists():
        data = json.loads(path.read_text())
    data.update(_jsonable(dict(metrics)))
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _json_metrics(path: Path, split: str) -> dict[str, Any]:
    """Metrics of ``split`` in metrics.json: nested ``{"test": {...}}`` or flat ``"test/auroc"``.

    Run-level scalars (``preset``, ``fit_seconds``...) come along; other splits do not.
    """
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"metrics.json must be valid JSON, got: {exc} ({path})") from exc
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == split and isinstance(value, Mapping):
            out.update({k: v for k, v in value.items() if not isinstance(v, (Mapping, list))})
        elif key.startswith(f"{split}/") and not isinstance(value, (Mapping, list)):
            out[key.split("/", 1)[1]] = value
    for key, value in data.items():
        if "/" not in key and not isinstance(value, (Mapping, list)):
            out.setdefault(key, value)
    return {k: (np.nan if v is None else v) for k, v in out.items()}


def compare_runs(
    run_dirs: Sequence[str | Path] | Mapping[str, str | Path],
    split: str = "test",
    n_boot: int = 200,
    seed: int = 0,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """One row per run folder: metrics of its ``split`` predictions with an AUROC interval.

    Metrics come from ``predictions/{split}.csv`` when it exists; values in
    ``metrics.json`` for that split fill the rest (or everything, when there
    are no predictions).

    Parameters
    ----------
    run_dirs
        Run folders, or a mapping ``label -> folder``.
    split
        ``"val"`` or ``"test"``.
    n_boot
        Resamples for ``auroc_low``/``auroc_high`` (0 to skip).
    seed
        Bootstrap seed.
    threshold
        Decision threshold.

    Returns
    -------
    pandas.DataFrame
        Columns ``run``, ``run_dir``, ``split``, ``source``, the metrics, run-level
        scalars of metrics.json (``preset``, ``fit_seconds``...) and ``epochs`` (rows
        of the training log; metrics.json's value or NaN without a log).

    Raises
    ------
    FileNotFoundError
        If a folder has neither predictions nor a metrics.json.
    """
    items = (
        list(run_dirs.items()) if isinstance(run_dirs, Mapping)
        else [(Path(d).name, d) for d in run_dirs]
    )
    rows = []
    for label, folder in items:
        folder = Path(folder)
        pred_path = folder / "predictions" / f"{split}.csv"
        json_path = folder / "metrics.json"
        row: dict[str, Any] = {"run": label, "run_dir": str(folder), "split": split}
        if pred_path.exists():
            table = read_predictions(pred_path)
            row["source"] = "predictions"
            row.update(binary_metrics(table, threshold))
            if n_boot > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = bootstrap_ci(table, "auroc", n_boot=n_boot, seed=seed)
                row["auroc_low"], row["auroc_high"] = res.low, res.high
        elif json_path.exists():
            row["source"] = "metrics.json"
        else:
            raise FileNotFoundError(
                f"run folder must hold {pred_path.relative_to(folder)} or metrics.json, got "
                f"neither ({folder})"
            )
        if json_path.exists():
            for key, value in _json_metrics(json_path, split).items():
                row.setdefault(key, value)
        try:
            row["epochs"] = len(read_training_log(folder))
        except (FileNotFoundError, ValueError):
            row.setdefault("epochs", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)
