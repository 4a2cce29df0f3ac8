"""ipywidgets viewers: slices of subjects, the QA table, clinical features, run metrics.

Each returns an ``ipywidgets.VBox`` subclass with an ``update()`` method (the
redraw callback, also called by every control) and ``figure`` (the last figure
drawn), so they construct and redraw without a display (e.g. in tests).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
from matplotlib.figure import Figure

from gazimed_lab import evaluation as ev
from gazimed_lab.viz import curves
from gazimed_lab.viz import dashboards as dash
from gazimed_lab.viz._figures import _DX_COLORS
from gazimed_lab.viz.slices import AXIS_NAMES, ImageLike, _canonical, as_image, plot_slice

__all__ = [
    "FeatureBrowser",
    "MetricsExplorer",
    "QABrowser",
    "SliceViewer",
    "feature_browser",
    "metrics_explorer",
    "qa_browser",
    "slice_viewer",
]

PET_ON_MRI = "PET on MRI"
_MRI_KEYS = ("mri", "t1", "t1w")
_PET_KEYS = ("pet", "fdg", "fdg-pet")


def _key(modalities: Mapping[str, Any], names: Sequence[str]) -> str | None:
    return next((k for k in modalities if k.lower() in names), None)


def _show(output: widgets.Output, fig: Figure, html: str | None = None) -> None:
    """Replace the Output's content with ``html`` and the figure as a PNG image.

    The PNG is made here, so the figure shows whatever matplotlib backend the
    kernel runs (a Figure displayed under ``MPLBACKEND=Agg`` is only its text repr).
    """
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    with output:
        output.clear_output(wait=True)
        if html:
            display(widgets.HTML(html))
        display(Image(data=png.getvalue(), format="png"))


class SliceViewer(widgets.VBox):
    """Slice viewer: subject, modality (incl. overlays on MRI), axis, slice and opacity."""

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
                                           description="overlay opacity",
                                           continuous_update=False)
        self.output = widgets.Output()
        self._reset_slider()
        for control in (self.subject, self.modality, self.axis, self.slice, self.opacity):
            control.observe(self._changed, names="value")
        super().__init__([widgets.HBox([self.subject, self.modality]), self.axis,
                          widgets.HBox([self.slice, self.opacity]), self.output])
        self.update()

    def _overlays(self, sid: str) -> dict[str, tuple[str, str]]:
        """``shown name -> (MRI key, overlay key)``: PET and every map (e.g. saliency) on MRI."""
        mods = self.subjects[sid]
        mri = _key(mods, _MRI_KEYS)
        if mri is None:
            return {}
        pet = _key(mods, _PET_KEYS)
        out = {PET_ON_MRI: (mri, pet)} if pet else {}
        out.update({f"{k} on MRI": (mri, k) for k in mods if k not in (mri, pet)})
        return out

    def _modalities(self, sid: str) -> list[str]:
        return list(self.subjects[sid]) + list(self._overlays(sid))

    def _volume(self, sid: str, modality: str) -> Any:
        if (sid, modality) not in self._cache:
            self._cache[(sid, modality)] = as_image(self.subjects[sid][modality],
                                                    f"{sid} {modality}")
        return self._cache[(sid, modality)]

    def _base_modality(self) -> str:
        pair = self._overlays(self.subject.value).get(str(self.modality.value))
        return pair[0] if pair else str(self.modality.value)

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
        overlay, overlay_key = None, ""
        pair = self._overlays(sid).get(str(modality))
        self.opacity.disabled = pair is None
        if pair is not None:
            base, overlay = self._volume(sid, pair[0]), self._volume(sid, pair[1])
            overlay_key = pair[1]
        else:
            base = self._volume(sid, modality)
        fig, ax = plt.subplots(figsize=self.figsize)
        plt.close(fig)  # shown through the Output widget only
        plot_slice(base, axis=self.axis.value, index=int(self.slice.value), ax=ax,
                   overlay=overlay, alpha=float(self.opacity.value),
                   overlay_label=f"{overlay_key} (a.u.)",
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
        when a subject has an MRI (``mri``/``t1``) and a PET (``pet``/``fdg``) key,
        and "<key> on MRI" for every other key (e.g. a ``saliency`` map).
    figsize
        Figure size in inches.

    Returns
    -------
    SliceViewer
        An ``ipywidgets.VBox``; ``.update()`` redraws, ``.figure`` is the last figure.
    """
    return SliceViewer(subjects, figsize)


ALL_SUBJECTS = "all subjects"
FLAGGED = "flagged"
NOT_FLAGGED = "not flagged"
_SESSION_SEP = " · "
_QA_SHOWN = ["modality", "flags", "grid_action", "brain_coverage", "template_corr",
             "pet_mri_corr", "min", "mean", "max", "nan_count", "file"]


def _split_flags(flags: Any) -> list[str]:
    return [f.strip() for f in str(flags or "").split(";") if f.strip()]


class QABrowser(widgets.VBox):
    """The QA table by subject: filter by flag, pick a subject, see its QA rows and slices.

    With sessions (a ``session_id`` column) the unit is one session of a subject, picked as
    ``<subject> · <session>``: its MRI and PET, as training reads them together.
    """

    def __init__(self, qa: pd.DataFrame, figsize: tuple[float, float] = (10.0, 4.6)) -> None:
        missing = [c for c in ("subject_id", "modality", "file", "flags") if c not in qa.columns]
        if missing:
            raise ValueError(
                "`qa` must be the QA table of gazimed_lab.data.qa.run_qa (report.table), got "
                f"a table without {missing}")
        if qa.empty:
            raise ValueError("`qa` must have at least one row, got an empty QA table")
        self.qa = qa.assign(flags=qa["flags"].fillna("").astype(str))
        self.sessions = "session_id" in qa.columns
        unit = self.qa["subject_id"].astype(str)
        if self.sessions:
            unit = unit + _SESSION_SEP + self.qa["session_id"].astype(str)
        self._unit = unit
        self.figsize = figsize
        self.figure: Figure | None = None
        self._cache: dict[str, Any] = {}
        flags = sorted({f for value in self.qa["flags"] for f in _split_flags(value)})
        self.flag = widgets.Dropdown(options=[ALL_SUBJECTS, FLAGGED, NOT_FLAGGED, *flags],
                                     value=FLAGGED if flags else ALL_SUBJECTS,
                                     description="show")
        self.subject = widgets.Dropdown(options=self._matching(), description="subject")
        self.axis = widgets.ToggleButtons(
            options=[(f"{name} ({a})", a) for name, a in zip(AXIS_NAMES, "xyz")], value="z",
            description="axis")
        self.slice = widgets.FloatSlider(min=0.0, max=1.0, step=0.02, value=0.5,
                                         description="slice (0-1)", continuous_update=False)
        self.count = widgets.HTML()
        self.output = widgets.Output()
        self._busy = False
        self.flag.observe(self._filter_changed, names="value")
        self.subject.observe(self._subject_changed, names="value")
        for control in (self.axis, self.slice):
            control.observe(lambda _change: self.update(), names="value")
        super().__init__([widgets.HBox([self.flag, self.subject, self.count]), self.axis,
                          self.slice, self.output])
        self.update()

    def _matching(self) -> list[str]:
        """Subject ids (or ``subject · session``) in QA table order that pass the flag filter."""
        chosen = self.flag.value if hasattr(self, "flag") else ALL_SUBJECTS
        per_subject = self.qa.groupby(self._unit, sort=False)["flags"].agg(
            lambda f: {x for value in f for x in _split_flags(value)})
        if chosen == FLAGGED:
            keep = per_subject[per_subject.map(bool)]
        elif chosen == NOT_FLAGGED:
            keep = per_subject[~per_subject.map(bool)]
        elif chosen == ALL_SUBJECTS:
            keep = per_subject
        else:
            keep = per_subject[per_subject.map(lambda s: chosen in s)]
        return [str(s) for s in keep.index]

    def _filter_changed(self, _change: dict[str, Any]) -> None:
        self._busy = True
        try:
            self.subject.options = self._matching()  # selects the first (None when empty)
        finally:
            self._busy = False
        self.update()

    def _subject_changed(self, _change: dict[str, Any]) -> None:
        if not self._busy:
            self.update()

    def _image(self, path: str) -> tuple[Any, tuple[int, ...]]:
        """Read the image once; return it with its RAS shape."""
        if path not in self._cache:
            image = as_image(path, "image")
            self._cache[path] = (image, _canonical(image, "image")[0].shape)
        return self._cache[path]

    def update(self) -> Figure | None:
        """Redraw the subject's QA rows and slices; return the figure (None: no subject)."""
        n = len(self.subject.options)
        what = "session" if self.sessions else "subject"
        self.count.value = f"{n} {what}{'s' if n != 1 else ''}"
        sid = self.subject.value
        if sid is None:
            with self.output:
                self.output.clear_output(wait=True)
                display(widgets.HTML(f"<b>no {what} is {html.escape(self.flag.value)}</b>"))
            self.figure = None
            return None
        rows = self.qa[self._unit == str(sid)]
        rows = rows.sort_values("modality", key=lambda m: m.str.lower().map({"mri": 0, "pet": 1}),
                                kind="stable")  # MRI first, as everywhere else
        shown = rows[[c for c in _QA_SHOWN if c in rows.columns]].assign(
            file=rows["file"].map(lambda f: Path(str(f)).name if f else ""))  # the path is long
        table = shown.to_html(index=False, float_format="{:.3f}".format, na_rep="")
        fig, axes = plt.subplots(1, len(rows), figsize=self.figsize, squeeze=False)
        plt.close(fig)  # shown through the Output widget only
        dim = "xyz".index(self.axis.value)
        for ax, (_, row) in zip(axes.flat, rows.iterrows()):
            modality = str(row["modality"]).upper()
            note = "; ".join(_split_flags(row["flags"])) or "no flags"
            try:
                image, shape = self._image(str(row["file"])) if row["file"] else (None, ())
            except ValueError as exc:  # unreadable: the QA table says why
                image, note = None, f"{note}\n{exc}"[:200]
            if image is None:
                ax.text(0.5, 0.5, f"{modality}: no image\n{note}", ha="center", va="center",
                        wrap=True, fontsize=9)
                ax.set_axis_off()
                continue
            index = round(float(self.slice.value) * (shape[dim] - 1))
            plot_slice(image, axis=self.axis.value, index=index, ax=ax,
                       cbar_label=f"{modality} intensity (a.u.)")
            ax.set_title(f"{modality} · {note}\n{ax.get_title()}", fontsize="small")
        fig.suptitle(f"{sid}", fontweight="bold")
        fig.tight_layout()
        self.figure = fig
        _show(self.output, fig, f"<b>{html.escape(str(sid))}</b>{table}")
        return fig


def qa_browser(qa: pd.DataFrame, figsize: tuple[float, float] = (10.0, 4.6)) -> QABrowser:
    """Interactive browser of the QA table: filter by flag, pick a subject, see its slices.

    Parameters
    ----------
    qa
        The per-volume QA table, ``run_qa(...).table`` (columns ``subject_id``,
        ``modality``, ``file``, ``flags``, ...).
    figsize
        Figure size in inches (one panel per modality).

    Returns
    -------
    QABrowser
        An ``ipywidgets.VBox``: ``flag`` (all / flagged / not flagged / one flag),
        ``subject``, ``axis`` and ``slice`` (a fraction of the axis) controls;
        ``.update()`` redraws, ``.figure`` is the last figure.
    """
    return QABrowser(qa, figsize)


NO_GROUPS = "(none)"


class FeatureBrowser(widgets.VBox):
    """One clinical feature at a time: histogram by group and a per-group summary."""

    def __init__(self, table: pd.DataFrame, features: Sequence[str],
                 by: Sequence[str] = ("diagnosis", "site", "sex", "split"),
                 figsize: tuple[float, float] = (6.5, 3.8)) -> None:
        shown = [str(f) for f in features if f in table.columns]
        if not shown:
            raise ValueError(
                "`features` must name columns of `table`, got none of "
                f"{list(features)[:5]} in {list(table.columns)[:8]}")
        self.table = table
        self.figsize = figsize
        self.figure: Figure | None = None
        groups = [c for c in by
                  if c in table.columns and table[c].replace("", np.nan).notna().any()]
        self.feature = widgets.Dropdown(options=shown, value=shown[0], description="feature")
        self.by = widgets.Dropdown(options=[*groups, NO_GROUPS], description="colour by")
        self.bins = widgets.IntSlider(min=5, max=60, step=1, value=20, description="bins",
                                      continuous_update=False)
        self.output = widgets.Output()
        for control in (self.feature, self.by, self.bins):
            control.observe(lambda _change: self.update(), names="value")
        super().__init__([widgets.HBox([self.feature, self.by]), self.bins, self.output])
        self.update()

    def update(self) -> Figure:
        """Redraw the histogram and the summary for the current controls; return the figure."""
        feature, by = str(self.feature.value), str(self.by.value)
        values = pd.to_numeric(self.table[feature], errors="coerce")
        labels = (pd.Series("all", index=self.table.index) if by == NO_GROUPS
                  else self.table[by].replace("", np.nan).fillna("missing").astype(str))
        fig, ax = plt.subplots(figsize=self.figsize)
        plt.close(fig)  # shown through the Output widget only
        observed = values.dropna()
        bins: int | list[float] = int(self.bins.value)
        if len(observed):  # one set of edges for every group
            bins = np.histogram_bin_edges(observed, bins=bins).tolist()
        for group in sorted(labels.unique()):
            chosen = values[labels == group].dropna()
            ax.hist(chosen, bins=bins, alpha=0.5, label=f"{group} (n={len(chosen)})",
                    color=_DX_COLORS.get(group))
        n_missing = int(values.isna().sum())
        ax.set(title=f"{feature}" + (f" ({n_missing} missing)" if n_missing else ""),
               xlabel="value (data-dictionary units)", ylabel="subjects")
        ax.legend(title=None if by == NO_GROUPS else by, fontsize=8)
        fig.tight_layout()
        summary = values.groupby(labels).agg(["count", "mean", "std", "min", "max"])
        summary.insert(1, "missing", values.isna().groupby(labels).sum().astype(int))
        self.figure = fig
        _show(self.output, fig, summary.to_html(float_format="{:.3g}".format))
        return fig


def feature_browser(table: pd.DataFrame, features: Sequence[str],
                    by: Sequence[str] = ("diagnosis", "site", "sex", "split"),
                    figsize: tuple[float, float] = (6.5, 3.8)) -> FeatureBrowser:
    """Interactive browser of clinical feature distributions.

    Parameters
    ----------
    table
        One row per subject, e.g. ``read_manifest(manifest).table``.
    features
        Feature columns offered (those absent from ``table`` are left out).
    by
        Columns offered for colouring (those present and not empty), plus "(none)".
    figsize
        Figure size in inches.

    Returns
    -------
    FeatureBrowser
        An ``ipywidgets.VBox``: ``feature``, ``by`` and ``bins`` controls;
        ``.update()`` redraws, ``.figure`` is the last figure.
    """
    return FeatureBrowser(table, features, by, figsize)


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
