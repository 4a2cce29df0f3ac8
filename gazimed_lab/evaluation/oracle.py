"""The oracle: the best score any model could reach on a synthetic cohort, from its truth.

A generated cohort has ``truth.csv`` beside its manifest (see
:func:`gazimed_lab.data.synthetic.make_synthetic_cohort`). The target ``s`` reaches the
inputs only through noisy *views*: the clinical view ``s_clin = s + N(0, 0.25)`` (every
clinical score sees it, each with its own extra noise), the MRI view ``s_mri`` and the
PET view ``s_pet`` (``clip(s + N(0, 0.3), 0, 1)``, independent), plus two weak views
drawn from ``s`` itself: ``age`` and ``education_years``. A model sees a view only
through its inputs, with more noise, so the best possible ranking of
``target > 0.5`` from a set of views is an upper bound (a *ceiling*) for any model
that uses those inputs.

For Gaussian views of ``s`` with known noise SDs the likelihood depends on the views
only through the precision-weighted mean ``m`` (precision ``P``), and
``P(s > 0.5 | views)`` is increasing in ``m``: ranking by ``m`` is optimal for AUROC.
``method="gaussian"`` returns ``Phi((m - 0.5) * sqrt(P))``, the posterior probability
under a flat prior (monotone in ``m`` when every subject has the same views, and
comparable across subjects when some lack PET). ``method="posterior"`` integrates the
generator's own prior of ``s`` (its beta mixture) and the exact view likelihoods
(clipping of the image views at 0 and 1, of age at 55 and 90, education rounded to
years): the Bayes-optimal score. The two differ by about 0.001 AUROC.

Examples
--------
>>> from gazimed_lab.evaluation.oracle import oracle_table
>>> oracle_table("cohort/manifest.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from scipy import special, stats

from gazimed_lab.data.synthetic_clinical import (
    AGE_MODEL,
    CLINICAL_VIEW_SD,
    EDUCATION_MODEL,
    IMAGE_VIEW_SD,
    S_MIXTURE,
    S_RANGE,
)
from gazimed_lab.evaluation.bootstrap import bootstrap_ci
from gazimed_lab.evaluation.metrics import metric_value

__all__ = [
    "DEFAULT_SUBSETS",
    "VIEWS",
    "TruthLike",
    "find_truth",
    "oracle_predictions",
    "oracle_scores",
    "oracle_table",
    "parse_views",
    "read_truth",
]

TruthLike = Union[pd.DataFrame, str, Path]  # noqa: UP007 (runtime alias, py3.10)

#: View name -> ``truth.csv`` column.
VIEWS: dict[str, str] = {
    "clinical": "s_clin",
    "mri": "s_mri",
    "pet": "s_pet",
    "age": "age",
    "education": "education_years",
}
_ALIASES: dict[str, tuple[str, ...]] = {
    "all": ("clinical", "mri", "pet"),
    "demographics": ("age", "education"),
}
#: The oracle rows of :func:`oracle_table`: name -> what a model with those inputs sees.
DEFAULT_SUBSETS: dict[str, str] = {
    "clinical": "the clinical view only",
    "mri": "the MRI view only",
    "pet": "the PET view only",
    "mri+pet": "both image views",
    "all": "the clinical, MRI and PET views",
    "clinical+mri+demographics": "what the manifest's clinical columns carry (regional "
                                 "volumes see the MRI view; age, education)",
    "all+demographics": "every input (all views, age, education)",
}
_TRUTH_FILE = "truth.csv"
_N_GRID = 990  # cells of width 0.001 on S_RANGE: 0.5 is a cell edge


def find_truth(manifest: str | Path) -> Path | None:
    """Return the ``truth.csv`` beside a manifest (or in a cohort folder), else None."""
    path = Path(manifest)
    candidate = path / _TRUTH_FILE if path.is_dir() else path.parent / _TRUTH_FILE
    return candidate if candidate.is_file() else None


def read_truth(source: TruthLike) -> pd.DataFrame:
    """Read and check a truth table.

    Parameters
    ----------
    source
        A DataFrame, a ``truth.csv`` path, a manifest path (its sibling ``truth.csv``)
        or a cohort folder.

    Returns
    -------
    pandas.DataFrame
        A copy with ``subject_id`` as str; ``attrs["source"]`` names the file.

    Raises
    ------
    FileNotFoundError
        When no ``truth.csv`` is found.
    ValueError
        When a column is missing, a subject repeats or a value is not a number.
    """
    if isinstance(source, pd.DataFrame):
        table, where = source.copy(), str(source.attrs.get("source", "DataFrame"))
    else:
        path = Path(source)
        if path.name != _TRUTH_FILE:
            found = find_truth(path)
            if found is None:
                raise FileNotFoundError(
                    f"`truth.csv` must lie beside the manifest, got none for {path}; only "
                    "generated cohorts (make_synthetic_cohort) have one")
            path = found
        table, where = pd.read_csv(path, dtype={"subject_id": str}), str(path)
    needed = ["subject_id", "s", *VIEWS.values()]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"`truth.csv` must have columns {needed}, got no {missing} ({where})")
    table["subject_id"] = table["subject_id"].astype(str)
    dup = table["subject_id"].duplicated()
    if dup.any():
        raise ValueError(f"`subject_id` must be unique in the truth table, got "
                         f"{table['subject_id'][dup].iloc[0]} twice ({where})")
    for col in ["s", *VIEWS.values()]:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"`{col}` must be a number, got {table[col].iloc[row]!r} "
                             f"({where}, row {row + 1})")
        table[col] = values.astype(float)
    table.attrs["source"] = where
    return table.reset_index(drop=True)


def parse_views(views: str | Sequence[str]) -> tuple[str, ...]:
    """Expand a view set (``"mri+pet"``, ``"all"``, ``("clinical", "mri")``) to view names.

    ``all`` means clinical, MRI and PET; ``demographics`` means age and education.
    """
    parts = views.split("+") if isinstance(views, str) else list(views)
    out: list[str] = []
    for part in parts:
        name = part.strip().lower()
        for view in _ALIASES.get(name, (name,)):
            if view not in VIEWS:
                raise ValueError(f"views must be among {[*VIEWS, *_ALIASES]}, got `{part}` "
                                 f"(in {views!r})")
            if view not in out:
                out.append(view)
    if not out:
        raise ValueError(f"views must name at least one view, got {views!r}")
    return tuple(out)


def _view_values(truth: pd.DataFrame, view: str, respect_missing_pet: bool) -> np.ndarray:
    values = truth[VIEWS[view]].to_numpy(float).copy()
    if view == "pet" and respect_missing_pet and "has_pet" in truth.columns:
        values[truth["has_pet"].to_numpy(float) == 0] = np.nan
    return values


def _gaussian(truth: pd.DataFrame, views: tuple[str, ...], respect_missing_pet: bool
              ) -> np.ndarray:
    """``Phi((m - 0.5) sqrt(P))``: precision-weighted mean ``m`` of the views in s units."""
    num = np.zeros(len(truth))
    precision = np.zeros(len(truth))
    for view in views:
        values = _view_values(truth, view, respect_missing_pet)
        if view in ("age", "education"):
            model = AGE_MODEL if view == "age" else EDUCATION_MODEL
            values, sd = model.to_s(values), model.s_sd
        else:
            sd = CLINICAL_VIEW_SD if view == "clinical" else IMAGE_VIEW_SD
        seen = np.isfinite(values)
        num[seen] += values[seen] / sd**2
        precision[seen] += 1.0 / sd**2
    out = np.full(len(truth), 0.5)  # no view seen: the flat prior's P(s > 0.5)
    seen = precision > 0
    mean = num[seen] / precision[seen]
    out[seen] = special.ndtr((mean - 0.5) * np.sqrt(precision[seen]))
    return out


def _censored(value: np.ndarray, mean: np.ndarray, sd: float, lo: float, hi: float,
              step: float = 0.0) -> np.ndarray:
    """Log-likelihood of observed values (rows) for each latent mean (columns)."""
    v = value[:, None]
    if step:  # rounded to `step`: the probability of the rounding interval
        upper = np.where(v >= hi, np.inf, v + step / 2)
        lower = np.where(v <= lo, -np.inf, v - step / 2)
        cdf_hi = special.log_ndtr((upper - mean) / sd)
        cdf_lo = special.log_ndtr((lower - mean) / sd)
        return cdf_hi + np.log1p(-np.exp(np.minimum(cdf_lo - cdf_hi, -1e-300)))
    ll = stats.norm.logpdf(v, mean, sd)
    ll = np.where(v <= lo, special.log_ndtr((lo - mean) / sd), ll)
    return np.where(v >= hi, special.log_ndtr((mean - hi) / sd), ll)


def _posterior(truth: pd.DataFrame, views: tuple[str, ...], respect_missing_pet: bool
               ) -> np.ndarray:
    """``P(s > 0.5 | views)`` under the generator's prior and exact view likelihoods."""
    edges = np.linspace(S_RANGE[0], S_RANGE[1], _N_GRID + 1)
    grid = (edges[:-1] + edges[1:]) / 2
    cdf = sum(w * stats.beta.cdf(edges, a, b) for w, a, b in S_MIXTURE)
    mass = np.diff(cdf)
    mass[0] += cdf[0]  # s is clipped into S_RANGE: the tails sit on the end cells
    mass[-1] += 1.0 - cdf[-1]
    log_post = np.broadcast_to(np.log(mass), (len(truth), _N_GRID)).copy()
    for view in views:
        values = _view_values(truth, view, respect_missing_pet)
        seen = np.isfinite(values)
        if view == "clinical":
            ll = stats.norm.logpdf(values[seen][:, None], grid[None], CLINICAL_VIEW_SD)
        elif view in ("mri", "pet"):
            ll = _censored(values[seen], grid[None], IMAGE_VIEW_SD, 0.0, 1.0)
        else:
            model = AGE_MODEL if view == "age" else EDUCATION_MODEL
            mean = model.expected(grid[None])
            # age is rounded to 0.1 year (negligible against its SD 6.5): a density
            step = model.step if model.step >= 1 else 0.0
            ll = _censored(values[seen], mean, model.sd, model.lo, model.hi, step)
        log_post[seen] += ll
    log_post -= log_post.max(axis=1, keepdims=True)
    post = np.exp(log_post)
    return post[:, grid > 0.5].sum(axis=1) / post.sum(axis=1)


def oracle_scores(
    truth: TruthLike,
    views: str | Sequence[str] = ("clinical", "mri", "pet"),
    method: str = "gaussian",
    respect_missing_pet: bool = True,
) -> pd.Series:
    """Optimal score for ``target > 0.5`` from a set of views: ``P(s > 0.5 | views)``.

    Parameters
    ----------
    truth
        The truth table (DataFrame, ``truth.csv``, a manifest beside it or its folder).
    views
        View names (:data:`VIEWS`) as a sequence or ``"+"``-joined; ``"all"`` is
        clinical + MRI + PET, ``"demographics"`` is age + education.
    method
        ``"gaussian"``: ``Phi((m - 0.5) sqrt(P))`` with ``m`` the precision-weighted
        mean of the views (in units of ``s``) and ``P`` its precision (flat prior,
        clipping ignored); ``"posterior"``: exact posterior under the generator's prior
        and view likelihoods.
    respect_missing_pet
        Subjects without a PET volume (``has_pet == 0``) do not see the PET view (a
        model cannot either). A subject that sees none of the views gets the prior
        probability (0.5 for ``"gaussian"``).

    Returns
    -------
    pandas.Series
        Scores in [0, 1], indexed by ``subject_id``, named ``oracle:<views>``.
    """
    table = read_truth(truth)
    names = parse_views(views)
    if method == "gaussian":
        scores = _gaussian(table, names, respect_missing_pet)
    elif method == "posterior":
        scores = _posterior(table, names, respect_missing_pet)
    else:
        raise ValueError(f"`method` must be 'gaussian' or 'posterior', got `{method}`")
    return pd.Series(np.clip(scores, 0.0, 1.0), index=pd.Index(table["subject_id"],
                     name="subject_id"), name="oracle:" + "+".join(names))


def oracle_predictions(
    truth: TruthLike,
    views: str | Sequence[str] = "all",
    targets: pd.DataFrame | None = None,
    method: str = "gaussian",
    respect_missing_pet: bool = True,
) -> pd.DataFrame:
    """Return the oracle as a predictions table (``subject_id``, ``target``, ``score``).

    Parameters
    ----------
    truth, views, method, respect_missing_pet
        As for :func:`oracle_scores`.
    targets
        A table with ``subject_id`` and ``target`` (e.g. a model's predictions on the
        cohort): the oracle is scored on exactly these subjects, in this order, with
        these targets. Default: every subject of the truth table, ``target = s``.

    Returns
    -------
    pandas.DataFrame
        Usable by every function of :mod:`gazimed_lab.evaluation`.
    """
    table = read_truth(truth)
    scores = oracle_scores(table, views, method=method, respect_missing_pet=respect_missing_pet)
    if targets is None:
        out = pd.DataFrame({"subject_id": table["subject_id"], "target": table["s"]})
    else:
        out = targets[["subject_id", "target"]].copy()
        out["subject_id"] = out["subject_id"].astype(str)
        unknown = ~out["subject_id"].isin(scores.index)
        if unknown.any():
            raise ValueError(
                f"subjects must be in the truth table, got {int(unknown.sum())} unknown, "
                f"e.g. {out['subject_id'][unknown].iloc[0]} ({table.attrs.get('source')})")
    out["score"] = scores.reindex(out["subject_id"]).to_numpy()
    out["split"] = "oracle"
    out.attrs["source"] = f"{scores.name} ({table.attrs.get('source')})"
    return out.reset_index(drop=True)


def oracle_table(
    truth: TruthLike,
    subsets: Mapping[str, str] | Sequence[str] | None = None,
    targets: pd.DataFrame | None = None,
    method: str = "gaussian",
    respect_missing_pet: bool = True,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """AUROC of the oracle for ``target > 0.5`` from each subset of views.

    Parameters
    ----------
    truth
        The truth table (DataFrame, ``truth.csv``, a manifest beside it or its folder).
    subsets
        View sets (see :func:`parse_views`); default :data:`DEFAULT_SUBSETS`.
    targets
        Score only these subjects with these targets (see :func:`oracle_predictions`).
    method, respect_missing_pet
        As for :func:`oracle_scores`.
    n_boot, ci, seed
        Subject-level bootstrap of the AUROC (``n_boot = 0``: no interval).

    Returns
    -------
    pandas.DataFrame
        One row per subset: ``subset``, ``views``, ``auroc``, ``low``, ``high``, ``n``,
        ``n_pos``, ``description``.
    """
    if subsets is None:
        subsets = DEFAULT_SUBSETS
    described = dict(subsets) if isinstance(subsets, Mapping) else {
        s: DEFAULT_SUBSETS.get(s, "") for s in subsets}
    table = read_truth(truth)
    rows = []
    for subset, description in described.items():
        preds = oracle_predictions(table, subset, targets=targets, method=method,
                                   respect_missing_pet=respect_missing_pet)
        if n_boot > 0:
            point, low, high = bootstrap_ci(preds, "auroc", n_boot=n_boot, ci=ci, seed=seed)
        else:
            point, low, high = metric_value(preds, "auroc"), float("nan"), float("nan")
        y = preds["target"].to_numpy(float) > 0.5
        rows.append({"subset": subset, "views": "+".join(parse_views(subset)),
                     "auroc": point, "low": low, "high": high, "n": len(preds),
                     "n_pos": int(y.sum()), "description": description})
    return pd.DataFrame(rows)
