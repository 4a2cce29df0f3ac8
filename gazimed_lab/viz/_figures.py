"""Shared figure helpers: names, colours, figure creation and saving."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gazimed_lab import evaluation as ev

__all__ = ["figure_of", "save_figure"]

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


def figure_of(ax: Axes) -> Figure:
    """Return the (root) Figure that holds ``ax``, also when ``ax`` lies in a SubFigure."""
    fig = ax.get_figure(root=True)
    if fig is None:
        raise ValueError("`ax` must belong to a matplotlib Figure, got an Axes without one")
    return fig


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return figure_of(ax), ax
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
