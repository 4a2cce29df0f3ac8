"""External evaluation: score a cohort the models never saw, compare them, write a report.

:func:`evaluate_external` (the ``gazimed-lab evaluate`` command) scores a manifest with
one or more checkpoints (and takes precomputed predictions, e.g. of a baseline), then
writes into its output folder:

- ``predictions/<name>.csv``: each model's predictions table;
- ``metrics.csv``: every metric of every model with its bootstrap CI (long table:
  ``model``, ``kind``, ``metric``, ``value``, ``low``, ``high``, ``n_skipped``, ``n``,
  ``n_pos``), plus the oracle rows (``kind = "oracle"``, AUROC) when the manifest has a
  ``truth.csv`` beside it (:mod:`gazimed_lab.evaluation.oracle`);
- ``summary.csv``: one row per model / oracle, the metrics side by side;
- ``differences.csv``: paired-bootstrap AUROC differences (same resampled subjects for
  both) between every two models, and of each model against the oracle of every input;
- ``oracle.csv``: the oracle table on the scored subjects (with a truth file);
- ``figures/``: ``roc.png`` (all models, the oracle dashed), ``auroc.png`` (AUROC with
  CIs and the paired differences), ``<name>_calibration.png`` and ``<name>_dashboard.png``
  (ROC, calibration, predicted vs true, confusion);
- ``report.md`` (the tables as Markdown) and ``evaluation.json`` (inputs and settings).

Examples
--------
>>> from gazimed_lab.evaluation.external import evaluate_external
>>> result = evaluate_external("external/manifest.csv", {"full": "runs/demo/best.ckpt"},
...                            out_dir="runs/external")  # doctest: +SKIP
>>> result.summary[["model", "auroc", "auroc_low", "auroc_high"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gazimed_lab.evaluation.bootstrap import metrics_table, paired_bootstrap
from gazimed_lab.evaluation.oracle import find_truth, oracle_predictions, oracle_table
from gazimed_lab.evaluation.predictions import PredictionsLike, read_predictions

__all__ = [
    "DEFAULT_METRICS",
    "ORACLE_REFERENCE",
    "ExternalEvaluation",
    "evaluate_external",
    "named_models",
    "parse_named",
    "plot_auroc_comparison",
    "plot_model_dashboard",
]

#: Metrics of each model (bootstrap CIs); the oracle rows get the AUROC only.
DEFAULT_METRICS = ("auroc", "average_precision", "accuracy", "balanced_accuracy", "recall",
                   "specificity", "f1", "mae", "r2", "pearson", "brier")
#: The oracle subset each model is compared with (no model can beat it, whatever its inputs).
ORACLE_REFERENCE = "all+demographics"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class ExternalEvaluation:
    """What :func:`evaluate_external` computed (and wrote, when it had a folder)."""

    predictions: dict[str, pd.DataFrame]
    metrics: pd.DataFrame
    summary: pd.DataFrame
    differences: pd.DataFrame
    oracle: pd.DataFrame | None = None
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def parse_named(spec: str | Path) -> tuple[str | None, Path]:
    """Split ``NAME=PATH`` into its name and path (``PATH`` alone: no name).

    An argument whose whole text is an existing path is a path even if it holds ``=``.
    """
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        if not _NAME.match(name):
            raise ValueError(f"a model name must be letters, digits, '.', '_', '+' or '-', "
                             f"got `{name}` (in `{text}`)")
        return name, Path(path)
    return None, Path(text)


def _default_name(path: Path) -> str:
    """``runs/<run>/checkpoints/best.ckpt`` -> ``<run>``; else the file name's stem."""
    name = path.stem
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        name = path.parent.parent.name
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_.") or "model"


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    taken.add(out)
    return out


def named_models(items: Mapping[str, Any] | Sequence[Any] | None,
                 taken: set[str] | None = None) -> list[tuple[str, Any]]:
    """``(name, value)`` pairs of a mapping or of ``[NAME=]PATH`` strings, names checked.

    A path without a name is named by :func:`_default_name` (its run folder); names must
    be unique (also against ``taken``, which collects them).
    """
    taken = set() if taken is None else taken
    if items is None:
        return []
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if isinstance(item, pd.DataFrame):
                raise ValueError("a predictions DataFrame must be given with a name "
                                 "(a mapping name -> table), got a bare DataFrame")
            name, path = parse_named(item)
            pairs.append((name or _default_name(path), path))
    out = []
    for name, value in pairs:
        if not _NAME.match(name):
            raise ValueError(f"a model name must be letters, digits, '.', '_', '+' or '-', "
                             f"got `{name}`")
        if name in taken:
            raise ValueError(f"model names must be unique, got `{name}` twice")
        taken.add(name)
        out.append((name, value))
    return out


def _check_same_subjects(tables: dict[str, pd.DataFrame]) -> None:
    (first, ref), *rest = tables.items()
    ref_ids = set(ref["subject_id"])
    targets = ref.set_index("subject_id")["target"]
    for name, table in rest:
        ids = set(table["subject_id"])
        if ids != ref_ids:
            missing, extra = sorted(ref_ids - ids), sorted(ids - ref_ids)
            raise ValueError(
                f"every model must score the same subjects, got `{name}` without "
                f"{len(missing)} of `{first}`'s (e.g. {missing[:3]}) and with {len(extra)} "
                f"others (e.g. {extra[:3]}) ({table.attrs.get('source', name)})")
        diff = np.abs(table.set_index("subject_id")["target"].reindex(targets.index)
                      - targets).to_numpy(float)
        if np.nanmax(diff) > 1e-6:
            sid = targets.index[int(np.nanargmax(diff))]
            raise ValueError(
                f"every model's `target` must agree, got a different target for {sid} in "
                f"`{name}` than in `{first}` ({table.attrs.get('source', name)})")


def _summary(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, kind), group in metrics.groupby(["model", "kind"], sort=False):
        row: dict[str, Any] = {"model": model, "kind": kind, "n": int(group["n"].iloc[0]),
                               "n_pos": int(group["n_pos"].iloc[0])}
        for rec in group.itertuples(index=False):
            row[rec.metric] = rec.value
            row[f"{rec.metric}_low"] = rec.low
            row[f"{rec.metric}_high"] = rec.high
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_ci(value: float, low: float, high: float, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f.format(value)
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def _report(manifest: Path, summary: pd.DataFrame, differences: pd.DataFrame, ci: float,
            n_boot: int, seed: int, threshold: float) -> str:
    pct = f"{ci:.0%}"
    lines = [f"# External evaluation: {manifest}", "",
             f"{int(summary['n'].iloc[0])} subjects, {int(summary['n_pos'].iloc[0])} with "
             f"`target > 0.5`. Intervals: {pct} subject-level bootstrap ({n_boot} stratified "
             f"resamples, seed {seed}); threshold {threshold:g} for the threshold metrics.", "",
             f"| model | kind | AUROC [{pct} CI] | balanced accuracy | MAE | Brier |",
             "|---|---|---|---|---|---|"]
    for row in summary.to_dict("records"):
        cells = [_fmt_ci(row["auroc"], row["auroc_low"], row["auroc_high"])]
        for metric in ("balanced_accuracy", "mae", "brier"):
            value = row.get(metric, float("nan"))
            cells.append(f"{value:.3f}" if value is not None and np.isfinite(value) else "")
        lines.append(f"| {row['model']} | {row['kind']} | " + " | ".join(cells) + " |")
    if len(differences):
        lines += ["", f"Paired differences (same resampled subjects for both; {pct} CI):", "",
                  "| a | b | AUROC a - b | mean of resamples | p (two-sided) |",
                  "|---|---|---|---|---|"]
        for row in differences.to_dict("records"):
            lines.append(f"| {row['model_a']} | {row['model_b']} | "
                         f"{_fmt_ci(row['difference'], row['low'], row['high'], True)} | "
                         f"{row['mean']:+.3f} | {row['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def plot_auroc_comparison(
    summary: pd.DataFrame, differences: pd.DataFrame | None = None,
    axes: Sequence[Axes] | None = None, output_file: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """AUROC with its CI per model and oracle row; paired AUROC differences beside it.

    Parameters
    ----------
    summary
        :attr:`ExternalEvaluation.summary` (``model``, ``kind``, ``auroc``,
        ``auroc_low``, ``auroc_high``).
    differences
        :attr:`ExternalEvaluation.differences`; None or empty: one panel.
    axes
        One Axes (AUROC only) or two (AUROC, differences).
    output_file, title
        File to save; title of the AUROC panel.
    """
    from gazimed_lab.viz._figures import _new_figure, save_figure

    n_diff = 0 if differences is None else len(differences)
    two = n_diff > 0
    if axes is None:
        n = max(len(summary), n_diff)
        fig, grid = _new_figure((11.5 if two else 6.0, 1.2 + 0.42 * n), ncols=2 if two else 1,
                                squeeze=False)
        panels = list(grid[0])
    else:
        panels = list(axes)
        fig = panels[0].figure
    ax = panels[0]
    y = np.arange(len(summary))[::-1]
    for yi, row in zip(y, summary.to_dict("records")):
        oracle = row["kind"] == "oracle"
        lo, hi = row["auroc_low"], row["auroc_high"]
        err = [[row["auroc"] - lo], [hi - row["auroc"]]] if np.isfinite(lo) else None
        ax.errorbar(row["auroc"], yi, xerr=err, fmt="s" if oracle else "o", capsize=3,
                    color="grey" if oracle else "C0", mfc="white" if oracle else "C0")
        ax.text(1.005, yi, f"{row['auroc']:.3f}", va="center", fontsize="small",
                transform=ax.get_yaxis_transform())
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(y, list(summary["model"]))
    ax.set(xlim=(max(0.0, np.nanmin(summary["auroc_low"].fillna(summary["auroc"])) - 0.05), 1.0),
           xlabel="AUROC (target > 0.5), bootstrap CI", title=title or
           "AUROC on the external cohort (squares: oracle)")
    ax.grid(alpha=0.3, axis="x")
    if differences is not None and len(differences) and len(panels) > 1:
        ax2 = panels[1]
        y2 = np.arange(len(differences))[::-1]
        for yi, row in zip(y2, differences.to_dict("records")):
            err = [[row["difference"] - row["low"]], [row["high"] - row["difference"]]]
            color = "C2" if row["low"] > 0 else ("C3" if row["high"] < 0 else "C7")
            ax2.errorbar(row["difference"], yi, xerr=err, fmt="o", capsize=3, color=color)
        ax2.axvline(0.0, color="black", lw=1)
        ax2.set_yticks(y2, [f"{a} − {b}" for a, b in
                            zip(differences["model_a"], differences["model_b"])])
        ax2.set(xlabel="AUROC difference, paired bootstrap CI",
                title="Paired differences (green: > 0, red: < 0)")
        ax2.grid(alpha=0.3, axis="x")
    if axes is None:
        fig.tight_layout()
    return save_figure(fig, output_file)


def plot_model_dashboard(
    df: PredictionsLike, name: str = "model", n_boot: int = 1000, seed: int = 0,
    threshold: float = 0.5, axes: Sequence[Axes] | None = None,
    output_file: str | Path | None = None,
) -> Figure:
    """One model on one cohort: ROC, calibration, predicted vs true and confusion (2 x 2).

    Parameters
    ----------
    df
        Predictions table (DataFrame, CSV path or run folder).
    name
        The model's name (figure title).
    n_boot, seed
        Bootstrap of the ROC band.
    threshold
        Decision threshold (operating point, confusion matrix).
    axes
        Four Axes to draw into (ROC, calibration, predicted vs true, confusion).
    output_file
        File to save.
    """
    from gazimed_lab.viz import plot_calibration, plot_confusion, plot_pred_vs_true, plot_roc
    from gazimed_lab.viz._figures import _new_figure, save_figure

    table = read_predictions(df)
    if axes is None:
        fig, grid = _new_figure((11.0, 10.0), nrows=2, ncols=2)
        panels = list(np.ravel(grid))
    else:
        panels = list(axes)
        fig = panels[0].figure
    plot_roc({name: table}, n_boot=n_boot, seed=seed, threshold=threshold, ax=panels[0])
    plot_calibration(table, axes=panels[1])
    plot_pred_vs_true(table, ax=panels[2], threshold=threshold)
    plot_confusion(table, threshold=threshold, ax=panels[3])
    fig.suptitle(f"{name}: {len(table)} subjects", fontsize="large")
    if axes is None:
        fig.tight_layout()
    return save_figure(fig, output_file)


def _figures(out: Path, tables: dict[str, pd.DataFrame], oracle_ref: pd.DataFrame | None,
             summary: pd.DataFrame, differences: pd.DataFrame, n_boot: int, seed: int,
             threshold: float) -> dict[str, Path]:
    from gazimed_lab.viz import plot_calibration, plot_roc, save_figure

    folder = out / "figures"
    files: dict[str, Path] = {}
    curves: dict[str, pd.DataFrame] = dict(tables)
    if oracle_ref is not None:
        curves[f"oracle ({ORACLE_REFERENCE})"] = oracle_ref
    fig = plot_roc(curves, ci=0.95 if len(curves) <= 3 else None, n_boot=n_boot, seed=seed,
                   threshold=None, title="ROC on the external cohort")
    ax = fig.axes[0]
    for line in ax.lines:
        if str(line.get_label()).startswith("oracle ("):
            line.set_linestyle("--")
    ax.legend(loc="lower right", fontsize="small")
    files["roc"] = folder / "roc.png"
    save_figure(fig, files["roc"])
    files["auroc"] = folder / "auroc.png"
    plot_auroc_comparison(summary, differences, output_file=files["auroc"])
    for name, table in tables.items():
        files[f"{name}_calibration"] = folder / f"{name}_calibration.png"
        plot_calibration(table, output_file=files[f"{name}_calibration"],
                         title=f"{name}: calibration")
        files[f"{name}_dashboard"] = folder / f"{name}_dashboard.png"
        plot_model_dashboard(table, name, n_boot=n_boot, seed=seed, threshold=threshold,
                             output_file=files[f"{name}_dashboard"])
    return files


def evaluate_external(
    manifest: str | Path,
    checkpoints: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    predictions: Mapping[str, PredictionsLike] | Sequence[str | Path] | None = None,
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    threshold: float = 0.5,
    metrics: Sequence[str] = DEFAULT_METRICS,
    oracle: bool = True,
    figures: bool = True,
) -> ExternalEvaluation:
    """Score a cohort the models never saw; metrics with CIs, paired differences, oracle.

    Parameters
    ----------
    manifest
        The external cohort's manifest (targets required).
    checkpoints
        Checkpoints to score it with: a mapping name -> path, or paths / ``NAME=PATH``
        strings (default name: the run folder of ``<run>/checkpoints/*.ckpt``, else the
        file's stem). Scored with :func:`gazimed_lab.runner.predict_manifest`.
    predictions
        Precomputed predictions on the same subjects (e.g. a baseline): a mapping
        name -> table / CSV, or ``NAME=CSV`` strings.
    out_dir
        Folder for the files listed in the module docstring (None: write nothing).
    n_boot, seed, ci
        Subject-level bootstrap (stratified) for every interval; the same seed gives
        the same resamples for every model, the paired differences included.
    threshold
        Decision threshold of the threshold metrics.
    metrics
        Metric names (``gazimed_lab.evaluation.METRICS``) for each model.
    oracle
        Add the oracle rows when ``truth.csv`` lies beside the manifest.
    figures
        Write the figures (with ``out_dir``).

    Returns
    -------
    ExternalEvaluation
        Predictions per model, the long metrics table, the summary, the paired
        differences, the oracle table (or None) and the files written.

    Raises
    ------
    ValueError
        No model given, a name repeats, or the models score different subjects / targets.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"`manifest` must be an existing CSV file, got {manifest}")
    taken: set[str] = set()
    ckpts = named_models(checkpoints, taken)
    given = named_models(predictions, taken)
    if not ckpts and not given:
        raise ValueError("evaluation needs at least one model: a checkpoint (--ckpt) or a "
                         "predictions table (--predictions NAME=CSV), got none")
    tables: dict[str, pd.DataFrame] = {}
    kinds: dict[str, str] = {}
    if ckpts:
        from gazimed_lab.runner import predict_manifest

        for name, path in ckpts:
            if not Path(path).is_file():
                raise FileNotFoundError(f"checkpoint must be an existing file, got {path} "
                                        f"(model `{name}`)")
            raw = predict_manifest(path, manifest)
            raw.attrs["source"] = f"{path} on {manifest}"
            tables[name] = read_predictions(raw)
            kinds[name] = "checkpoint"
    for name, value in given:
        tables[name] = read_predictions(value)
        kinds[name] = "predictions"
    _check_same_subjects(tables)

    rows = []
    for name, table in tables.items():
        part = metrics_table(table, tuple(metrics), n_boot=n_boot, ci=ci, seed=seed,
                             threshold=threshold)
        part.insert(0, "kind", kinds[name])
        part.insert(0, "model", name)
        part["n"] = len(table)
        part["n_pos"] = int((table["target"] > 0.5).sum())
        rows.append(part)

    reference = next(iter(tables.values()))
    truth = find_truth(manifest) if oracle else None
    oracle_rows: pd.DataFrame | None = None
    oracle_ref: pd.DataFrame | None = None
    if truth is not None:
        oracle_rows = oracle_table(truth, targets=reference, n_boot=n_boot, ci=ci, seed=seed)
        oracle_ref = oracle_predictions(truth, ORACLE_REFERENCE, targets=reference)
        rows.append(pd.DataFrame({
            "model": "oracle: " + oracle_rows["subset"], "kind": "oracle", "metric": "auroc",
            "value": oracle_rows["auroc"], "low": oracle_rows["low"],
            "high": oracle_rows["high"], "n_skipped": 0, "n": oracle_rows["n"],
            "n_pos": oracle_rows["n_pos"]}))
    metric_long = pd.concat(rows, ignore_index=True)
    summary = _summary(metric_long)

    pairs: list[tuple[str, str, PredictionsLike, PredictionsLike]] = []
    names = list(tables)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs.append((a, b, tables[a], tables[b]))
    if oracle_ref is not None:
        for a in names:
            pairs.append((a, f"oracle: {ORACLE_REFERENCE}", tables[a], oracle_ref))
    diff_rows = []
    for a, b, ta, tb in pairs:
        res = paired_bootstrap(ta, tb, "auroc", n_boot=n_boot, ci=ci, seed=seed)
        diff_rows.append({"model_a": a, "model_b": b, "metric": "auroc",
                          "difference": res.difference, "mean": res.mean, "low": res.low,
                          "high": res.high, "p_value": res.p_value, "n": res.n,
                          "n_boot": res.n_boot, "n_skipped": res.n_skipped})
    differences = pd.DataFrame(diff_rows, columns=[
        "model_a", "model_b", "metric", "difference", "mean", "low", "high", "p_value", "n",
        "n_boot", "n_skipped"])

    result = ExternalEvaluation(tables, metric_long, summary, differences, oracle_rows)
    if out_dir is None:
        return result
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, table in tables.items():
        files[f"predictions/{name}"] = out / "predictions" / f"{name}.csv"
        table.to_csv(files[f"predictions/{name}"], index=False)
    for key, frame in (("metrics", metric_long), ("summary", summary),
                       ("differences", differences), ("oracle", oracle_rows)):
        if frame is not None:
            files[key] = out / f"{key}.csv"
            frame.to_csv(files[key], index=False)
    files["report"] = out / "report.md"
    files["report"].write_text(_report(manifest, summary, differences, ci, n_boot, seed,
                                       threshold), encoding="utf-8")
    settings = {
        "manifest": str(manifest), "truth": str(truth) if truth else None,
        "checkpoints": {name: str(path) for name, path in ckpts},
        "predictions": {name: (str(v) if not isinstance(v, pd.DataFrame) else "DataFrame")
                        for name, v in given},
        "n_boot": n_boot, "seed": seed, "ci": ci, "threshold": threshold,
        "metrics": list(metrics), "oracle_reference": ORACLE_REFERENCE if truth else None,
    }
    files["evaluation"] = out / "evaluation.json"
    files["evaluation"].write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    if figures:
        files.update({f"figures/{k}": v for k, v in _figures(
            out, tables, oracle_ref, summary, differences, n_boot, seed, threshold).items()})
    result.out_dir, result.files = out, files
    return result
