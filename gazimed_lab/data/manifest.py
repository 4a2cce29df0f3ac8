"""Reading and validating a cohort manifest (CSV) into a :class:`Cohort`.

Columns
-------
``subject_id`` (required, 1-128 characters from letters, digits, ``.``, ``_``, ``-``,
starting with a letter or digit: ids become file names; unique unless the manifest
has sessions), optional ``session_id`` (one row per subject and session, same
character rule; see :mod:`~gazimed_lab.data.sessions`), ``mri``
(required path), ``pet`` (required column, empty cell = no PET), ``target``
(required score in [0, 1]; may be missing or empty with
``require_targets=False``), optional ``diagnosis``, ``site``, ``age``, ``sex``,
``split`` (``train``/``val``/``test`` or empty) and clinical feature columns.
Paths are relative to the manifest's folder (absolute paths are accepted too).
Every row has exactly the header's number of fields, and no column may equal a
reserved one up to case (``Target`` beside ``target`` would leak the label into
the clinical features).

Clinical columns are the names given, or by default every other column whose
non-empty cells are mostly numbers (``age`` included). Other columns are
listed in :attr:`Cohort.ignored_columns`, never dropped silently.

A subject's MRI and PET may lie on different grids (e.g. T1 at 1 mm, PET at 2 mm):
each is conformed to the run's grid through its own affine, and QA and training
check that the two agree in world space afterwards
(:mod:`~gazimed_lab.data.agreement`).

Validation collects every problem, then raises one :class:`ManifestError`
whose message lists each problem on its own line, naming the row (1-based
data row and subject), the column or file, and what was expected.
"""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gazimed_lab.data.images import ImageError, load_volume, problem
from gazimed_lab.data.sessions import check_sessions
from gazimed_lab.paths import SAFE_ID_RULE, check_subject_id, path_state

__all__ = [
    "REQUIRED_COLUMNS",
    "RESERVED_COLUMNS",
    "SPLITS",
    "Cohort",
    "ManifestError",
    "read_manifest",
    "row_location",
    "validate_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "mri", "pet", "target")
#: Columns that are never clinical features (``age`` is not among them).
RESERVED_COLUMNS: tuple[str, ...] = (
    "subject_id", "session_id", "mri", "pet", "target", "diagnosis", "site", "sex", "split")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_TEXT_COLUMNS = ("diagnosis", "site", "sex", "split")
_VERBATIM_COLUMNS = ("subject_id", "session_id", "mri", "pet")
#: pandas' default missing-value spellings (``pd.read_csv``'s ``na_values``).
_NA_SPELLINGS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                 "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


class ManifestError(ValueError):
    """A manifest has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str], path: Path | str | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        n = len(self.problems)
        head = f"manifest {path} has {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head, *(f"- {p}" for p in self.problems)]))


@dataclass
class Cohort:
    """A validated cohort: one row per subject (and session), paths absolute, features typed.

    Attributes
    ----------
    table
        Index 0..n-1, row i is data row i + 1 of the manifest. Columns:
        ``subject_id``, with sessions ``session_id`` and ``session_rank`` (0 = the
        subject's first session by session order, its baseline), ``mri`` (absolute
        path), ``pet`` (absolute path or ""),
        ``target`` (float, NaN when unknown), ``diagnosis``, ``site``, ``age``
        (float), ``sex``, ``split`` ("" when absent), then the clinical columns
        (float, NaN when missing).
    clinical_columns
        Names of the clinical feature columns, in manifest order.
    path
        The manifest file.
    ignored_columns
        Manifest columns that are neither reserved nor clinical (mostly text).
    empty_columns
        Non-reserved manifest columns without a single value (ignored unless
        requested as clinical columns, then imputed everywhere); QA and training
        warn about them.
    """

    table: pd.DataFrame
    clinical_columns: list[str]
    path: Path
    ignored_columns: list[str] = field(default_factory=list)
    empty_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def subject_ids(self) -> list[str]:
        """Subject identifiers in manifest order (repeated once per session)."""
        return self.table["subject_id"].tolist()

    @property
    def has_sessions(self) -> bool:
        """Whether the manifest has a ``session_id`` column (rows are sessions)."""
        return "session_id" in self.table.columns

    @property
    def has_pet(self) -> np.ndarray:
        """Boolean array: whether each subject has a PET volume."""
        return (self.table["pet"] != "").to_numpy()


def row_location(row: int, sid: object, file: str | None = None,
                 session: object = None) -> str:
    """Location text for messages: ``"<file>; row <n>, subject `<id>`[, session `<id>`]"``."""
    sid_text = f"`{sid}`" if isinstance(sid, str) and sid else "(empty)"
    loc = f"row {row}, subject {sid_text}"
    if isinstance(session, str) and session:
        loc += f", session `{session}`"
    return f"{file}; {loc}" if file else loc


def _read_csv(path: Path) -> tuple[pd.DataFrame | None, list[str]]:
    where = str(path)
    if not path.is_file():
        return None, [problem("manifest", "an existing CSV file", path_state(path), where)]
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            lines = [line for line in csv.reader(fh) if line]
    except (UnicodeDecodeError, csv.Error) as exc:
        return None, [problem("manifest", "a readable UTF-8 CSV file", f"an error [{exc}]",
                              where)]
    if not lines:
        return None, [problem("manifest", f"a CSV with a header row {list(REQUIRED_COLUMNS)}",
                              "an empty file", where)]
    names = [h.strip() for h in lines[0]]
    bad = [problem("fields per manifest row", f"{len(names)} (the header's count)",
                   f"{len(line)}", f"row {i}", "quote cells that contain commas, and give "
                   "every row one cell per column (empty cells are fine)")
           for i, line in enumerate(lines[1:], start=1) if len(line) != len(names)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        bad.insert(0, problem("manifest header", "unique column names", f"duplicates {dupes}",
                              where))
    for name in names:
        reserved = name.strip().lower()
        if reserved in RESERVED_COLUMNS and name != reserved:
            bad.insert(0, problem(
                "manifest column", f"distinct from the reserved column `{reserved}` up to case "
                "and spaces", f"`{name}`", where,
                "rename or drop it (a copy of a reserved column would enter the model as a "
                "clinical feature, e.g. the target leaking into the inputs)"))
    if bad:
        return None, bad
    try:
        frame = pd.read_csv(path, dtype=str, skip_blank_lines=True, index_col=False,
                            encoding="utf-8-sig", keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, [problem("manifest", "a readable CSV file", f"a parse error [{exc}]", where)]
    frame.columns = names
    frame = frame.apply(lambda col: col.str.strip())
    # Identifiers and paths are text as written (`NA` is a subject id, `None` a file
    # name); only the other columns read pandas' missing-value spellings as missing.
    for col in frame.columns:
        missing = [""] if col in _VERBATIM_COLUMNS else _NA_SPELLINGS
        frame[col] = frame[col].where(~frame[col].isin(missing))
    return frame, []


def _numeric(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    values = pd.to_numeric(col, errors="coerce").astype(float)
    bad = col.notna() & ~np.isfinite(values)
    return values.where(~bad), bad


def _pick_clinical(frame: pd.DataFrame, requested: list[str] | None
                   ) -> tuple[list[str], list[str], list[tuple[int, str]]]:
    problems: list[tuple[int, str]] = []
    candidates = [c for c in frame.columns if c not in RESERVED_COLUMNS]
    if requested is None:
        clinical: list[str] = []
        ignored: list[str] = []
        for name in candidates:
            present = frame[name].dropna()
            numeric = pd.to_numeric(present, errors="coerce").notna()
            (clinical if len(present) and numeric.mean() >= 0.5 else ignored).append(name)
        return clinical, ignored, problems
    requested = [str(c) for c in requested]
    for name in sorted({c for c in requested if requested.count(c) > 1}):
        problems.append((0, problem("clinical_columns", "a list of distinct names",
                                    f"`{name}` more than once", "clinical_columns")))
    for name in dict.fromkeys(requested):
        if name in RESERVED_COLUMNS:
            problems.append((0, problem("clinical_columns", f"free of reserved columns "
                                        f"{list(RESERVED_COLUMNS)}", f"`{name}`",
                                        "clinical_columns")))
        elif name not in frame.columns:
            close = difflib.get_close_matches(name, candidates, n=1)
            fix = f"did you mean `{close[0]}`?" if close else "add the column or drop the name"
            problems.append((0, problem("clinical_columns", "names of manifest columns",
                                        f"`{name}`, which is not a column", "manifest header",
                                        fix)))
    clinical = [c for c in dict.fromkeys(requested)
                if c in frame.columns and c not in RESERVED_COLUMNS]
    ignored = [c for c in candidates if c not in clinical]
    return clinical, ignored, problems


def _resolve(value: str, root: Path) -> str:
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else root / path)


def _check_images(table: pd.DataFrame, exists: pd.DataFrame) -> list[tuple[int, str]]:
    """Load every existing volume once (:func:`load_volume`).

    MRI and PET may lie on different grids: whether they agree in world space once
    conformed to the run's grid is checked by QA and training
    (:mod:`~gazimed_lab.data.agreement`), which know the grid.
    """
    problems: list[tuple[int, str]] = []
    for i, row in table.iterrows():
        r, sid = int(i) + 1, row["subject_id"]
        for col in ("mri", "pet"):
            if not exists.at[i, col]:
                continue
            try:
                load_volume(row[col], col, row_location(r, sid, row[col], row.get("session_id")))
            except ImageError as exc:
                problems.append((r, str(exc)))
    return problems


Problems = list[tuple[int, str]]


def _check_ids(frame: pd.DataFrame, path: Path, sessions: bool = False
               ) -> tuple[pd.Series, Problems]:
    problems: Problems = []
    if "subject_id" not in frame:
        return pd.Series([""] * len(frame), dtype=str), problems
    sids = frame["subject_id"].fillna("").astype(str)
    for i, sid in enumerate(sids):
        if sid == "":
            problems.append((i + 1, problem("subject_id", "a non-empty identifier",
                                            "an empty cell", row_location(i + 1, ""))))
        elif (why := check_subject_id(sid)) is not None:
            problems.append((i + 1, problem(
                "subject_id", SAFE_ID_RULE, why, row_location(i + 1, sid),
                "rename the subject (ids become file names in the run folder)")))
    if sessions:  # a subject has one row per session (pairs are checked with the sessions)
        return sids, problems
    for sid, group in sids[sids != ""].groupby(sids[sids != ""], sort=False):
        if len(group) > 1:
            rows = ", ".join(str(int(i) + 1) for i in group.index)
            problems.append((int(group.index[1]) + 1, problem(
                "subject_id", "unique", f"`{sid}` in rows {rows}", str(path),
                "give each subject one row, or add a `session_id` column for several "
                "sessions per subject")))
    return sids, problems


def _check_paths(frame: pd.DataFrame, sids: pd.Series, root: Path, col: str
                 ) -> tuple[list[str], list[bool], Problems]:
    problems: Problems = []
    resolved: list[str] = []
    exists: list[bool] = []
    values = frame[col] if col in frame else pd.Series([np.nan] * len(frame))
    for i, value in enumerate(values):
        r, sid = i + 1, sids.iat[i]
        full = "" if pd.isna(value) else _resolve(value, root)
        resolved.append(full)
        exists.append(bool(full) and os.path.isfile(full))
        if not full and col == "mri" and col in frame:
            problems.append((r, problem("mri", "a path to a NIfTI file", "an empty cell",
                                        row_location(r, sid))))
        elif full and not exists[-1]:
            problems.append((r, problem(col, "an existing NIfTI file", path_state(full),
                                        row_location(r, sid, full),
                                        f"paths are relative to {root}")))
    return resolved, exists, problems


def _check_target(frame: pd.DataFrame, sids: pd.Series, require: bool
                  ) -> tuple[pd.Series, Problems]:
    problems: Problems = []
    if "target" not in frame:
        return pd.Series(np.nan, index=frame.index), problems
    raw = frame["target"]
    target, bad = _numeric(raw)
    for i in range(len(frame)):
        got: str | None
        if bad.iat[i]:
            got = f"`{raw.iat[i]}`"
        elif pd.isna(raw.iat[i]):
            got = "an empty cell" if require else None
        else:
            got = None if 0.0 <= target.iat[i] <= 1.0 else f"{target.iat[i]:g}"
        if got is not None:
            fix = ("fill it, or read with require_targets=False for prediction"
                   if pd.isna(raw.iat[i]) else None)
            problems.append((i + 1, problem("target", "a number in [0, 1]", got,
                                            row_location(i + 1, sids.iat[i]), fix)))
    return target, problems


def _check_numeric(frame: pd.DataFrame, sids: pd.Series, columns: list[str]
                   ) -> tuple[dict[str, pd.Series], Problems]:
    problems: Problems = []
    numeric = {}
    for col in columns:
        numeric[col], bad = _numeric(frame[col])
        for i in np.flatnonzero(bad.to_numpy()):
            r = int(i) + 1
            problems.append((r, problem(col, "a finite number or an empty cell",
                                        f"`{frame[col].iat[i]}`", row_location(r, sids.iat[i]))))
    return numeric, problems


def _check_split(split: pd.Series, sids: pd.Series) -> Problems:
    return [(i + 1, problem("split", "one of train, val, test (or empty)", f"`{value}`",
                            row_location(i + 1, sids.iat[i]), "use train, val or test"))
            for i, value in enumerate(split) if value and value not in SPLITS]


def _missing_columns(frame: pd.DataFrame, path: Path, require_targets: bool
                     ) -> tuple[list[str], Problems]:
    fixes = {"pet": "add it (leave cells empty for subjects without PET)",
             "target": "add it, or read with require_targets=False for prediction"}
    required = [c for c in REQUIRED_COLUMNS if require_targets or c != "target"]
    missing = [c for c in required if c not in frame.columns]
    return missing, [(0, problem("manifest columns", f"to include `{name}`",
                                 f"columns {list(frame.columns)}", str(path), fixes.get(name)))
                     for name in missing]


def validate_manifest(path: str | Path, clinical_columns: list[str] | None = None,
                      require_targets: bool = True, check_images: bool = True,
                      session_order_column: str | None = None,
                      ) -> tuple[Cohort | None, list[str]]:
    """Read a manifest and collect every problem without raising.

    Parameters are those of :func:`read_manifest`.

    Returns
    -------
    tuple of (Cohort or None, list of str)
        The cohort as far as it could be built (bad cells become NaN; ``None``
        when the file or a required column is missing) and the problems, in
        row order (manifest-level problems first).
    """
    path = Path(path).expanduser().absolute()
    frame, fatal = _read_csv(path)
    if frame is None:
        return None, fatal
    if len(frame) == 0:
        return None, [problem("manifest", "a CSV with at least one data row",
                              "a header only (0 rows)", str(path))]
    missing, problems = _missing_columns(frame, path, require_targets)
    clinical, ignored, found = _pick_clinical(frame, clinical_columns)
    problems += found
    sessions = "session_id" in frame.columns
    if "session_rank" in frame.columns:  # computed from the session order (Cohort.table)
        problems.append((0, problem("manifest column", "a name other than `session_rank`, which "
                                    "the workbench computes from the session order",
                                    "`session_rank`", str(path), "rename the column")))
    sids, found = _check_ids(frame, path, sessions)
    problems += found
    table = pd.DataFrame({"subject_id": sids})
    if sessions:
        table["session_id"], table["session_rank"], found = check_sessions(
            frame, sids, path, session_order_column)
        problems += found
    exists = pd.DataFrame(index=table.index)
    for col in ("mri", "pet"):
        table[col], exists[col], found = _check_paths(frame, sids, path.parent, col)
        problems += found
    table["target"], found = _check_target(frame, sids, require_targets)
    problems += found
    numeric, found = _check_numeric(
        frame, sids, list(dict.fromkeys((["age"] if "age" in frame else []) + clinical)))
    problems += found
    for col in ("diagnosis", "site", "age", "sex", "split"):
        if col == "age":
            table[col] = numeric.get("age", np.nan)
        else:
            table[col] = frame[col].fillna("") if col in frame else ""
    problems += _check_split(table["split"], sids)
    extra = {col: numeric[col] for col in clinical if col != "age"}
    table = pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)
    if check_images:
        problems += _check_images(table, exists)
    problems.sort(key=lambda item: item[0])
    empty = [c for c in frame.columns if c not in RESERVED_COLUMNS and frame[c].isna().all()]
    cohort = None if missing else Cohort(table, clinical, path, ignored, empty)
    return cohort, [p for _, p in problems]


def read_manifest(path: str | Path, clinical_columns: list[str] | None = None,
                  require_targets: bool = True, check_images: bool = True,
                  session_order_column: str | None = None) -> Cohort:
    """Read and validate a cohort manifest.

    Parameters
    ----------
    path
        The manifest CSV.
    clinical_columns
        Clinical feature columns to use; ``None`` takes every non-reserved,
        mostly numeric column (``age`` included).
    require_targets
        Whether every subject needs a ``target`` (``False`` for prediction).
    check_images
        Whether to load each volume once (:func:`~gazimed_lab.data.images.load_volume`).
    session_order_column
        With a ``session_id`` column: a numeric column that orders each subject's
        sessions (``data.session_order_column``); ``None``: the natural order of the
        session ids (see :mod:`~gazimed_lab.data.sessions`).

    Returns
    -------
    Cohort
        The validated cohort.

    Raises
    ------
    ManifestError
        Listing every problem found, one per line.
    """
    cohort, problems = validate_manifest(path, clinical_columns, require_targets, check_images,
                                         session_order_column)
    if problems or cohort is None:
        raise ManifestError(problems, Path(path))
    return cohort
