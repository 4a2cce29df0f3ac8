"""Metric dashboards: learning curves, ROC / PR with bootstrap bands, calibration, ...

Every function takes ``ax=None`` (or ``axes=None`` for multi-panel figures) and
``output_file=None`` and returns the matplotlib Figure; nothing calls
``plt.show()``. Figures created here are released from pyplot's registry, so a
notebook shows each one once: end the cell with the call (or ``display(fig)``).
"""


from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from gazimed_lab import evaluation as ev
from gazimed_lab.viz._figures import (
    _DX_COLORS,
    CLASS_NAMES,
    _axes,
    _new_figure,
    _pretty,
    figure_of,
    save_figure,
)

__all__ = [
    "plot_calibration",
    "plot_confusion",
    "plot_pred_vs_true",
    "plot_run_comparison",
    "plot_subgroups",
]

def plot_calibration(
    df: Any, n_bins: int = 10, strategy: str = "uniform",
    axes: Axes | Sequence[Axes] | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Reliability diagram (with Wilson 95 % intervals) over a histogram of bin counts.

    Parameters
    ----------
    df
        Predictions table (or path / run folder).
    n_bins, strategy
        Binning, see ``gazimed_lab.evaluation.calibration``.
    axes
        Two Axes (diagram, histogram), or one Axes (the counts then go on a twin axis).
    output_file, title
        File to save; title (default names the Brier score and ECE).
    """
    table = ev.calibration(df, n_bins=n_bins, strategy=strategy)
    if axes is None:
        fig, (top, bottom) = _new_figure(
            (5.2, 6.0), nrows=2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    elif isinstance(axes, Axes):
        top = axes
        bottom = top.twinx()
        top.set_zorder(bottom.get_zorder() + 1)  # curve above the count bars
        top.patch.set_visible(False)
        fig = figure_of(top)
    else:
        top, bottom = axes[0], axes[1]
        fig = figure_of(top)
    used = table[table["count"] > 0]
    pos = np.round(used["frac_positive"] * used["count"]).astype(int)
    ci = [stats.binomtest(k, n).proportion_ci(method="wilson") for k, n in zip(pos, used["count"])]
    low = used["frac_positive"].to_numpy() - np.array([c.low for c in ci])
    high = np.array([c.high for c in ci]) - used["frac_positive"].to_numpy()
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    top.errorbar(used["mean_score"], used["frac_positive"], yerr=[low, high], marker="o",
                 capsize=3, color="tab:blue", label="observed (95 % Wilson CI)")
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction AD (target > 0.5)")
    top.grid(alpha=0.3)
    brier, ece = table.attrs["brier"], table.attrs["ece"]
    top.set_title(title or f"Calibration (n = {table.attrs['n']}): Brier {brier:.3f}, "
                  f"ECE {ece:.3f}")
    widths = (table["bin_high"] - table["bin_low"]).to_numpy()
    positives = np.round(table["frac_positive"].fillna(0) * table["count"]).to_numpy()
    negatives = table["count"].to_numpy() - positives
    kw = {"width": widths, "align": "edge", "edgecolor": "white"}
    alpha = 0.35 if bottom is not None and isinstance(axes, Axes) else 0.9
    bottom.bar(table["bin_low"], negatives, color="tab:green", alpha=alpha, label=CLASS_NAMES[0],
               **kw)
    bottom.bar(table["bin_low"], positives, bottom=negatives, color="tab:red", alpha=alpha,
               label=CLASS_NAMES[1], **kw)
    bottom.set_ylabel("subjects per bin")
    if isinstance(axes, Axes):  # one legend for both layers
        handles = top.get_legend_handles_labels()[0] + bottom.get_legend_handles_labels()[0]
        top.legend(handles=handles, loc="upper left", fontsize="small")
    else:
        top.legend(loc="upper left", fontsize="small")
        bottom.legend(fontsize="small", ncols=2, loc="upper center")
    (bottom if not isinstance(axes, Axes) else top).set_xlabel("mean predicted score in bin")
    if axes is None:
        fig.tight_layout()
    return save_figure(fig, output_file)


def plot_pred_vs_true(
    df: Any, ax: Axes | None = None, hue: str | None = "diagnosis",
    threshold: float = 0.5, output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Scatter of predicted score against the true target, with R², Pearson r and MAE.

    Points are coloured by ``hue`` (default ``diagnosis``) when the table has it.
    """
    fig, ax = _axes(ax, (5.4, 5.0))
    table = ev.read_predictions(df)
    m = ev.binary_metrics(table, threshold)
    if hue and hue in table.columns:
        keys = list(pd.unique(table[hue].astype(str)))
        keys.sort(key=lambda k: (list(_DX_COLORS).index(k) if k in _DX_COLORS else 9, k))
        for i, key in enumerate(keys):
            sub = table[table[hue].astype(str) == key]
            ax.scatter(sub["target"], sub["score"], s=22, alpha=0.8,
                       color=_DX_COLORS.get(key, f"C{i}"), label=f"{key} (n = {len(sub)})")
    else:
        ax.scatter(table["target"], table["score"], s=22, alpha=0.8, label="subjects")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="identity")
    ax.axhline(threshold, color="grey", lw=0.8, ls=":")
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.text(0.97, 0.03, f"R² = {m['r2']:.3f}\nPearson r = {m['pearson']:.3f}\n"
            f"MAE = {m['mae']:.3f}\nn = {m['n']}", transform=ax.transAxes, ha="right",
            va="bottom", bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85})
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal",
           xlabel="true target score (AD > 0.5)", ylabel="predicted score",
           title=title or f"Predicted vs true (R² = {m['r2']:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", title=hue if hue in table.columns else None)
    return save_figure(fig, output_file)


def plot_confusion(
    df: Any, threshold: float = 0.5, ax: Axes | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Confusion matrix at ``threshold``: counts and row percentages, with a colour bar."""
    fig, ax = _axes(ax, (5.0, 4.4))
    table = ev.read_predictions(df)
    cm = ev.confusion(table, threshold)
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    rows = cm.sum(axis=1, keepdims=True)
    for (i, j), count in np.ndenumerate(cm):
        share = f"{count / rows[i, 0]:.0%} of true {CLASS_NAMES[i]}" if rows[i, 0] else "—"
        ax.text(j, i, f"{count}\n{share}", ha="center", va="center", fontsize=10,
                color="white" if count > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], [f"predicted {c}" for c in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES], rotation=90, va="center")
    ax.set(xlabel=f"prediction (score ≥ {threshold:.2f})", ylabel="truth (target > 0.5)")
    fig.colorbar(image, ax=ax, label="subjects", fraction=0.046, pad=0.04)
    m = ev.binary_metrics(table, threshold)
    ax.set_title(title or f"Confusion at threshold {threshold:.2f}\naccuracy {m['accuracy']:.2f}, "
                 f"sensitivity {m['recall']:.2f}, specificity {m['specificity']:.2f}",
                 fontsize="medium")
    return save_figure(fig, output_file)


def plot_subgroups(
    subgroup_df: pd.DataFrame, metric: str = "auroc", ax: Axes | None = None,
    output_file: str | Path | None = None, title: str | None = None,
) -> Figure:
    """Dot plot of a metric per subgroup (``subgroup_metrics`` output), all-subjects line.

    Error bars are drawn when the table has ``<metric>_low`` / ``<metric>_high``;
    groups where the metric is undefined (one class) are labelled ``n/a``.
    """
    if metric not in subgroup_df.columns:
        raise ValueError(f"`metric` must be a column of the subgroup table, got `{metric}` "
                         f"(columns: {list(subgroup_df.columns)})")
    overall = subgroup_df[subgroup_df["group"] == "all"]
    rows = subgroup_df[subgroup_df["group"] != "all"].reset_index(drop=True)
    created = ax is None
    fig, ax = _axes(ax, (6.0, 0.9 + 0.38 * max(len(rows), 1)))
    y = np.arange(len(rows))[::-1]
    groups = list(pd.unique(rows["group"]))
    has_ci = f"{metric}_low" in rows.columns and f"{metric}_high" in rows.columns
    bounded = metric in {"auroc", "accuracy", "balanced_accuracy", "recall", "specificity",
                         "precision", "f1", "average_precision"}
    for k, group in enumerate(groups):
        sel = (rows["group"] == group).to_numpy()
        vals = rows.loc[sel, metric].to_numpy(float)
        err = None
        if has_ci:
            lo = rows.loc[sel, f"{metric}_low"].to_numpy(float)
            hi = rows.loc[sel, f"{metric}_high"].to_numpy(float)
            err = np.nan_to_num([vals - lo, hi - vals])
        ax.errorbar(vals, y[sel], xerr=err, fmt="o", color=f"C{k}", capsize=3, label=group)
    left = 0.0 if bounded else np.nanmin(rows[metric].to_numpy(float), initial=0.0)
    for yi, value in zip(y, rows[metric]):
        if not np.isfinite(value):
            ax.text(left + 0.01, yi, "n/a (one class)", va="center", fontsize="small",
                    color="grey")
    if len(overall) and np.isfinite(overall[metric].iloc[0]):
        ax.axvline(overall[metric].iloc[0], color="black", ls="--", lw=1,
                   label=f"all subjects ({overall[metric].iloc[0]:.3f})")
    if metric == "auroc":
        ax.axvline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_yticks(y, [f"{g}: {v} (n = {n})" for g, v, n in
                      zip(rows["group"], rows["value"], rows["n"])])
    if bounded:
        ax.set_xlim(0, 1.02)
    ax.set(xlabel=_pretty(metric), ylabel="subgroup (subjects)",
           title=title or f"{_pretty(metric)} by subgroup")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small", loc="best")
    if created:
        fig.tight_layout()
    return save_figure(fig, output_file)


def plot_run_comparison(
    compare_df: pd.DataFrame, metrics: Sequence[str] = ("auroc", "accuracy", "mae"),
    axes: Sequence[Axes] | None = None, output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Horizontal bars of metrics per run (``compare_runs`` output), best run highlighted.

    Intervals are drawn when the table has ``<metric>_low`` / ``<metric>_high``.
    """
    metrics = [m for m in metrics if m in compare_df.columns]
    if not metrics:
        raise ValueError(f"`metrics` must name columns of the comparison table, got none of "
                         f"them (columns: {list(compare_df.columns)})")
    n_runs = len(compare_df)
    if axes is None:
        size = (3.8 * len(metrics), max(2.6, 1.4 + 0.45 * n_runs))
        fig, grid = _new_figure(size, ncols=len(metrics), squeeze=False, sharey=True)
        panel_axes = list(grid[0])
    else:
        panel_axes, fig = list(axes), figure_of(axes[0])
    y = np.arange(n_runs)[::-1]
    for ax, metric in zip(panel_axes, metrics):
        vals = compare_df[metric].to_numpy(float)
        lower = metric in ev.LOWER_IS_BETTER
        best = np.nanargmin(vals) if lower else np.nanargmax(vals)
        colors = ["tab:blue" if i == best else "lightsteelblue" for i in range(n_runs)]
        err = None
        if f"{metric}_low" in compare_df.columns and f"{metric}_high" in compare_df.columns:
            err = np.nan_to_num([vals - compare_df[f"{metric}_low"].to_numpy(float),
                                 compare_df[f"{metric}_high"].to_numpy(float) - vals])
        ax.barh(y, vals, xerr=err, color=colors, capsize=3)
        ends = vals if err is None else vals + err[1]
        for yi, v, end in zip(y, vals, ends):
            ax.text(end, yi, f"  {v:.3f}", va="center", ha="left", fontsize="small")
        ax.set(xlabel=_pretty(metric) + (" (lower is better)" if lower else " (higher is better)"),
               title=_pretty(metric))
        ax.set_xlim(0, 1.2 * max(float(np.nanmax(ends)), 1e-9))
        ax.grid(alpha=0.3, axis="x")
    panel_axes[0].set_yticks(y, compare_df["run"].astype(str))
    split = compare_df["split"].iloc[0] if "split" in compare_df.columns else ""
    bars = "; bars: 95 % bootstrap CI" if any(f"{m}_low" in compare_df for m in metrics) else ""
    fig.suptitle(title or f"Run comparison ({split} split; best run in dark blue{bars})")
    if axes is None:
        fig.tight_layout()
    return save_figure(fig, output_file)
