"""Cross-validation results: per-fold metrics, pooled out-of-fold metrics, a test-split ensemble.

A cv run folder (``gazimed-lab cv``; README: Run folder) holds one training run per
fold in ``folds/<k>/``. Every fold holds out the same test split (drawn first, with
the same seed) and validates on its own fold of the remaining subjects, where its
checkpoint is chosen. :func:`summarize_cv` reads those runs and computes:

* **per fold** (``folds.csv``): the metrics of each fold's best checkpoint on its
  validation fold and on the test split;
* **mean ± sd across folds** of each of those;
* **pooled out-of-fold** (``predictions/oof.csv``): every non-test subject scored once,
  by the fold model that did not train on it, with bootstrap CIs. Each fold chose its
  checkpoint (and stopped early) on these very subjects, so the pooled figure is
  mildly optimistic; scores of different fold models are pooled as they are;
* **test-split ensemble** (``predictions/test_ensemble.csv``): the mean of the fold
  models' scores on the held-out test split, never used for any choice, with bootstrap
  CIs: the unbiased estimate of the cross-validated model.

Everything is written to ``metrics.json`` (``oof``, ``test_ensemble``, their ``_ci``,
``val_folds`` / ``test_folds`` with ``mean``, ``sd`` and the fold values) and, with
``figures=True``, ``figures/cv_folds.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gazimed_lab.evaluation.bootstrap import metrics_table
from gazimed_lab.evaluation.metrics import binary_metrics
from gazimed_lab.evaluation.predictions import read_predictions
from gazimed_lab.evaluation.runs import write_metrics_json
from gazimed_lab.paths import atomic_write, output_path

__all__ = ["CV_CI_METRICS", "CVSummary", "ensemble_predictions", "fold_dirs", "pooled_oof",
           "summarize_cv"]

#: Metrics given bootstrap CIs for the pooled out-of-fold and ensemble predictions.
CV_CI_METRICS = ("auroc", "average_precision", "balanced_accuracy", "recall", "specificity",
                 "mae", "pearson", "brier")
#: Metrics summarized as mean ± sd across folds.
FOLD_METRICS = ("auroc", "average_precision", "accuracy", "balanced_accuracy", "recall",
                "specificity", "f1", "mae", "r2", "pearson", "brier")
STATE_FILE = "cv_state.json"


@dataclass
class CVSummary:
    """What :func:`summarize_cv` found in a cv run folder.

    Attributes
    ----------
    run_dir
        The cv run folder.
    folds
        One row per fold and split (``val``, ``test``): ``fold``, ``split``, ``n``,
        ``n_pos``, the metrics, ``epochs``, ``fit_seconds``.
    mean_sd
        One row per split and metric: ``split``, ``metric``, ``mean``, ``sd`` (sample
        sd across folds), ``min``, ``max``, ``n_folds``.
    pooled
        ``estimate`` (``out-of-fold (pooled)`` / ``test (ensemble of folds)``),
        ``metric``, ``value``, ``low``, ``high`` (bootstrap CIs).
    oof, ensemble
        The pooled out-of-fold predictions (with ``fold``) and the test ensemble
        (``score`` the mean of the fold scores, ``score_sd``, ``n_models``).
    """

    run_dir: Path
    folds: pd.DataFrame
    mean_sd: pd.DataFrame
    pooled: pd.DataFrame
    oof: pd.DataFrame
    ensemble: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)

    def text(self, metric: str = "auroc") -> str:
        """Summary lines: pooled, ensemble and mean ± sd of ``metric``."""
        lines = []
        for estimate, rows in self.pooled[self.pooled["metric"] == metric].groupby(
                "estimate", sort=False):
            row = rows.iloc[0]
            lines.append(f"{estimate:<28} {metric} {row['value']:.3f} "
                         f"[{row['low']:.3f}, {row['high']:.3f}]")
        for split, label in (("val", "validation folds"), ("test", "test split, per fold")):
            row = self.mean_sd[(self.mean_sd["split"] == split)
                               & (self.mean_sd["metric"] == metric)].iloc[0]
            lines.append(f"{label:<28} {metric} {row['mean']:.3f} ± {row['sd']:.3f} "
                         f"(mean ± sd over {int(row['n_folds'])} folds)")
        return "\n".join(lines)


def fold_dirs(run_dir: str | Path, n_folds: int | None = None) -> list[Path]:
    """Return the finished fold runs ``folds/0 .. folds/K-1`` of a cv run folder.

    ``n_folds`` defaults to the ``folds`` of ``cv_state.json``.

    Raises
    ------
    FileNotFoundError
        When the folder is not a cv run, or a fold has not finished (no metrics.json).
    """
    run_dir = Path(run_dir)
    if n_folds is None:
        state = run_dir / STATE_FILE
        if not state.is_file():
            raise FileNotFoundError(
                f"`cv run folder` must hold {STATE_FILE}, got none ({run_dir}); run "
                "`gazimed-lab cv --config P --folds K --run-dir` first")
        n_folds = int(json.loads(state.read_text())["folds"])
    out = [output_path(run_dir, "folds", str(k)) for k in range(n_folds)]
    for k, folder in enumerate(out):
        if not (folder / "metrics.json").is_file():
            raise FileNotFoundError(
                f"`fold {k}` must be finished, got no metrics.json in {folder}; rerun the same "
                "`gazimed-lab cv` command to continue with the unfinished folds")
    return out


def _key(table: pd.DataFrame) -> list[str]:
    return ["subject_id", "session_id"] if "session_id" in table.columns else ["subject_id"]


def pooled_oof(folders: list[Path]) -> pd.DataFrame:
    """Concatenate each fold's validation predictions; each subject in one fold only.

    Raises
    ------
    ValueError
        Naming a subject found in the validation predictions of two folds.
    """
    tables = [read_predictions(folder, split="val").assign(fold=k)
              for k, folder in enumerate(folders)]
    oof = pd.concat(tables, ignore_index=True)
    first = oof.groupby("subject_id")["fold"].agg(["min", "max"])
    twice = first[first["min"] != first["max"]]
    if len(twice):
        sid = twice.index[0]
        raise ValueError(
            f"`out-of-fold predictions` must hold each subject in one fold, got {len(twice)} "
            f"subjects in several, e.g. `{sid}` in folds {int(twice.iloc[0]['min'])} and "
            f"{int(twice.iloc[0]['max'])} ({folders[0].parent}); were the folds trained with "
            "different seeds or manifests?")
    oof["split"] = "oof"
    return oof.sort_values(["fold", *_key(oof)], ignore_index=True)


def ensemble_predictions(folders: list[Path], threshold: float = 0.5) -> tuple[pd.DataFrame,
                                                                         pd.DataFrame]:
    """Each fold's test predictions (with ``fold``) and their mean score per subject.

    Raises
    ------
    ValueError
        When the folds scored different test subjects.
    """
    tables = [read_predictions(folder, split="test").assign(fold=k)
              for k, folder in enumerate(folders)]
    key = _key(tables[0])
    ids = [set(map(tuple, t[key].to_numpy().tolist())) for t in tables]
    for k, other in enumerate(ids[1:], start=1):
        if other != ids[0]:
            raise ValueError(
                f"`test split` must be the same for every fold, got {len(other ^ ids[0])} "
                f"subjects differing between folds 0 and {k} ({folders[0].parent}); the folds "
                "must share the manifest, the seed and data.test_fraction")
    per_fold = pd.concat(tables, ignore_index=True)
    meta = [c for c in per_fold.columns if c not in (*key, "score", "label", "fold")]
    grouped = per_fold.groupby(key, sort=True)
    ensemble = grouped[meta].first()
    ensemble["score"] = grouped["score"].mean()
    ensemble["score_sd"] = grouped["score"].std(ddof=1)
    ensemble["n_models"] = grouped["score"].size()
    ensemble["label"] = (ensemble["score"] > threshold).astype(int)
    ensemble["split"] = "test"
    ensemble = ensemble.reset_index()
    first = [*key, "target", "score", "label", "split"]
    return per_fold, ensemble[first + [c for c in ensemble.columns if c not in first]]


def _fold_rows(folders: list[Path], threshold: float) -> pd.DataFrame:
    rows = []
    for k, folder in enumerate(folders):
        info = json.loads((folder / "metrics.json").read_text())
        for split in ("val", "test"):
            metrics = binary_metrics(read_predictions(folder, split=split), threshold)
            rows.append({"fold": k, "split": split, **metrics, "epochs": info.get("epochs"),
                         "fit_seconds": info.get("fit_seconds")})
    return pd.DataFrame(rows)


def _mean_sd(folds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for split, part in folds.groupby("split", sort=False):
        for metric in FOLD_METRICS:
            values = part[metric].to_numpy(float)
            values = values[np.isfinite(values)]  # undefined in a fold (one class): left out
            rows.append({"split": split, "metric": metric,
                         "mean": float(values.mean()) if len(values) else np.nan,
                         "sd": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
                         "min": float(values.min()) if len(values) else np.nan,
                         "max": float(values.max()) if len(values) else np.nan,
                         "n_folds": len(values)})
    return pd.DataFrame(rows)


def summarize_cv(run_dir: str | Path, n_folds: int | None = None, n_boot: int = 1000,
                 seed: int = 0, threshold: float = 0.5, write: bool = True,
                 figures: bool = True) -> CVSummary:
    """Read a cv run folder's finished folds; compute (and write) the cv metrics.

    Parameters
    ----------
    run_dir
        The cv run folder (``folds/<k>/`` inside).
    n_folds
        Number of folds (default: from ``cv_state.json``).
    n_boot, seed
        Bootstrap resamples and seed of the CIs (subject-level, stratified).
    threshold
        Decision threshold of the threshold metrics.
    write
        Write ``folds.csv``, ``predictions/oof.csv``, ``predictions/test_folds.csv``,
        ``predictions/test_ensemble.csv`` and ``metrics.json`` into ``run_dir``.
    figures
        Also write ``figures/cv_folds.png`` (with ``write``).

    Returns
    -------
    CVSummary
        The tables (module docstring: what each estimate means).
    """
    run_dir = Path(run_dir)
    folders = fold_dirs(run_dir, n_folds)
    folds = _fold_rows(folders, threshold)
    mean_sd = _mean_sd(folds)
    oof = pooled_oof(folders)
    per_fold_test, ensemble = ensemble_predictions(folders, threshold)
    pooled = pd.concat([
        metrics_table(oof, CV_CI_METRICS, n_boot=n_boot, seed=seed, threshold=threshold)
        .assign(estimate="out-of-fold (pooled)"),
        metrics_table(ensemble, CV_CI_METRICS, n_boot=n_boot, seed=seed, threshold=threshold)
        .assign(estimate="test (ensemble of folds)")], ignore_index=True)
    pooled = pooled[["estimate", "metric", "value", "low", "high", "n_skipped"]]
    metrics: dict[str, Any] = {
        "kind": "cv", "folds": len(folders), "n_boot": n_boot, "seed": seed,
        "threshold": threshold,
        "oof": binary_metrics(oof, threshold), "test_ensemble": binary_metrics(ensemble, threshold),
        "n_subjects": {"oof": int(oof["subject_id"].nunique()),
                       "test": int(ensemble["subject_id"].nunique())},
        "fit_seconds": [float(s) for s in folds.loc[folds["split"] == "val", "fit_seconds"]],
        "note": "oof: each non-test subject scored by the fold model that did not train on "
                "it; that fold chose its checkpoint on it (mildly optimistic). test_ensemble: "
                "mean fold score on the held-out test split, never used for any choice.",
    }
    for estimate, name in (("out-of-fold (pooled)", "oof_ci"),
                           ("test (ensemble of folds)", "test_ensemble_ci")):
        part = pooled[pooled["estimate"] == estimate]
        metrics[name] = {m: [lo, hi] for m, lo, hi in zip(part["metric"], part["low"],
                                                          part["high"])}
    for split in ("val", "test"):
        part = mean_sd[mean_sd["split"] == split]
        values = folds[folds["split"] == split]
        metrics[f"{split}_folds"] = {
            m: {"mean": mu, "sd": sd, "values": values[m].tolist()}
            for m, mu, sd in zip(part["metric"], part["mean"], part["sd"])}
    summary = CVSummary(run_dir, folds, mean_sd, pooled, oof, ensemble, metrics)
    if write:
        predictions = run_dir / "predictions"
        for name, table in (("oof", oof), ("test_folds", per_fold_test),
                            ("test_ensemble", ensemble)):
            atomic_write(predictions / f"{name}.csv", partial(table.to_csv, index=False), name)
        atomic_write(run_dir / "folds.csv", lambda tmp: folds.to_csv(tmp, index=False),
                     "folds.csv")
        write_metrics_json(run_dir, metrics, merge=False)
        if figures:
            from gazimed_lab.viz.cv import plot_cv_folds

            plot_cv_folds(summary, output_file=run_dir / "figures" / "cv_folds.png")
    return summary
