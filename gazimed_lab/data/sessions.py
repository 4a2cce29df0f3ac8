"""Several sessions per subject: session ids, their order, and which sessions are scored.

A manifest may have a ``session_id`` column: one row per (subject, session). Without it
a manifest has one row per subject, exactly as before (no session column appears
anywhere then). The rules, checked by
:func:`~gazimed_lab.data.manifest.validate_manifest` (every problem named with its rows):

* Every row has a session id, under the subject-id rule
  (:data:`~gazimed_lab.paths.SAFE_ID_RULE`: ids become file names).
* A (subject, session) pair appears once.
* Columns that describe the subject rather than the visit (:data:`SUBJECT_COLUMNS`:
  ``sex``, ``site``, ``split``) hold one value per subject across its sessions; an empty
  cell is unknown, not a conflict. ``diagnosis``, ``target``, ``age`` and the clinical
  columns may change from session to session: they are longitudinal.
* Session order: the natural order of the session ids (digit runs compared as numbers,
  case ignored: ``ses-M000 < ses-M006 < ses-M012``, ``ses-M6 < ses-M12``,
  ``bl < m06 < m12``), or the values of the numeric column named by
  ``data.session_order_column`` (e.g. months since baseline; filled in every row, no
  ties within a subject). Two ids of one subject that sort as equal (``ses-M6`` and
  ``ses-M06``) are refused. The first session by this order is the subject's baseline.

Splits are made over subjects, stratified by each subject's baseline session (see
:func:`~gazimed_lab.data.splits.make_splits`); a training subject trains on every
session, a validation or test subject is scored on the sessions ``data.eval_sessions``
selects (:func:`select_sessions`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from gazimed_lab.config import EVAL_SESSIONS
from gazimed_lab.data.images import problem
from gazimed_lab.paths import SAFE_ID_RULE, check_subject_id

__all__ = [
    "SUBJECT_COLUMNS",
    "check_sessions",
    "has_sessions",
    "natural_key",
    "select_sessions",
    "session_ranks",
    "subject_count",
]

#: Columns that describe the subject, not the session: one value per subject.
SUBJECT_COLUMNS: tuple[str, ...] = ("sex", "site", "split")
#: The rank column the cohort table carries with sessions (0 = the subject's baseline).
RANK = "session_rank"
_DIGITS = re.compile(r"(\d+)")

Problems = list[tuple[int, str]]
#: ``row_location``: (1-based row, subject id) -> location text of a message.
Locate = Callable[[int, object], str]


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that compares digit runs as numbers and ignores case.

    Examples
    --------
    >>> sorted(["ses-M12", "ses-M006", "ses-M0"], key=natural_key)
    ['ses-M0', 'ses-M006', 'ses-M12']
    """
    parts = _DIGITS.split(str(text).casefold())
    # Even positions are text, odd positions digit runs: like types always meet.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def has_sessions(table: pd.DataFrame) -> bool:
    """Whether a table has a ``session_id`` column (one row per subject and session)."""
    return "session_id" in table.columns


def subject_count(table: pd.DataFrame) -> int:
    """Count the distinct subjects of a table (its rows when there are no sessions)."""
    return int(table["subject_id"].nunique()) if has_sessions(table) else len(table)


def _rows(index: pd.Index) -> str:
    return ", ".join(str(int(i) + 1) for i in index)


def session_ranks(table: pd.DataFrame, order: pd.Series | None = None) -> pd.Series:
    """Rank of each row's session within its subject (0 = the first, the baseline).

    Parameters
    ----------
    table
        Rows with ``subject_id`` and ``session_id``.
    order
        Numeric values to order by (``data.session_order_column``); ``None`` orders the
        session ids naturally (:func:`natural_key`). Ties keep the table's order.

    Returns
    -------
    pandas.Series
        Integer ranks, aligned with ``table``.
    """
    if order is not None:
        keys = pd.to_numeric(order, errors="coerce").to_numpy(dtype=float)
        position = np.argsort(keys, kind="stable")
    else:
        names = table["session_id"].astype(str).tolist()
        position = np.array(sorted(range(len(names)), key=lambda i: natural_key(names[i])),
                            dtype=int)
    ordered = table.iloc[position] if len(position) else table
    ranks = ordered.groupby(ordered["subject_id"].astype(str), sort=False).cumcount()
    return ranks.reindex(table.index).astype(int)


def _check_ids(sessions: pd.Series, sids: pd.Series, locate: Locate) -> Problems:
    problems: Problems = []
    for i, ses in enumerate(sessions):
        where = locate(i + 1, sids.iat[i])
        if ses == "":
            problems.append((i + 1, problem(
                "session_id", "a non-empty identifier in every row when the column is present",
                "an empty cell", where, "fill in every session (e.g. ses-M000), or drop the "
                "column for one row per subject")))
        elif (why := check_subject_id(ses)) is not None:
            problems.append((i + 1, problem(
                "session_id", SAFE_ID_RULE, why, where,
                "rename the session (ids become file names in the run folder)")))
    return problems


def _check_pairs(sessions: pd.Series, sids: pd.Series, path: Path) -> Problems:
    problems: Problems = []
    filled = (sessions != "") & (sids != "")
    pairs = sids[filled] + "\x00" + sessions[filled]
    for _, group in pairs.groupby(pairs, sort=False):
        if len(group) > 1:
            i = group.index[0]
            problems.append((int(group.index[1]) + 1, problem(
                "(subject_id, session_id)", "unique",
                f"subject `{sids[i]}`, session `{sessions[i]}` in rows {_rows(group.index)}",
                str(path), "give each session of a subject one row")))
    return problems


def _check_constant(frame: pd.DataFrame, sids: pd.Series, path: Path) -> Problems:
    problems: Problems = []
    for col in (c for c in SUBJECT_COLUMNS if c in frame.columns):
        values = frame[col].fillna("").astype(str)
        known = values[(values != "") & (sids != "")]
        for sid, group in known.groupby(sids[known.index], sort=False):
            distinct = list(dict.fromkeys(group))
            if len(distinct) < 2:
                continue
            shown = " and ".join(f"`{v}` in row{'s' if (group == v).sum() > 1 else ''} "
                                 f"{_rows(group.index[group == v])}" for v in distinct)
            problems.append((int(group.index[0]) + 1, problem(
                col, "one value per subject across its sessions",
                f"{shown} (subject `{sid}`)", str(path),
                f"correct the manifest: `{col}` describes the subject, not the visit "
                "(diagnosis, target, age and the clinical columns may change over sessions)")))
    return problems


def _check_order(frame: pd.DataFrame, sessions: pd.Series, sids: pd.Series, path: Path,
                 column: str | None, locate: Locate) -> tuple[pd.Series | None, Problems]:
    problems: Problems = []
    if column is None:
        keys = sessions.map(lambda s: repr(natural_key(s)))
        for (sid, _key), group in sessions.groupby([sids, keys], sort=False):
            distinct = list(dict.fromkeys(group))
            if sid and len(distinct) > 1:
                problems.append((int(group.index[1]) + 1, problem(
                    "session_id", "ids that sort apart within a subject (natural order: "
                    "digit runs compared as numbers, case ignored)",
                    f"{', '.join(f'`{d}`' for d in distinct)} of subject `{sid}`, which sort "
                    f"as the same session (rows {_rows(group.index)})", str(path),
                    "spell each session once, or order sessions by a numeric column with "
                    "data.session_order_column")))
        return None, problems
    if column not in frame.columns:
        return None, [(0, problem("data.session_order_column", "a manifest column",
                                  f"`{column}`, which is not a column", str(path),
                                  "name a numeric column that orders the sessions (e.g. "
                                  "months since baseline), or unset it for natural order"))]
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    for i in np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float))):
        got = "an empty cell" if pd.isna(raw.iat[i]) else f"`{raw.iat[i]}`"
        problems.append((int(i) + 1, problem(
            column, "a number in every row (data.session_order_column orders the sessions)",
            got, locate(int(i) + 1, sids.iat[i]))))
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    for (sid, value), group in finite.groupby([sids[finite.index], finite], sort=False):
        if sid and len(group) > 1:
            names = ", ".join(f"`{s}`" for s in sessions[group.index])
            problems.append((int(group.index[1]) + 1, problem(
                column, "distinct values within a subject (data.session_order_column orders "
                "the sessions)", f"{value:g} for sessions {names} of subject `{sid}` (rows "
                f"{_rows(group.index)})", str(path))))
    return values, problems


def check_sessions(frame: pd.DataFrame, sids: pd.Series, path: Path,
                   order_column: str | None = None) -> tuple[pd.Series, pd.Series, Problems]:
    """Check a manifest's ``session_id`` column; return the ids, their ranks and problems.

    Parameters
    ----------
    frame
        The manifest as read (text cells, NaN for empty ones).
    sids
        Subject ids, aligned with ``frame`` ("" where empty).
    path
        The manifest, for messages.
    order_column
        ``data.session_order_column`` (``None``: natural order of the ids).

    Returns
    -------
    tuple of (pandas.Series, pandas.Series, list)
        Session ids ("" where empty), session ranks (0 = baseline) and the
        ``(row, message)`` problems: empty or unsafe ids, a repeated (subject, session)
        pair, conflicting values of a :data:`SUBJECT_COLUMNS` column within a
        subject, an unusable or tied order.
    """
    from gazimed_lab.data.manifest import row_location

    sessions = frame["session_id"].fillna("").astype(str)
    problems = _check_ids(sessions, sids, row_location)
    problems += _check_pairs(sessions, sids, path)
    problems += _check_constant(frame, sids, path)
    order, found = _check_order(frame, sessions, sids, path, order_column, row_location)
    problems += found
    table = pd.DataFrame({"subject_id": sids, "session_id": sessions})
    return sessions, session_ranks(table, order), problems


def select_sessions(table: pd.DataFrame, which: str) -> pd.DataFrame:
    """Keep the rows of the sessions ``which`` selects per subject (``data.eval_sessions``).

    Parameters
    ----------
    table
        Rows with ``subject_id`` and ``session_id`` (and ``session_rank``; computed
        from the natural order of the ids when absent).
    which
        ``first`` (each subject's baseline), ``last`` or ``all`` (:data:`EVAL_SESSIONS`).

    Returns
    -------
    pandas.DataFrame
        The selected rows, in the table's order. A table without sessions is returned
        as it is.
    """
    if which not in EVAL_SESSIONS:
        raise ValueError(f"`data.eval_sessions` must be one of {', '.join(EVAL_SESSIONS)}, "
                         f"got {which!r}")
    if not has_sessions(table) or which == "all" or len(table) == 0:
        return table
    ranks = table[RANK] if RANK in table.columns else session_ranks(table)
    if which == "first":
        return table[ranks == 0]
    last = ranks.groupby(table["subject_id"].astype(str)).transform("max")
    return table[ranks == last]
