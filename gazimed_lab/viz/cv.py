"""The cross-validation figure: a metric per fold beside the pooled and ensemble estimates."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gazimed_lab.viz._figures import _axes, _pretty, save_figure

if TYPE_CHECKING:
    from gazimed_lab.evaluation.cv import CVSummary

__all__ = ["plot_cv_folds"]


def plot_cv_folds(summary: CVSummary | str | Path, metric: str = "auroc", ax: Axes | None = None,
                  output_file: str | Path | None = None, title: str | None = None) -> Figure:
    """Each fold's validation and test ``metric``, the pooled out-of-fold and ensemble CIs.

    Parameters
    ----------
    summary
        A :class:`~gazimed_lab.evaluation.cv.CVSummary`, or a cv run folder (then
        summarized without writing, 200 resamples).
    metric
        A metric of the fold table with a pooled interval (e.g. ``auroc``, ``mae``).
    ax, output_file, title
        Axes to draw into, file to save, title.
    """
    from gazimed_lab.evaluation.cv import summarize_cv

    if isinstance(summary, (str, Path)):
        summary = summarize_cv(summary, n_boot=200, write=False)
    pooled = summary.pooled[summary.pooled["metric"] == metric]
    if metric not in summary.folds.columns or pooled.empty:
        raise ValueError(f"`metric` must be one of the pooled cv metrics "
                         f"{sorted(summary.pooled['metric'].unique())}, got `{metric}`")
    created = ax is None
    fig, ax = _axes(ax, (6.4, 3.8))
    n_folds = int(summary.folds["fold"].max()) + 1
    for k, (split, marker, label) in enumerate((("val", "o", "validation fold"),
                                                ("test", "s", "test split"))):
        part = summary.folds[summary.folds["split"] == split]
        ax.plot(part["fold"] + (k - 0.5) * 0.12, part[metric], marker, color=f"C{k}",
                label=f"{label}, each fold's model")
    for k, (_, row) in enumerate(pooled.iterrows()):
        ax.axhspan(row["low"], row["high"], color=f"C{k}", alpha=0.15)
        ax.axhline(row["value"], color=f"C{k}", lw=1.2, ls="--",
                   label=f"{row['estimate']}: {row['value']:.3f} [{row['low']:.3f}, "
                         f"{row['high']:.3f}]")
    if metric == "auroc":
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(n_folds), [str(k) for k in range(n_folds)])
    ax.set(xlabel="fold", ylabel=_pretty(metric), xlim=(-0.5, n_folds - 0.5),
           title=title or f"{n_folds}-fold cross-validation: {_pretty(metric)} (bands: 95 % "
                          "bootstrap CI)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="best")
    if created:
        fig.tight_layout()
    return save_figure(fig, output_file)
