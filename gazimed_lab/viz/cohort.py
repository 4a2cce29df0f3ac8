"""Cohort-level figures for data QA and prediction: missingness, distributions, balance.

Same conventions as the dashboards: ``ax``/``axes`` to draw into,
``output_file`` to save, the Figure returned, never ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gazimed_lab.data.sessions import RANK, has_sessions, session_ranks
from gazimed_lab.viz._figures import _DX_COLORS, _axes, _new_figure, save_figure

__all__ = [
    "plot_feature_distributions",
    "plot_missingness",
    "plot_score_distribution",
    "plot_split_balance",
]


def plot_missingness(
    table: pd.DataFrame,
    columns: Sequence[str],
    max_columns: int = 60,
    ax: Axes | None = None,
    output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Subjects x features map of missing cells (dark = missing).

    Only features with at least one gap are drawn (up to ``max_columns``, most
    missing first); the title says how many features are complete.
    """
    columns = [c for c in columns if c in table.columns]
    if not columns:
        raise ValueError("`columns` must name at least one column of `table`, got none")
    missing = table[columns].isna()
    frac = missing.mean().sort_values(ascending=False, kind="stable")
    gappy = [c for c in frac.index if frac[c] > 0][:max_columns]
    fig, ax = _axes(ax, (max(6.0, 0.18 * len(gappy) + 2.5), 5.0))
    complete = len(columns) - int((frac > 0).sum())
    if gappy:
        image = missing[gappy].to_numpy(dtype=float)
        ax.imshow(image, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
        ax.set_xticks(range(len(gappy)))
        ax.set_xticklabels([f"{c} ({frac[c]:.0%})" for c in gappy], rotation=90, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no missing values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_ylabel(f"subject (n = {len(table)})")
    ax.set_xlabel("clinical feature (fraction missing); black = missing")
    ax.set_title(title or f"Missing clinical values: {len(gappy)} features with gaps, "
                          f"{complete} complete")
    return save_figure(fig, output_file)


def plot_feature_distributions(
    table: pd.DataFrame,
    features: Sequence[str],
    by: str = "diagnosis",
    ncols: int = 4,
    output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Histogram per feature, coloured by group (e.g. diagnosis); gaps are left out."""
    features = [f for f in features if f in table.columns]
    if not features:
        raise ValueError("`features` must name columns of `table`, got none that exist")
    nrows = int(np.ceil(len(features) / ncols))
    fig, axes = _new_figure((3.2 * ncols, 2.6 * nrows), nrows=nrows, ncols=ncols, squeeze=False)
    groups = sorted(table[by].dropna().unique()) if by in table.columns else [None]
    for ax, feature in zip(axes.flat, features):
        values = pd.to_numeric(table[feature], errors="coerce")
        bins = np.histogram_bin_edges(values.dropna(), bins=20)
        for group in groups:
            chosen = values if group is None else values[table[by] == group]
            ax.hist(chosen.dropna(), bins=bins, alpha=0.5, label=str(group),
                    color=_DX_COLORS.get(str(group)))
        n_missing = int(values.isna().sum())
        ax.set_title(f"{feature}" + (f" ({n_missing} missing)" if n_missing else ""), fontsize=9)
        ax.set_xlabel("value (data-dictionary units)", fontsize=8)
        ax.set_ylabel("subjects", fontsize=8)
    for ax in list(axes.flat)[len(features):]:
        ax.set_visible(False)
    if groups != [None]:
        axes.flat[0].legend(title=by, fontsize=7)
    fig.suptitle(title or f"Clinical feature distributions by {by}")
    fig.tight_layout()
    return save_figure(fig, output_file)


def plot_split_balance(
    splits: pd.DataFrame,
    columns: Sequence[str] = ("diagnosis", "site", "sex"),
    output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Per split: proportions of each category, and the age distribution, over subjects.

    ``splits`` is a subject table with a ``split`` column (e.g. the run's
    ``splits/*.csv`` concatenated). With sessions (a ``session_id`` column) each
    subject counts once, at its earliest session in the table (the baseline, by
    ``session_rank`` when present, else the natural order of the session ids): the
    splits are stratified by subject at baseline, and a subject with many visits must
    not weigh more. The counts then read ``n=<subjects> (<sessions> sessions)``.
    """
    if "split" not in splits.columns:
        raise ValueError("`splits` must have a `split` column, got columns "
                         f"{list(splits.columns)}")
    sessions: pd.Series | None = None
    if has_sessions(splits):
        sessions = splits.groupby("split").size()
        splits = _earliest_session(splits)
    columns = [c for c in columns if c in splits.columns]
    panels = len(columns) + int("age" in splits.columns)
    fig, axes = _new_figure((4.0 * panels, 3.6), ncols=max(panels, 1), squeeze=False)
    order = [s for s in ("train", "val", "test") if s in set(splits["split"])]
    order += sorted(set(splits["split"]) - set(order))
    for ax, column in zip(axes.flat, columns):
        counts = pd.crosstab(splits["split"], splits[column]).reindex(order)
        shares = counts.div(counts.sum(axis=1), axis=0)
        bottom = np.zeros(len(order))
        for value in shares.columns:
            ax.bar(order, shares[value], bottom=bottom, label=str(value),
                   color=_DX_COLORS.get(str(value)))
            bottom += shares[value].to_numpy()
        for i, split in enumerate(order):
            label = f"n={int(counts.loc[split].sum())}"
            if sessions is not None:
                label += f"\n({int(sessions[split])} sessions)"
            ax.text(i, 1.02, label, ha="center", fontsize=8)
        ax.set_ylim(0, 1.12 if sessions is None else 1.2)
        ax.set_ylabel("fraction of split's subjects")
        ax.set_title(column)
        ax.legend(fontsize=7, loc="lower right")
    if "age" in splits.columns:
        ax = axes.flat[len(columns)]
        data = [pd.to_numeric(splits.loc[splits["split"] == s, "age"], errors="coerce").dropna()
                for s in order]
        ax.boxplot(data, tick_labels=order)
        ax.set_ylabel("age (years)" if sessions is None else "age at first session (years)")
        ax.set_title("age")
    fig.suptitle(title or "Balance across subject-level splits")
    fig.tight_layout()
    return save_figure(fig, output_file)


def _earliest_session(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, subject): its first session in ``table`` (module rules)."""
    ranks = table[RANK] if RANK in table.columns else session_ranks(table)
    ranks = pd.to_numeric(ranks, errors="coerce")
    first = ranks.groupby([table["split"], table["subject_id"].astype(str)]).idxmin()
    return table.loc[first.to_numpy()]


def plot_score_distribution(
    predictions: pd.DataFrame,
    by: str | None = "diagnosis",
    threshold: float = 0.5,
    ax: Axes | None = None,
    output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Histogram of predicted scores (optionally per group) with the decision threshold."""
    if "score" not in predictions.columns:
        raise ValueError("`predictions` must have a `score` column, got "
                         f"{list(predictions.columns)}")
    fig, ax = _axes(ax, (6.5, 4.0))
    bins = np.linspace(0, 1, 21).tolist()
    if by and by in predictions.columns and predictions[by].astype(str).ne("").any():
        for group, part in predictions.groupby(by, sort=True):
            ax.hist(part["score"], bins=bins, alpha=0.55, label=f"{group} (n={len(part)})",
                    color=_DX_COLORS.get(str(group)))
        ax.legend(title=by)
    else:
        ax.hist(predictions["score"], bins=bins, color="tab:blue", label="all")
    ax.axvline(threshold, color="black", ls="--", lw=1)
    ax.text(threshold, ax.get_ylim()[1] * 0.95, f" threshold {threshold:.2f}", fontsize=8)
    ax.set_xlabel("predicted AD score (0 = healthy, 1 = AD)")
    ax.set_ylabel("subjects")
    ax.set_xlim(0, 1)
    ax.set_title(title or f"Predicted scores (n = {len(predictions)})")
    return save_figure(fig, output_file)
