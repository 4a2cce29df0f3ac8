"""Figures: metric dashboards (matplotlib), brain slices (nilearn), ipywidgets viewers.

Every plot function returns a matplotlib Figure, takes ``ax``/``axes``/``figure``
to draw into and ``output_file`` to save, and never calls ``plt.show()``.
"""

from __future__ import annotations

from gazimed_lab.viz._figures import save_figure
from gazimed_lab.viz.cohort import (
    plot_feature_distributions,
    plot_missingness,
    plot_score_distribution,
    plot_split_balance,
)
from gazimed_lab.viz.curves import plot_learning_curves, plot_pr, plot_roc
from gazimed_lab.viz.cv import plot_cv_folds
from gazimed_lab.viz.dashboards import (
    plot_calibration,
    plot_confusion,
    plot_pred_vs_true,
    plot_run_comparison,
    plot_subgroups,
)
from gazimed_lab.viz.regions import plot_region_outliers, plot_region_report
from gazimed_lab.viz.slices import (
    as_image,
    image_brain_mask,
    plot_brain_outline_on_template,
    plot_map_on_template,
    plot_mosaic,
    plot_orthogonal,
    plot_pet_on_mri,
    plot_slice,
    template_image,
)
from gazimed_lab.viz.widgets import feature_browser, metrics_explorer, qa_browser, slice_viewer

__all__ = [
    "as_image",
    "feature_browser",
    "image_brain_mask",
    "metrics_explorer",
    "plot_brain_outline_on_template",
    "plot_calibration",
    "plot_confusion",
    "plot_cv_folds",
    "plot_feature_distributions",
    "plot_learning_curves",
    "plot_map_on_template",
    "plot_missingness",
    "plot_mosaic",
    "plot_orthogonal",
    "plot_pet_on_mri",
    "plot_pr",
    "plot_pred_vs_true",
    "plot_region_outliers",
    "plot_region_report",
    "plot_roc",
    "plot_run_comparison",
    "plot_score_distribution",
    "plot_slice",
    "plot_split_balance",
    "plot_subgroups",
    "qa_browser",
    "save_figure",
    "slice_viewer",
    "template_image",
]
