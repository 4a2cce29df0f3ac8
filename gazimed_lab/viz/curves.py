"""Curves over epochs and thresholds: learning curves, ROC and precision-recall with CIs.

Every function takes ``ax=None`` (or ``axes=None``) and ``output_file=None`` and
returns the matplotlib Figure; nothing calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gazimed_lab import evaluation as ev
from gazimed_lab.viz._figures import (
    _axes,
    _describe,
    _new_figure,
    _pretty,
    _tables,
    figure_of,
    save_figure,
)

__all__ = ["plot_learning_curves", "plot_pr", "plot_roc"]

def _find_column(log: pd.DataFrame, stage: str, metric: str) -> str | None:
    for name in (f"{stage}/{metric}_epoch", f"{stage}/{metric}", f"{stage}_{metric}_epoch",
                 f"{stage}_{metric}"):
        if name in log.columns and log[name].notna().any():
            return name
    return None


def plot_learning_curves(
    log_df: pd.DataFrame | str | Path,
    metrics: Sequence[str] = ("loss", "auroc"),
    axes: Sequence[Axes] | None = None,
    output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Train vs validation curves per epoch, one panel per metric, learning rate last.

    Parameters
    ----------
    log_df
        ``read_training_log`` output, or a run folder / ``metrics.csv`` path.
    metrics
        Metric names without stage prefix (``loss`` finds ``train/loss`` and ``val/loss``).
    axes
        One Axes per panel (metrics found + one for the learning rate when logged).
    output_file
        Where to save a PNG/PDF/SVG.
    title
        Figure title.
    """
    log = log_df if isinstance(log_df, pd.DataFrame) else ev.read_training_log(log_df)
    found = [(m, _find_column(log, "train", m), _find_column(log, "val", m)) for m in metrics]
    found = [f for f in found if f[1] or f[2]]
    lr_cols = [c for c in log.columns if c.startswith("lr") and log[c].notna().any()]
    if not found and not lr_cols:
        raise ValueError(f"training log must have columns for {list(metrics)} (train/<m>, "
                         f"val/<m>), got {list(log.columns)}")
    n_panels = len(found) + bool(lr_cols)
    if axes is None:
        fig, grid = _new_figure((4.4 * n_panels, 3.6), ncols=n_panels, squeeze=False)
        panel_axes = list(grid[0])
    else:
        panel_axes = list(axes)
        if len(panel_axes) < n_panels:
            raise ValueError(f"`axes` must hold {n_panels} Axes, got {len(panel_axes)}")
        fig = figure_of(panel_axes[0])
    for ax, (metric, train_col, val_col) in zip(panel_axes, found):
        for col, stage, color in ((train_col, "train", "tab:blue"), (val_col, "val", "tab:orange")):
            if col is None:
                continue
            rows = log[["epoch", col]].dropna()
            ax.plot(rows["epoch"], rows[col], marker="o", ms=3, color=color, label=stage)
        if val_col is not None:
            rows = log[["epoch", val_col]].dropna()
            lower = metric in ev.LOWER_IS_BETTER or metric.endswith("loss")
            best = rows[val_col].idxmin() if lower else rows[val_col].idxmax()
            ax.plot(rows.loc[best, "epoch"], rows.loc[best, val_col], marker="*", ms=13,
                    color="tab:red", ls="none",
                    label=f"best val {rows.loc[best, val_col]:.3f} (epoch "
                          f"{int(rows.loc[best, 'epoch'])})")
        ax.set(xlabel="epoch", ylabel=_pretty(metric), title=_pretty(metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if lr_cols:
        ax = panel_axes[len(found)]
        for col in lr_cols:
            rows = log[["epoch", col]].dropna()
            ax.plot(rows["epoch"], rows[col], marker=".", label=col.removeprefix("lr-"))
        ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
        if (log[lr_cols] > 0).all().all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small", title="optimizer")
    for ax in panel_axes[:n_panels]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, output_file)


# ---------------------------------------------------------------- ROC / PR
def _operating_point(table: pd.DataFrame, threshold: float) -> tuple[float, float, float]:
    (tn, fp), (fn, tp) = ev.confusion(table, threshold)
    fpr = fp / max(fp + tn, 1)
    tpr = tp / max(tp + fn, 1)
    ppv = tp / (tp + fp) if tp + fp else np.nan
    return fpr, tpr, ppv


def plot_roc(
    df: Any, ci: float | None = 0.95, n_boot: int = 1000, seed: int = 0,
    threshold: float | None = 0.5, ax: Axes | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """ROC curve with its bootstrap band; AUROC [low, high] in the legend.

    Parameters
    ----------
    df
        Predictions table (or path / run folder), or a mapping ``label -> table``
        to overlay several curves (e.g. ``{"val": val_df, "test": test_df}``).
    ci
        Coverage of the band (None: no band, no interval).
    n_boot
        Bootstrap resamples.
    seed
        Bootstrap seed.
    threshold
        Mark the operating point at this threshold (None: no marker).
    ax, output_file, title
        Target Axes, file to save, title.
    """
    fig, ax = _axes(ax, (5.4, 5.0))
    tables = _tables(df)
    for i, (label, table) in enumerate(tables.items()):
        color = f"C{i}"
        res: dict[str, Any] = ev.roc_curve_ci(table, n_boot=n_boot if ci else 1, seed=seed,
                                              ci=ci or 0.95)
        text = f"AUROC {res['auroc']:.3f}"
        if ci:
            ax.fill_between(res["fpr"], res["tpr_low"], res["tpr_high"], color=color, alpha=0.2,
                            lw=0)
            text += f" [{res['auroc_low']:.3f}, {res['auroc_high']:.3f}]"
        ax.plot(res["fpr_raw"], res["tpr_raw"], color=color, lw=2,
                label=f"{label}: {text} ({_describe(table)})")
        if threshold is not None:
            fpr, tpr, _ = _operating_point(table, threshold)
            ax.plot(fpr, tpr, "o", color=color, mec="black", ms=8,
                    label=f"{label}: threshold {threshold:.2f} (sens {tpr:.2f}, "
                          f"spec {1 - fpr:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    band = f"; band: {ci:.0%} bootstrap CI" if ci else ""
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false positive rate (1 − specificity)",
           ylabel="true positive rate (sensitivity)",
           title=title or f"ROC curve{band}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, output_file)


def plot_pr(
    df: Any, ci: float | None = 0.95, n_boot: int = 1000, seed: int = 0,
    threshold: float | None = 0.5, ax: Axes | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Precision-recall curve with its bootstrap band; average precision [low, high] in the legend.

    Parameters are those of ``plot_roc``; the dashed line is the prevalence (chance).
    """
    fig, ax = _axes(ax, (5.4, 5.0))
    for i, (label, table) in enumerate(_tables(df).items()):
        color = f"C{i}"
        res: dict[str, Any] = ev.pr_curve_ci(table, n_boot=n_boot if ci else 1, seed=seed,
                                             ci=ci or 0.95)
        text = f"AP {res['average_precision']:.3f}"
        if ci:
            ax.fill_between(res["recall"], res["precision_low"], res["precision_high"],
                            color=color, alpha=0.2, lw=0)
            text += f" [{res['average_precision_low']:.3f}, {res['average_precision_high']:.3f}]"
        ax.step(res["recall_raw"], res["precision_raw"], where="post", color=color, lw=2,
                label=f"{label}: {text} ({_describe(table)})")
        ax.axhline(res["prevalence"], ls="--", color=color, lw=1, alpha=0.7,
                   label=f"{label}: chance (prevalence {res['prevalence']:.2f})")
        if threshold is not None:
            _, tpr, ppv = _operating_point(table, threshold)
            ax.plot(tpr, ppv, "o", color=color, mec="black", ms=8,
                    label=f"{label}: threshold {threshold:.2f}")
    band = f"; band: {ci:.0%} bootstrap CI" if ci else ""
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05), aspect="equal",
           xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
           title=title or f"Precision-recall curve{band}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return save_figure(fig, output_file)


# ---------------------------------------------------------------- calibration etc.
