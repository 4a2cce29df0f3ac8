"""The participants / sessions TSV of a manifest build: targets and clinical columns.

A tab-separated file with one row per subject (``participant_id`` or ``subject_id``)
or per subject and session (plus ``session_id``), as BIDS' ``participants.tsv``,
Clinica's merged TSVs or ClinicaDL's label files have. Its columns go into the
manifest as they are (``diagnosis``, ``site``, ``age``, ``sex``, ``split`` keep their
meaning; the others become clinical columns), except:

* the target column (``target``, or the one named): it becomes ``target``, numbers in
  [0, 1] or text values mapped to numbers (``CN=0,MCI=0.5,AD=1``). A copy of it
  under its own name is not written: it would be the label among the inputs (a
  reserved column such as ``diagnosis`` stays);
* ``mri`` / ``pet`` columns, and columns equal to a reserved one up to case or spaces
  (``Sex``, ``Target``), are refused: the manifest reader would refuse them too.

Empty cells and BIDS' ``n/a`` are missing values. With a CAPS folder, ids without the
BIDS prefixes get them (``001`` -> ``sub-001``, ``M000`` -> ``ses-M000``).
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gazimed_lab.data.images import problem
from gazimed_lab.data.manifest import RESERVED_COLUMNS
from gazimed_lab.paths import path_state

__all__ = ["REPORT_COLUMNS", "SourceError", "SourceTable", "join_table", "parse_target_map",
           "read_source_table"]

REPORT_COLUMNS = ["kind", "subject_id", "session_id", "file", "detail"]
_MISSING = {"", "n/a", "na", "nan", "none", "null"}
_ID_COLUMNS = ("participant_id", "subject_id")
_RESERVED = (*RESERVED_COLUMNS, "session_id")


class SourceError(ValueError):
    """A manifest cannot be built; ``problems`` lists every reason, each naming its place."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"the manifest could not be built: {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head, *(f"- {p}" for p in self.problems)]))


@dataclass
class SourceTable:
    """A read TSV: ``subject_id``, ``session_id`` ("" without sessions), ``target``, the rest."""

    frame: pd.DataFrame
    path: Path
    has_sessions: bool


def parse_target_map(text: str | None) -> dict[str, float] | None:
    """``"CN=0,MCI=0.5,AD=1"`` -> ``{"CN": 0.0, "MCI": 0.5, "AD": 1.0}``.

    Raises
    ------
    SourceError
        For an item without ``=``, or a number outside [0, 1].
    """
    if not text:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not key.strip() or not 0.0 <= number <= 1.0:
            raise SourceError([problem("--target-map item", "`<value>=<number in [0, 1]>`",
                                       f"`{item}`", "--target-map", "e.g. CN=0,MCI=0.5,AD=1")])
        out[key.strip()] = number
    return out


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise SourceError([problem("TSV", "an existing file", path_state(path), str(path))])
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [[c.strip() for c in row] for row in csv.reader(fh, delimiter="\t") if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError([problem("TSV", "a readable UTF-8 tab-separated file",
                                   f"an error [{exc}]", str(path))]) from exc
    if not rows:
        raise SourceError([problem("TSV", "a header row", "an empty file", str(path))])
    if len(rows[0]) == 1 and "," in rows[0][0]:
        raise SourceError([problem("TSV", "tab-separated columns", "a comma-separated header",
                                   str(path), "save it as TSV (tabs between cells)")])
    return rows


def _header_problems(names: list[str], path: Path, target: str | None) -> list[str]:
    where = f"{path}; header"
    found = [problem("TSV header", "unique column names", f"`{n}` twice", where)
             for n in sorted({n for n in names if names.count(n) > 1})]
    ids = [c for c in _ID_COLUMNS if c in names]
    if len(ids) != 1:
        found.append(problem("TSV id column", "one of `participant_id`, `subject_id`",
                             f"{ids or 'neither'} among {names}", where))
    for name in names:
        key = name.strip().lower()
        if key in ("mri", "pet"):
            found.append(problem("TSV column", "not `mri` / `pet` (the images come from the "
                                 "folder)", f"`{name}`", where, "rename or drop it"))
        elif key in _RESERVED and name != key:
            found.append(problem("TSV column", f"spelled `{key}` exactly (a reserved manifest "
                                 "column)", f"`{name}`", where, f"rename it to `{key}`"))
    if target is not None and target not in names:
        close = difflib.get_close_matches(target, names, n=1)
        fix = f"did you mean `{close[0]}`?" if close else "name a column of the TSV"
        found.append(problem("--target", "a column of the TSV", f"`{target}`", where, fix))
    return found


def _target_values(raw: pd.Series, column: str, ids: pd.Series, path: Path,
                   mapping: dict[str, float] | None) -> tuple[list[str], list[str]]:
    values, problems = [], []
    for i, (text, sid) in enumerate(zip(raw, ids), start=1):
        where = f"{path}; row {i}, subject `{sid}`"
        if text.lower() in _MISSING:
            values.append("")
        elif mapping is not None:
            if text not in mapping:
                problems.append(problem(column, f"one of {sorted(mapping)} (--target-map)",
                                        f"`{text}`", where, "add it to --target-map"))
            values.append(f"{mapping.get(text, np.nan):g}")
        else:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if not 0.0 <= number <= 1.0:
                problems.append(problem(column, "a number in [0, 1] (or empty)", f"`{text}`",
                                        where, "scale it, or map text values with "
                                        "--target-map CN=0,AD=1"))
            values.append(text)
    return values, problems


def read_source_table(path: str | Path, target: str | None = None,
                      target_map: dict[str, float] | None = None, caps_ids: bool = False
                      ) -> SourceTable:
    """Read and check a participants / sessions TSV (module docstring: the rules).

    Raises
    ------
    SourceError
        Every problem: missing id column, duplicate (subject, session), wrong field
        count, refused column, bad target value (naming file, row and column).
    """
    path = Path(path).expanduser().absolute()
    rows = _read_rows(path)
    names, body = rows[0], rows[1:]
    problems = _header_problems(names, path, target)
    problems += [problem("fields per TSV row", f"{len(names)} (the header's count)",
                         f"{len(r)}", f"{path}; row {i}") for i, r in enumerate(body, start=1)
                 if len(r) != len(names)]
    if problems:
        raise SourceError(problems)
    frame = pd.DataFrame(body, columns=names, dtype=str)
    id_col = next(c for c in _ID_COLUMNS if c in names)
    frame = frame.rename(columns={id_col: "subject_id"})
    sessions = "session_id" in frame.columns
    frame["session_id"] = frame["session_id"] if sessions else ""
    if caps_ids:
        for column, prefix in (("subject_id", "sub-"), ("session_id", "ses-")):
            frame[column] = [v if not v or v.startswith(prefix) else prefix + v
                             for v in frame[column]]
    for i, (sid, ses) in enumerate(zip(frame["subject_id"], frame["session_id"]), start=1):
        if not sid or (sessions and not ses):
            column = "session_id" if sid else id_col
            problems.append(problem(column, "a non-empty id", "an empty cell", f"{path}; row {i}"))
    keys = frame["subject_id"] + "\t" + frame["session_id"]
    for key, group in frame.groupby(keys, sort=False):
        if len(group) > 1 and str(key).split("\t")[0]:
            sid, ses = str(key).split("\t")
            who = f"subject `{sid}`" + (f", session `{ses}`" if ses else "")
            rows_text = ", ".join(str(int(i) + 1) for i in group.index)
            problems.append(problem("TSV rows", f"one per {'session' if sessions else 'subject'}",
                                    f"{who} in rows {rows_text}", str(path),
                                    "add a session_id column for several sessions"
                                    if not sessions else "remove the repeated row"))
    source = target if target is not None else ("target" if "target" in names else None)
    if source is None:
        frame["target"] = ""
    else:
        frame["target"], found = _target_values(frame[source], source, frame["subject_id"],
                                                path, target_map)
        problems += found
        if source != "target" and source not in _RESERVED:
            frame = frame.drop(columns=source)  # the label must not be a clinical column
    if problems:
        raise SourceError(problems)
    rest = [c for c in frame.columns if c not in ("subject_id", "session_id", "target")]
    return SourceTable(frame[["subject_id", "session_id", "target", *rest]], path, sessions)


def join_table(pairs: pd.DataFrame, table: SourceTable | None, session_given: bool = False
               ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Join the paired images with the TSV; report what either side lacks.

    Parameters
    ----------
    pairs
        ``subject_id``, ``session_id``, ``mri``, ``pet`` (one row per T1).
    table
        The TSV, or ``None`` (then ``target`` is empty and there are no clinical columns).
    session_given
        A single session was chosen: TSV rows of other sessions are not reported.

    Returns
    -------
    tuple
        The manifest rows (``subject_id``, ``session_id``, ``mri``, ``pet``, ``target``,
        the TSV's columns) and the report rows.

    Raises
    ------
    SourceError
        A TSV with sessions while the images have none.
    """
    if table is None:
        return pairs.assign(target=""), []
    frame = table.frame
    images_have_sessions = bool((pairs["session_id"] != "").any())
    if table.has_sessions and not images_have_sessions:
        raise SourceError([problem("TSV `session_id` column", "matched by session ids of the "
                                   "images", "images without sessions", str(table.path),
                                   "add {session} to the patterns, or drop the column")])
    on = ["subject_id", "session_id"] if table.has_sessions else ["subject_id"]
    if table.has_sessions and session_given:
        frame = frame[frame["session_id"].isin(set(pairs["session_id"]))]
    if not table.has_sessions:
        frame = frame.drop(columns="session_id")
    merged = pairs.merge(frame, on=on, how="outer", indicator=True, validate="many_to_one")
    report: list[dict[str, str]] = []
    for row in merged[merged["_merge"] == "right_only"].itertuples():
        report.append({"kind": "tsv_row_without_images", "subject_id": row.subject_id,
                       "session_id": getattr(row, "session_id", "") if table.has_sessions else "",
                       "file": str(table.path), "detail": "no T1 found for this row"})
    for row in merged[merged["_merge"] == "left_only"].itertuples():
        report.append({"kind": "images_without_tsv_row", "subject_id": row.subject_id,
                       "session_id": row.session_id, "file": row.mri,
                       "detail": f"not in {table.path.name}"})
    rows = merged[merged["_merge"] == "both"].drop(columns="_merge").fillna("")
    rows = rows.sort_values(["subject_id", "session_id"], ignore_index=True)
    for row in rows[rows["target"] == ""].itertuples():
        report.append({"kind": "missing_target", "subject_id": row.subject_id,
                       "session_id": row.session_id, "file": str(table.path),
                       "detail": "empty target in the TSV"})
    rest = [c for c in rows.columns if c not in ("subject_id", "session_id", "mri", "pet",
                                                 "target")]
    return rows[["subject_id", "session_id", "mri", "pet", "target", *rest]], report
