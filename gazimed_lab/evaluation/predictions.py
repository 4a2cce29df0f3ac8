"""The predictions table: reading and validating ``predictions/{val,test}.csv``.

Columns: ``subject_id``, ``target`` (float in [0, 1]), ``score`` (float in
[0, 1]), ``label`` (0/1 at the run's threshold), ``split`` and, when known,
``diagnosis``, ``site``, ``age``, ``sex``. The binary truth is ``target > 0.5``.

With several sessions per subject the table has a ``session_id`` column and a row per
scored session. Subject-level metrics never count a subject twice: :func:`read_predictions`
(which every metric, bootstrap and dashboard function reads through) averages each
subject's sessions into one row first (:func:`per_subject`: mean score, mean target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

__all__ = [
    "REQUIRED_COLUMNS",
    "PredictionsError",
    "PredictionsLike",
    "binary_truth",
    "per_subject",
    "read_predictions",
]

REQUIRED_COLUMNS = ("subject_id", "target", "score")

PredictionsLike = Union[pd.DataFrame, str, Path]  # noqa: UP007 (runtime alias, py3.10)


class PredictionsError(ValueError):
    """A predictions table that cannot be used: names the file, row and column."""


def _where(source: str, row: int | None = None, sid: object = None) -> str:
    if row is None:
        return f"({source})"
    subject = f", subject {sid}" if sid is not None and not pd.isna(sid) else ""
    return f"({source}, row {row}{subject})"


def _resolve_path(path: Path, split: str) -> Path:
    if path.is_dir():
        candidate = path / "predictions" / f"{split}.csv"
        if not candidate.exists():
            raise FileNotFoundError(
                f"predictions file must exist at {candidate}, got none (run folder {path}); "
                "write it with `trainer.predict` / `gazimed-lab predict` first"
            )
        return candidate
    if not path.exists():
        raise FileNotFoundError(
            f"predictions file must exist, got no file at {path}; "
            "write it with `trainer.predict` / `gazimed-lab predict` first"
        )
    return path


def _check_unit_interval(
    df: pd.DataFrame, column: str, source: str, allow_nan: bool
) -> None:
    values = pd.to_numeric(df[column], errors="coerce")
    not_numeric = values.isna() & df[column].notna()
    missing = df[column].isna()
    bad = not_numeric | ((values < 0) | (values > 1)).fillna(False)
    if not allow_nan:
        bad = bad | missing
    if not bad.any():
        df[column] = values.astype(float)
        return
    positions = np.flatnonzero(bad.to_numpy())
    first = int(positions[0])
    raw = df[column].iloc[first]
    sid = df["subject_id"].iloc[first] if "subject_id" in df else None
    more = f"; {len(positions) - 1} more row(s) like it" if len(positions) > 1 else ""
    hint = ""
    if column == "target" and bool(missing.iloc[first]):
        hint = " (metrics need known targets; predict-only tables have no truth)"
    raise PredictionsError(
        f"`{column}` must be in [0, 1], got {raw} {_where(source, first + 1, sid)}{more}{hint}"
    )


def per_subject(df: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: a subject's sessions averaged (metrics count subjects once).

    A table without ``session_id``, or whose subjects all have one row, is returned
    unchanged. Otherwise each subject's rows become one: ``score`` and ``target`` are
    the means over its sessions (so the binary truth is ``mean target > 0.5`` and a
    subject is predicted AD when its mean score is above the threshold), ``label`` is
    ``mean score > 0.5``, ``session_id`` lists the sessions averaged (``;``-separated),
    ``n_sessions`` counts them, and the other columns keep the subject's first row.
    Subjects keep the order of their first row.
    """
    if "session_id" not in df.columns or not df["subject_id"].duplicated().any():
        return df
    groups = df.groupby("subject_id", sort=False)
    out = groups.first()
    out["score"] = groups["score"].mean()
    out["target"] = groups["target"].mean()
    out["label"] = (out["score"] > 0.5).astype(int)
    out["session_id"] = groups["session_id"].agg(lambda s: ";".join(map(str, s)))
    out["n_sessions"] = groups.size()
    out = out.reset_index()[[*df.columns, "n_sessions"]]
    out.attrs.update(df.attrs, n_rows=len(df))
    return out


def read_predictions(
    path_or_df: PredictionsLike,
    split: str = "test",
    require_targets: bool = True,
) -> pd.DataFrame:
    """Read and validate a predictions table.

    Parameters
    ----------
    path_or_df
        A DataFrame, a CSV path (``run_dir/predictions/test.csv``) or a run folder
        (then ``run_dir/predictions/{split}.csv`` is read).
    split
        Which split to read when ``path_or_df`` is a run folder; also fills a
        missing ``split`` column.
    require_targets
        If True, ``target`` must be known for every row.

    Returns
    -------
    pandas.DataFrame
        A copy with ``target`` and ``score`` as float, ``label`` as int (derived
        as ``score > 0.5`` when absent) and a ``split`` column; ``df.attrs["source"]``
        names where it came from. With sessions (a ``session_id`` column, a subject
        in several rows) one row per subject, its sessions averaged
        (:func:`per_subject`; ``attrs["n_rows"]`` keeps the number of rows read).

    Raises
    ------
    PredictionsError
        When a required column is missing or a value is out of range; the message
        names the file, the row (1-based, header excluded), the subject and the column.
    FileNotFoundError
        When the file (or ``run_dir/predictions/{split}.csv``) does not exist.
    """
    if isinstance(path_or_df, pd.DataFrame):
        source = str(path_or_df.attrs.get("source", "DataFrame"))
        df = path_or_df.copy()
    else:
        path = _resolve_path(Path(path_or_df), split)
        source = str(path)
        try:
            df = pd.read_csv(path, dtype={"subject_id": str, "session_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise PredictionsError(
                f"predictions file must be a readable CSV, got an error: {exc} ({source})"
            ) from exc
        if "split" not in df.columns:
            df["split"] = path.stem
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PredictionsError(
            f"predictions table must have columns {list(REQUIRED_COLUMNS)}, got no "
            f"{', '.join(f'`{c}`' for c in missing)} among {list(df.columns)} ({source})"
        )
    if len(df) == 0:
        raise PredictionsError(f"predictions table must have at least one row, got 0 ({source})")
    empty_sid = df["subject_id"].isna() | (df["subject_id"].astype(str).str.strip() == "")
    if empty_sid.any():
        row = int(np.flatnonzero(empty_sid.to_numpy())[0]) + 1
        raise PredictionsError(f"`subject_id` must be non-empty, got '' {_where(source, row)}")
    df["subject_id"] = df["subject_id"].astype(str)
    _check_unit_interval(df, "score", source, allow_nan=False)
    _check_unit_interval(df, "target", source, allow_nan=not require_targets)
    if "label" in df.columns:
        labels = pd.to_numeric(df["label"], errors="coerce")
        bad = ~labels.isin([0, 1])
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise PredictionsError(
                f"`label` must be 0 or 1, got {df['label'].iloc[first]} "
                f"{_where(source, first + 1, df['subject_id'].iloc[first])}"
            )
        df["label"] = labels.astype(int)
    else:
        df["label"] = (df["score"] > 0.5).astype(int)
    if "split" not in df.columns:
        df["split"] = split
    if "session_id" in df.columns:
        df["session_id"] = df["session_id"].astype(str)
        pairs = df["subject_id"] + "\x00" + df["session_id"]
        if pairs.duplicated().any():
            row = int(np.flatnonzero(pairs.duplicated().to_numpy())[0])
            raise PredictionsError(
                f"(`subject_id`, `session_id`) must be unique, got subject "
                f"{df['subject_id'].iloc[row]}, session {df['session_id'].iloc[row]} again "
                f"{_where(source, row + 1)}")
    df = df.reset_index(drop=True)
    df.attrs["source"] = source
    df = per_subject(df)
    df.attrs["source"] = source
    return df


def binary_truth(df: pd.DataFrame) -> np.ndarray:
    """Return the binary truth of a predictions table: ``target > 0.5`` as 0/1 ints."""
    return (df["target"].to_numpy(dtype=float) > 0.5).astype(int)
