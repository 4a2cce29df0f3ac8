"""ipywidgets viewers: a slice viewer for subjects and a metrics explorer for runs.

Both return an ``ipywidgets.VBox`` subclass with an ``update()`` method (the
redraw callback, also called by every control) and ``figure`` (the last figure
drawn), so they construct and redraw without a display (e.g. in tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure

from gazimed_lab import evaluation as ev
from gazimed_lab.viz import curves
from gazimed_lab.viz import dashboards as dash
from gazimed_lab.viz.slices import AXIS_NAMES, ImageLike, _canonical, as_image, plot_slice

__all__ = ["MetricsExplorer", "SliceViewer", "metrics_explorer", "slice_viewer"]

PET_ON_MRI = "PET on MRI"
_MRI_KEYS = ("mri", "t1", "t1w")
_PET_KEYS = ("pet", "fdg", "fdg-pet")


def _key(modalities: Mapping[str, Any], names: Sequence[str]) -> str | None:
    return next((k for k in modalities if k.lower() in names), None)


def _show(output: widgets.Output, fig: Figure, html: str | None = None) -> None:
    with output:
        output.clear_output(wait=True)
        if html:
            display(widgets.HTML(html))
        display(fig)


class SliceViewer(widgets.VBox):
    """Slice viewer: subject, modality (incl. PET on MRI), axis, slice and opacity controls."""

    def __init__(self, subjects: Mapping[str, Mapping[str, ImageLike]],
                 figsize: tuple[float, float] = (6.0, 5.5)) -> None:
        self.subjects = {
            str(sid): {m: img for m, img in mods.items() if img is not None and str(img) != ""}
            for sid, mods in subjects.items()
        }
        empty = [sid for sid, mods in self.subjects.items() if not mods]
        if not self.subjects or empty:
            raise ValueError("`subjects` must map subject ids to {modality: image}, got "
                             + (f"no images for {empty}" if empty else "no subjects"))
        self.figsize = figsize
        self.figure: Figure | None = None
        self._cache: dict[tuple[str, str], Any] = {}
        self._busy = False
        first = next(iter(self.subjects))
        self.subject = widgets.Dropdown(options=list(self.subjects), value=first,
                                        description="subject")
        self.modality = widgets.Dropdown(options=self._modalities(first), description="modality")
        self.axis = widgets.ToggleButtons(
            options=[(f"{name} ({a})", a) for name, a in zip(AXIS_NAMES, "xyz")], value="z",
            description="axis")
        self.slice = widgets.IntSlider(min=0, max=1, value=0, description="slice",
                                       continuous_update=False)
        self.opacity = widgets.FloatSlider(min=0.0, max=1.0, step=0.05, value=0.5,
                                           description="PET opacity", continuous_update=False)
        self.output = widgets.Output()
        self._reset_slider()
        for control in (self.subject, self.modality, self.axis, self.slice, self.opacity):
            control.observe(self._changed, names="value")
        super().__init__([widgets.HBox([self.subject, self.modality]), self.axis,
                          widgets.HBox([self.slice, self.opacity]), self.output])
        self.update()

    def _modalities(self, sid: str) -> list[str]:
        mods = list(self.subjects[sid])
        if _key(self.subjects[sid], _MRI_KEYS) and _key(self.subjects[sid], _PET_KEYS):
            mods.append(PET_ON_MRI)
        return mods

    def _volume(self, sid: str, modality: str) -> Any:
        if (sid, modality) not in self._cache:
            self._cache[(sid, modality)] = as_image(self.subjects[sid][modality],
                                                    f"{sid} {modality}")
        return self._cache[(sid, modality)]

    def _base_modality(self) -> str:
        if self.modality.value == PET_ON_MRI:
            return _key(self.subjects[self.subject.value], _MRI_KEYS)  # type: ignore[return-value]
        return str(self.modality.value)

    def _reset_slider(self) -> None:
        data, _ = _canonical(self._volume(self.subject.value, self._base_modality()), "image")
        size = data.shape["xyz".index(self.axis.value)]
        self.slice.max = size - 1
        self.slice.value = size // 2

    def _changed(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if change["owner"] is self.subject:
                current = self.modality.value
                self.modality.options = self._modalities(self.subject.value)
                self.modality.value = (current if current in self.modality.options
                                       else self.modality.options[0])
            if change["owner"] in (self.subject, self.axis, self.modality):
                self._reset_slider()
        finally:
            self._busy = False
        self.update()

    def update(self) -> Figure:
        """Redraw the figure for the current controls and return it."""
        sid, modality = self.subject.value, self.modality.value
        overlay = None
        self.opacity.disabled = modality != PET_ON_MRI
        if modality == PET_ON_MRI:
            mods = self.subjects[sid]
            base = self._volume(sid, _key(mods, _MRI_KEYS))  # type: ignore[arg-type]
            overlay = self._volume(sid, _key(mods, _PET_KEYS))  # type: ignore[arg-type]
        else:
            base = self._volume(sid, modality)
        fig, ax = plt.subplots(figsize=self.figsize)
        plt.close(fig)  # shown through the Output widget only
        plot_slice(base, axis=self.axis.value, index=int(self.slice.value), ax=ax,
                   overlay=overlay, alpha=float(self.opacity.value),
                   cbar_label="MRI intensity (a.u.)" if overlay is not None
                   else f"{modality} intensity (a.u.)")
        ax.set_title(f"{sid} · {modality}\n{ax.get_title()}", fontsize="medium")
        fig.tight_layout()
        self.figure = fig
        _show(self.output, fig)
        return fig


def slice_viewer(subjects: Mapping[str, Mapping[str, ImageLike]],
                 figsize: tuple[float, float] = (6.0, 5.5)) -> SliceViewer:
    """Interactive slice viewer.

    Parameters
    ----------
    subjects
        ``subject_id -> {modality: image or path}``, e.g.
        ``{"sub-001": {"MRI": "mri/sub-001_T1w.nii.gz", "PET": "pet/sub-001_pet.nii.gz"}}``.
        Empty / None entries (missing PET) are left out. "PET on MRI" is offered
        when a subject has an MRI (``mri``/``t1``) and a PET (``pet``/``fdg``) key.
    figsize
        Figure size in inches.

    Returns
    -------
    SliceViewer
        An ``ipywidgets.VBox``; ``.update()`` redraws, ``.figure`` is the last figure.
    """
    return SliceViewer(subjects, figsize)


VIEWS = ("ROC", "precision-recall", "calibration", "predicted vs true", "confusion",
         "subgroups", "learning curves")


class MetricsExplorer(widgets.VBox):
    """Pick a run, a split and a view; shows the metric table with bootstrap CIs and a figure."""

    def __init__(self, run_dirs: Sequence[str | Path] | Mapping[str, str | Path],
                 n_boot: int = 200, seed: int = 0) -> None:
        items = (dict(run_dirs) if isinstance(run_dirs, Mapping)
                 else {Path(d).name: d for d in run_dirs})
        if not items:
            raise ValueError("`run_dirs` must name at least one run folder, got none")
        self.runs = {str(k): Path(v) for k, v in items.items()}
        self.n_boot, self.seed = n_boot, seed
        self.figure: Figure | None = None
        self.summary: pd.DataFrame | None = None
        self._tables: dict[tuple[str, str], pd.DataFrame] = {}
        self._summaries: dict[tuple[str, str, float], pd.DataFrame] = {}
        self.run = widgets.Dropdown(options=list(self.runs), description="run")
        self.split = widgets.ToggleButtons(options=["val", "test"], value="test",
                                           description="split")
        self.view = widgets.Dropdown(options=list(VIEWS), value="ROC", description="metric")
        self.threshold = widgets.FloatSlider(min=0.0, max=1.0, step=0.01, value=0.5,
                                             description="threshold", continuous_update=False)
        self.output = widgets.Output()
        for control in (self.run, self.split, self.view, self.threshold):
            control.observe(lambda _change: self.update(), names="value")
        super().__init__([widgets.HBox([self.run, self.view]),
                          widgets.HBox([self.split, self.threshold]), self.output])
        self.update()

    def _table(self) -> pd.DataFrame:
        key = (self.run.value, self.split.value)
        if key not in self._tables:
            self._tables[key] = ev.read_predictions(self.runs[key[0]], split=key[1])
        return self._tables[key]

    def update(self) -> Figure | None:
        """Redraw the table and figure for the current controls; returns the figure."""
        run_dir, view, thr = self.runs[self.run.value], self.view.value, self.threshold.value
        try:
            if view == "learning curves":
                fig, html = curves.plot_learning_curves(run_dir), None
            else:
                table = self._table()
                key = (self.run.value, self.split.value, thr)
                if key not in self._summaries:
                    self._summaries[key] = ev.metrics_table(table, n_boot=self.n_boot,
                                                            seed=self.seed, threshold=thr)
                self.summary = self._summaries[key]
                html = self.summary.to_html(index=False, float_format="{:.3f}".format)
                plots = {
                    "ROC": lambda: curves.plot_roc(table, n_boot=self.n_boot, threshold=thr),
                    "precision-recall": lambda: curves.plot_pr(table, n_boot=self.n_boot,
                                                             threshold=thr),
                    "calibration": lambda: dash.plot_calibration(table),
                    "predicted vs true": lambda: dash.plot_pred_vs_true(table, threshold=thr),
                    "confusion": lambda: dash.plot_confusion(table, threshold=thr),
                    "subgroups": lambda: dash.plot_subgroups(ev.subgroup_metrics(
                        table, threshold=thr, n_boot=self.n_boot)),
                }
                fig = plots[view]()
        except (FileNotFoundError, ValueError) as exc:
            with self.output:
                self.output.clear_output(wait=True)
                display(widgets.HTML(f"<b>cannot show {view}</b>: {exc}"))
            self.figure = None
            return None
        self.figure = fig
        title = f"<b>{self.run.value}</b> — {self.split.value} split, threshold {thr:.2f}"
        _show(self.output, fig, f"{title}{html or ''}")
        return fig


def metrics_explorer(run_dirs: Sequence[str | Path] | Mapping[str, str | Path],
                     n_boot: int = 200, seed: int = 0) -> MetricsExplorer:
    """Interactive metrics explorer over run folders.

    Parameters
    ----------
    run_dirs
        Run folders (labelled by folder name) or ``label -> folder``.
    n_boot
        Bootstrap resamples for intervals (kept small for interactivity).
    seed
        Bootstrap seed.

    Returns
    -------
    MetricsExplorer
        An ``ipywidgets.VBox``; ``.update()`` redraws, ``.figure`` / ``.summary``
        hold the last figure and metric table.
    """
    return MetricsExplorer(run_dirs, n_boot, seed)
