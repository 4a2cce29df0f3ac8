"""Metric dashboards: learning curves, ROC / PR with bootstrap bands, calibration, ...

Every function takes ``ax=None`` (or ``axes=None`` for multi-panel figures) and
``output_file=None`` and returns the matplotlib Figure; nothing calls
``plt.show()``. Figures created here are released from pyplot's registry, so a
notebook shows each one once: end the cell with the call (or ``display(fig)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from gazimed_lab import evaluation as ev

__all__ = [
    "plot_calibration",
    "plot_confusion",
    "plot_learning_curves",
    "plot_pr",
    "plot_pred_vs_true",
    "plot_roc",
    "plot_run_comparison",
    "plot_subgroups",
    "save_figure",
]

PRETTY = {
    "auroc": "AUROC", "average_precision": "average precision", "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy", "precision": "precision (PPV)",
    "recall": "sensitivity", "specificity": "specificity", "f1": "F1", "mse": "MSE",
    "mae": "MAE (score units)", "r2": "R²", "pearson": "Pearson r", "brier": "Brier score",
    "loss": "loss",
}
CLASS_NAMES = ("not AD", "AD")
_DX_COLORS = {"CN": "tab:green", "MCI": "tab:orange", "AD": "tab:red"}


def _pretty(metric: str) -> str:
    return PRETTY.get(metric, metric)


def save_figure(fig: Figure, output_file: str | Path | None, dpi: int = 150) -> Figure:
    """Save ``fig`` to ``output_file`` (folders created) when given; return ``fig``."""
    if output_file is not None:
        path = Path(output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _new_figure(figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(figsize=figsize, **kw)
    plt.close(fig)  # keep it out of pyplot's registry: shown once, no leak
    return fig, axes


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    return _new_figure(figsize)


def _tables(df: Any) -> dict[str, pd.DataFrame]:
    if isinstance(df, Mapping):
        return {str(k): ev.read_predictions(v) for k, v in df.items()}
    table = ev.read_predictions(df)
    split = table["split"].iloc[0] if table["split"].nunique() == 1 else "all"
    return {str(split): table}


def _describe(table: pd.DataFrame) -> str:
    n, n_pos = len(table), int(ev.binary_truth(table).sum())
    return f"n = {n}, {n_pos} AD"


# ---------------------------------------------------------------- learning curves
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
        fig = panel_axes[0].figure
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
        res = ev.roc_curve_ci(table, n_boot=n_boot if ci else 1, seed=seed, ci=ci or 0.95)
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
        res = ev.pr_curve_ci(table, n_boot=n_boot if ci else 1, seed=seed, ci=ci or 0.95)
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
        fig = top.figure
    else:
        top, bottom = axes[0], axes[1]
        fig = top.figure
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
        panel_axes, fig = list(axes), axes[0].figure
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
