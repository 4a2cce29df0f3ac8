"""Region figures: the ranked regions of interpretability maps, regional intensity outliers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gazimed_lab.viz._figures import _axes, _new_figure, figure_of, save_figure

__all__ = ["plot_region_outliers", "plot_region_report"]


def plot_region_report(report: pd.DataFrame, top: int = 8, axes: Any = None,
                       output_file: str | Path | None = None, title: str | None = None,
                       n_cols: int = 3) -> Figure:
    """Draw the ``top`` regions of each map of a region report as horizontal bars.

    Parameters
    ----------
    report
        :func:`~gazimed_lab.evaluation.localization.region_report` output.
    top
        Regions shown per map.
    axes
        One Axes per map (default: a grid of ``n_cols`` columns).
    output_file, title
        File to save; title.
    """
    missing = {"map", "rank", "region", "mean_abs"} - set(report.columns)
    if missing or report.empty:
        raise ValueError(f"`report` must be a region_report table with rows, got "
                         f"{len(report)} rows, missing columns {sorted(missing)}")
    names = list(pd.unique(report["map"]))
    if axes is None:
        cols = min(n_cols, len(names))
        rows = -(-len(names) // cols)
        fig, grid = _new_figure((4.2 * cols, 0.3 * top * rows + 0.9 * rows), nrows=rows,
                                ncols=cols, squeeze=False)
        panels = list(grid.ravel())
        for ax in panels[len(names):]:
            ax.set_visible(False)
    else:
        panels = list(np.ravel(axes))
        fig = figure_of(panels[0])
    for ax, name in zip(panels, names):
        part = report[report["map"] == name].nsmallest(top, "rank")
        y = np.arange(len(part))[::-1]
        ax.barh(y, part["mean_abs"], color="tab:purple")
        ax.set_yticks(y, part["region"], fontsize="small")
        ax.set_title(str(name), fontsize="medium")
        ax.set_xlabel("mean |map| in the region", fontsize="small")
        ax.grid(alpha=0.3, axis="x")
        ax.xaxis.set_major_locator(MaxNLocator(4))  # small values: few, readable ticks
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    fig.suptitle(title or f"Top {top} atlas regions of each map (mean |map|)")
    if axes is None:
        fig.tight_layout()
    return save_figure(fig, output_file)


def plot_region_outliers(outliers: pd.DataFrame, threshold: float = 4.0, top: int = 20,
                         ax: Axes | None = None, output_file: str | Path | None = None,
                         title: str | None = None) -> Figure:
    """Draw the most extreme regional outliers: robust z per (subject, modality, region).

    Parameters
    ----------
    outliers
        :func:`~gazimed_lab.data.region_qa.region_outliers` output.
    threshold
        The |robust z| limit used (drawn as lines).
    top
        Rows shown (largest |robust z| first).
    ax, output_file, title
        Axes to draw into, file to save, title.
    """
    shown = outliers.head(top)
    created = ax is None
    fig, ax = _axes(ax, (6.4, 1.2 + 0.3 * max(len(shown), 1)))
    if shown.empty:
        ax.text(0.5, 0.5, f"no regional mean beyond |robust z| {threshold:g}", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        y = np.arange(len(shown))[::-1]
        z = shown["robust_z"].to_numpy(float)
        ax.barh(y, z, color=np.where(z > 0, "tab:red", "tab:blue"))
        labels = [f"{s} {m.upper()} {r}" for s, m, r in
                  zip(shown["subject_id"], shown["modality"], shown["region"])]
        ax.set_yticks(y, labels, fontsize="small")
        for sign in (-1, 1):
            ax.axvline(sign * threshold, color="grey", ls="--", lw=1)
        ax.set(xlabel="robust z of the regional mean (median / MAD over the cohort)")
        ax.grid(alpha=0.3, axis="x")
    ax.set_title(title or f"Regional intensity outliers (|robust z| > {threshold:g})",
                 fontsize="medium")
    if created:
        fig.tight_layout()
    return save_figure(fig, output_file)
