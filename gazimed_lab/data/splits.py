"""Subject-level train / val / test splits, stratified by diagnosis (and site).

Splits are made over ``subject_id``: the test set is held out first, then the
rest is split into train and val, either once (``val_fraction``) or by stratified
k-fold (``n_folds > 1``, the val set being fold ``fold``).

Stratification is by class first (``target > 0.5``, the rule of the metrics):
each class gets its proportional share of a held-out split, at least one subject
when the split holds two or more and the class has subjects to spare (the later
splits keep one of each class), so every split of a cohort with both classes
holds both as soon as each class has three subjects. Inside a class, subjects are
drawn stratified by diagnosis x site where every group is large enough, then by
diagnosis, then at random. Without targets the same fallbacks apply to the whole
table. K-fold stratifies by class x diagnosis x site, class x diagnosis, class,
then nothing. Equal seeds give equal splits, whatever the row order. A fixed
``split`` column in the manifest (``train`` / ``val`` / ``test``) is honoured as
given.

With several sessions per subject (a ``session_id`` column), the subjects are split,
stratified by each subject's baseline session (the first by session order), and every
session follows its subject: no subject is in two splits. A training subject keeps
every session; a validation or test subject keeps the sessions ``data.eval_sessions``
selects (the first by default, as ClinicaDL does; or the last, or all).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from gazimed_lab.config import EVAL_SESSIONS, DataConfig, SystemConfig
from gazimed_lab.data.sessions import RANK, has_sessions, select_sessions, session_ranks

__all__ = [
    "SPLIT_COLUMNS",
    "SPLIT_NAMES",
    "SplitError",
    "check_disjoint",
    "check_training_splits",
    "make_splits",
    "write_splits",
]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
#: Columns written to ``run_dir/splits/<name>.csv`` (those present in the table).
SPLIT_COLUMNS = ("subject_id", "session_id", "target", "diagnosis", "site", "age", "sex")
# make_splits' defaults are the config's (typed once, in gazimed_lab/config.py).
_DATA, _SYSTEM = DataConfig(), SystemConfig()


class SplitError(ValueError):
    """Splits are not valid (overlap, unknown split value, bad fold settings)."""


def _labels(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(["all"] * len(table), index=table.index)
    return table[column].fillna("NA").astype(str).replace("", "NA")


def _strata_candidates(
    table: pd.DataFrame, by_class: bool = False
) -> list[tuple[str, np.ndarray | None]]:
    """Stratification labels to try, most specific first, ending with none."""
    dx = _labels(table, "diagnosis")
    site = _labels(table, "site")
    found = [
        ("diagnosis x site", (dx + " x " + site).to_numpy()),
        ("diagnosis", dx.to_numpy()),
    ]
    if by_class:
        cls = _classes(table)
        if cls.isin(_CLASSES).any():
            found = [(f"class x {name}", (cls + " x " + labels).to_numpy())
                     for name, labels in found] + [("class", cls.to_numpy())]
    return [*found, ("none", None)]


#: A subject is positive when its target is above this (the rule of the metrics).
POSITIVE_ABOVE = 0.5
_CLASSES = ("negative", "positive")


def _classes(table: pd.DataFrame) -> pd.Series:
    """``negative`` / ``positive`` (target > POSITIVE_ABOVE) / ``unknown`` per row."""
    if "target" not in table.columns:
        return pd.Series(["unknown"] * len(table), index=table.index)
    target = pd.to_numeric(table["target"], errors="coerce")
    out = np.where(target > POSITIVE_ABOVE, "positive", "negative")
    return pd.Series(np.where(target.isna(), "unknown", out), index=table.index)


def _count(fraction: float, n: int) -> int:
    """Whole subjects for a fraction: at least one when the fraction is positive."""
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def _class_quotas(counts: dict[str, int], size: int, keep: int) -> dict[str, int]:
    """Subjects of each class to hold out: proportional, both classes when possible.

    ``keep`` is how many subjects of each class the rest must keep (one for train,
    one more when a val split is still to be drawn from it). A class gets at least
    one held-out subject when ``size >= 2`` and it has more than ``keep``.
    """
    n = sum(counts.values())
    floor = {k: int(size >= 2 and k in _CLASSES and c > keep) for k, c in counts.items()}
    for spare in (keep, 1, 0):  # relax what the rest keeps only when size demands it
        ceiling = {k: c - (min(spare, c) if k in _CLASSES else 0) for k, c in counts.items()}
        if sum(ceiling.values()) >= size:
            break
    quota = {k: min(floor[k], ceiling[k]) for k in counts}
    while sum(quota.values()) < size:
        open_ = [k for k in sorted(counts) if quota[k] < ceiling[k]]
        # the class furthest below its proportional share; ties by name (deterministic)
        best = max(open_, key=lambda k: (size * counts[k] / n - quota[k], k))
        quota[best] += 1
    return quota


def _stratified_draw(
    table: pd.DataFrame, size: int, seed: int, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw ``size`` rows, stratified by diagnosis x site, diagnosis, or at random."""
    if size <= 0:
        return table, table.iloc[:0]
    if size >= len(table):
        return table.iloc[:0], table
    for name, labels in _strata_candidates(table):
        try:
            rest, held = train_test_split(
                table, test_size=size, random_state=seed, shuffle=True, stratify=labels
            )
        except ValueError:
            continue  # a group too small for this stratification: try a coarser one
        log.debug("%s split stratified by %s", what, name)
        return rest, held
    raise AssertionError("unreachable: unstratified split cannot fail")  # pragma: no cover


def _split_off(
    table: pd.DataFrame, size: int, seed: int, what: str, keep: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``size`` rows off ``table``: by class (see :func:`_class_quotas`), then strata."""
    if size <= 0:
        return table, table.iloc[:0]
    if size >= len(table):
        raise SplitError(
            f"`{what}` split must leave subjects for training, got {size} of {len(table)} "
            "subjects; lower data.val_fraction / data.test_fraction"
        )
    classes = _classes(table)
    counts = {str(k): int(v) for k, v in classes.value_counts().items()}
    if set(counts) <= {"unknown"}:
        return _stratified_draw(table, size, seed, what)
    quotas = _class_quotas(counts, size, keep)
    rests, helds = [], []
    for name in sorted(counts):
        rest, held = _stratified_draw(table[classes == name], quotas[name], seed,
                                      f"{what} ({name})")
        rests.append(rest)
        helds.append(held)
    log.debug("%s split by class: %s", what, quotas)
    return pd.concat(rests), pd.concat(helds)


def _kfold_split(
    table: pd.DataFrame, n_folds: int, fold: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train / val for fold ``fold`` of a stratified k-fold over ``table``."""
    if n_folds > len(table):
        raise SplitError(
            f"`data.n_folds` must be at most the number of non-test subjects, got {n_folds} "
            f"for {len(table)} subjects"
        )
    for name, labels in _strata_candidates(table, by_class=True):
        if labels is None:
            splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
            folds = list(splitter.split(table))
        else:
            if pd.Series(labels).value_counts().min() < n_folds:
                continue
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            folds = list(splitter.split(table, labels))
        log.debug("k-fold stratified by %s", name)
        train_idx, val_idx = folds[fold]
        return table.iloc[train_idx], table.iloc[val_idx]
    raise AssertionError("unreachable")  # pragma: no cover


def _fixed_splits(table: pd.DataFrame, manifest: str) -> dict[str, pd.DataFrame] | None:
    """Read the splits of a manifest ``split`` column; None when it is absent or empty."""
    if "split" not in table.columns:
        return None
    values = table["split"].fillna("").astype(str).str.strip().str.lower()
    if (values == "").all():
        return None
    bad = ~values.isin(SPLIT_NAMES)
    if bad.any():
        pairs = list(zip(table.loc[bad, "subject_id"], table.loc[bad, "split"]))
        shown = ", ".join(f"{sid} ({raw!r})" for sid, raw in pairs[:10])
        raise SplitError(
            f"`split` must be one of train/val/test for every subject when the column is "
            f"used, got {len(pairs)} other value(s): {shown} ({manifest}); fill it in for "
            "every row or remove the column"
        )
    log.info("using the fixed `split` column of %s", manifest)
    return {name: table[values == name] for name in SPLIT_NAMES}


def make_splits(
    table: pd.DataFrame,
    seed: int = _SYSTEM.seed,
    val_fraction: float = _DATA.val_fraction,
    test_fraction: float = _DATA.test_fraction,
    n_folds: int = _DATA.n_folds,
    fold: int = _DATA.fold,
    manifest: str = "manifest",
    eval_sessions: str = _DATA.eval_sessions,
) -> dict[str, pd.DataFrame]:
    """Split a cohort table into train / val / test at subject level.

    Parameters
    ----------
    table
        One row per subject (or per subject and session, with a ``session_id``
        column), with ``subject_id`` and ideally ``diagnosis``,
        ``site`` and an optional ``split`` column (``train``/``val``/``test``;
        when filled in it is used as is).
    seed
        Random seed; equal seeds give equal splits (independent of row order).
        Default: ``system.seed`` of the config.
    val_fraction, test_fraction
        Fractions of all subjects for val and test (rounded to whole subjects).
        Defaults: ``data.val_fraction`` and ``data.test_fraction`` of the config.
    n_folds, fold
        With ``n_folds > 1`` the test set is held out first, then fold ``fold``
        of a stratified k-fold over the remaining subjects is the val set
        (defaults: the config's, k-fold off).
    manifest
        Name used in error messages.
    eval_sessions
        With sessions: which sessions of a val or test subject are kept
        (``first``, ``last`` or ``all``; ``data.eval_sessions``). Training subjects
        keep all. The order is the table's ``session_rank`` (from the manifest), else
        the natural order of the session ids.

    Returns
    -------
    dict of str to DataFrame
        ``{"train", "val", "test"}`` tables (rows of ``table``, sorted by
        subject id, then session order), with a ``split`` column set to the split name.

    Raises
    ------
    SplitError
        Unknown split values, bad fold settings, a repeated subject (or
        subject and session), or a subject in two splits.
    """
    if n_folds == 1 or n_folds < 0:
        raise SplitError(f"`data.n_folds` must be 0 (off) or >= 2, got {n_folds}")
    if n_folds > 1 and not 0 <= fold < n_folds:
        raise SplitError(f"`data.fold` must be in [0, {n_folds}), got {fold}")
    if eval_sessions not in EVAL_SESSIONS:
        raise SplitError(f"`data.eval_sessions` must be one of {', '.join(EVAL_SESSIONS)}, "
                         f"got {eval_sessions!r}")
    sessions = has_sessions(table)
    rows = _with_ranks(table, manifest) if sessions else table
    subjects = rows[rows[RANK] == 0] if sessions else rows
    ids = subjects["subject_id"].astype(str)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise SplitError(f"`subject_id` must be unique, got repeated ids {dup[:10]} ({manifest}); "
                         "add a `session_id` column for several sessions per subject")
    ordered = subjects.assign(_sid=ids).sort_values("_sid", kind="stable").drop(columns="_sid")
    n = len(ordered)

    fixed = _fixed_splits(ordered, manifest)
    if fixed is not None:
        test = fixed["test"]
        if n_folds > 1:
            rest = pd.concat([fixed["train"], fixed["val"]]).sort_values("subject_id")
            train, val = _kfold_split(rest, n_folds, fold, seed)
        else:
            train, val = fixed["train"], fixed["val"]
    else:
        # The rest keeps two of each class when a val split is still to be drawn from it.
        keep = 2 if n_folds > 1 or val_fraction > 0 else 1
        rest, test = _split_off(ordered, _count(test_fraction, n), seed, "test", keep)
        if n_folds > 1:
            train, val = _kfold_split(rest, n_folds, fold, seed)
        else:
            train, val = _split_off(rest, _count(val_fraction, n), seed, "val")

    splits = {
        name: part.sort_values("subject_id", kind="stable").assign(split=name)
        for name, part in zip(SPLIT_NAMES, (train, val, test))
    }
    if sessions:
        splits = _with_sessions(splits, rows, eval_sessions)
    check_disjoint(splits)
    covered = sum(part["subject_id"].nunique() for part in splits.values())
    if covered != n:
        raise SplitError(f"splits must cover every subject, got {covered} of {n} ({manifest})")
    return splits


def _with_ranks(table: pd.DataFrame, manifest: str) -> pd.DataFrame:
    """Check a session table (pairs unique, one split per subject) and rank its sessions."""
    pairs = table["subject_id"].astype(str) + "\x00" + table["session_id"].astype(str)
    dup = pairs[pairs.duplicated()].unique().tolist()
    if dup:
        shown = [p.replace("\x00", " / ") for p in dup[:10]]
        raise SplitError(f"(subject_id, session_id) must be unique, got repeated pairs {shown} "
                         f"({manifest})")
    if "split" in table.columns:
        values = table["split"].fillna("").astype(str).str.strip().str.lower()
        filled = values != ""  # an empty cell is unknown: the subject's split applies
        per_subject = values[filled].groupby(table["subject_id"].astype(str)[filled]).nunique()
        mixed = per_subject[per_subject > 1].index.tolist()
        if mixed:
            raise SplitError(
                f"`split` must be one value per subject across its sessions, got several for "
                f"{mixed[:10]} ({manifest}); give every session of a subject the same split")
    if RANK in table.columns:
        return table
    return table.assign(**{RANK: session_ranks(table)})


def _with_sessions(subject_splits: dict[str, pd.DataFrame], rows: pd.DataFrame,
                   eval_sessions: str) -> dict[str, pd.DataFrame]:
    """Every session of each split's subjects (val / test: those ``eval_sessions`` keeps)."""
    out = {}
    for name, part in subject_splits.items():
        members = rows[rows["subject_id"].astype(str).isin(set(part["subject_id"].astype(str)))]
        if name != "train":
            members = select_sessions(members, eval_sessions)
        members = members.assign(_sid=members["subject_id"].astype(str)).sort_values(
            ["_sid", RANK], kind="stable").drop(columns="_sid")
        out[name] = members.assign(split=name)
    return out


def check_disjoint(splits: dict[str, pd.DataFrame]) -> None:
    """Raise :class:`SplitError` naming every subject that is in two splits.

    A subject may have several rows (sessions) in one split.
    """
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for name, part in splits.items():
        for sid in dict.fromkeys(part["subject_id"].astype(str)):
            if sid in seen:
                clashes.append(f"{sid} ({seen[sid]} and {name})")
            else:
                seen[sid] = name
    if clashes:
        raise SplitError(
            f"each subject must be in exactly one split, got {len(clashes)} in two: "
            + ", ".join(clashes[:20])
        )


#: Above this absolute Pearson correlation with the target (training split) a clinical
#: column is taken for a copy of the label.
MAX_TARGET_CORRELATION = 0.99
def _class_problem(name: str, part: pd.DataFrame, manifest: str, why: str) -> str | None:
    target = pd.to_numeric(part["target"], errors="coerce").dropna()
    if len(target) == 0:
        return None
    n_pos = int((target > POSITIVE_ABOVE).sum())
    n_neg = len(target) - n_pos
    if n_pos and n_neg:
        return None
    return (f"`{name} split targets` must hold both classes (target > {POSITIVE_ABOVE:g} and "
            f"<= {POSITIVE_ABOVE:g}), got {n_neg} <= {POSITIVE_ABOVE:g} and {n_pos} > "
            f"{POSITIVE_ABOVE:g} ({manifest}); {why}")


def check_training_splits(
    splits: dict[str, pd.DataFrame],
    clinical_columns: list[str],
    manifest: str = "manifest",
    monitor: str | None = None,
    max_corr: float = MAX_TARGET_CORRELATION,
) -> None:
    """Refuse splits that cannot train a meaningful model, before any training.

    Checks, on the splits made by :func:`make_splits`:

    * the training targets hold both classes (``target > 0.5`` and ``<= 0.5``):
      one class (or one value) gives a model and metrics that mean nothing;
    * when ``monitor`` selects checkpoints on AUROC (``"auroc"`` in its name) and
      the validation split is not empty, it holds both classes too;
    * no clinical column copies the target on the training split: an absolute
      Pearson correlation above ``max_corr`` means the label leaks into the inputs.

    Parameters
    ----------
    splits
        ``{"train", "val", "test"}`` tables with ``target`` and the clinical columns.
    clinical_columns
        The clinical feature columns the model will read.
    manifest
        Name used in messages.
    monitor
        The checkpoint metric (``trainer.monitor``), e.g. ``"val/auroc"``.
    max_corr
        Correlation above which a column counts as a copy of the target.

    Raises
    ------
    SplitError
        Every problem found, one per line, naming the split, the class counts
        or the column.
    """
    problems = []
    train = splits["train"]
    found = _class_problem("train", train, manifest,
                           "add subjects of the missing class, or check the `target` column")
    if found:
        problems.append(found)
    val = splits.get("val")
    if monitor and "auroc" in monitor and val is not None and len(val):
        found = _class_problem(
            "val", val, manifest,
            f"checkpoint selection on `{monitor}` needs both; change system.seed or "
            "data.val_fraction, or fix the manifest's `split` column")
        if found:
            problems.append(found)
    target = pd.to_numeric(train["target"], errors="coerce")
    for col in clinical_columns:
        if col not in train.columns:
            continue
        values = pd.to_numeric(train[col], errors="coerce")
        both = target.notna() & values.notna()
        if both.sum() < 3 or values[both].std() == 0 or target[both].std() == 0:
            continue
        corr = float(np.corrcoef(values[both], target[both])[0, 1])
        if abs(corr) > max_corr:
            problems.append(
                f"`{col}` must not copy the target, got a correlation {corr:.3f} with "
                f"`target` over {int(both.sum())} subjects of the train split ({manifest}); "
                "drop the column (or leave it out of data.clinical_columns)")
    if problems:
        raise SplitError("\n".join(problems))


def write_splits(splits: dict[str, pd.DataFrame], run_dir: str | Path) -> Path:
    """Write ``run_dir/splits/{train,val,test}.csv`` and return that folder."""
    folder = Path(run_dir) / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        columns = [c for c in SPLIT_COLUMNS if c in part.columns]
        part[columns].to_csv(folder / f"{name}.csv", index=False)
    return folder
