"""Safe output paths: identifiers at the door, names from data, writes that stay in their root.

Every file the workbench writes lies under a folder the user named (a run folder,
a cache folder, an output folder). Three helpers keep it so:

* :func:`check_subject_id` (used by the manifest reader): a subject id is 1 to 128
  characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit
  (:data:`SAFE_ID_RULE`), so it can be used as a file name as it is.
* :func:`safe_name`: any text (a diagnosis, a site, a group) as one safe file-name
  component; safe text is kept, anything else is percent-encoded (``a/b`` ->
  ``a%2Fb``, ``..`` -> ``%2E%2E``), so two different texts never share a name.
* :func:`output_path`: ``root / part / ...``, refused when it would leave ``root``
  (``..``, an absolute part, a symbolic link pointing out).

:func:`atomic_write` writes a file under a temporary name beside it, then renames
it, so a crash or a full disk never leaves a truncated file under the real name,
and :func:`check_not_input` refuses an output path that is one of the inputs.
:func:`is_secondary_process` tells a multi-process run's other processes (which write
nothing) before any trainer exists.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "SAFE_ID_RULE",
    "OutputPathError",
    "atomic_write",
    "check_not_input",
    "check_subject_id",
    "describe_os_error",
    "is_secondary_process",
    "output_path",
    "path_state",
    "safe_name",
]

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The documented character set of subject identifiers.
SAFE_ID_RULE = ("1-128 characters from letters, digits, '.', '_' and '-', starting with a "
                "letter or a digit")


#: Environment variables that hold a process's rank, in the order Lightning reads them
#: (``RANK``: torchrun's global rank; ``LOCAL_RANK`` before ``SLURM_PROCID``, which may be
#: set without SLURM managing the processes; LSF's ``JSM_NAMESPACE_RANK``).
RANK_VARIABLES: tuple[str, ...] = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
#: The node's index (Lightning's launcher, torchrun): a node other than 0 holds no rank 0.
NODE_VARIABLES: tuple[str, ...] = ("NODE_RANK", "GROUP_RANK")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def is_secondary_process() -> bool:
    """Whether this is a process other than global rank 0 of a multi-process run.

    Read from the environment, so it holds before a trainer exists: the first of
    :data:`RANK_VARIABLES` that is set (Lightning's order) above 0, or a node index
    (:data:`NODE_VARIABLES`) above 0. Lightning's DDP launcher starts the other
    processes by running the same command again, and the code before and between
    ``trainer.fit`` calls (the folds of a cross-validation, the runs of an ablation)
    runs in every process; only global rank 0 keeps a run folder's bookkeeping.
    """
    ranks = [r for r in (_env_int(n) for n in RANK_VARIABLES) if r is not None]
    if os.environ.get("RANK", "").strip():  # torchrun: the global rank itself
        return bool(ranks) and ranks[0] > 0
    if ranks and ranks[0] > 0:
        return True
    return any((_env_int(n) or 0) > 0 for n in NODE_VARIABLES)


class OutputPathError(ValueError):
    """An output path would leave its root folder, or would overwrite an input."""


def check_subject_id(sid: str) -> str | None:
    """Return what is wrong with a subject id as a file name, or ``None`` when it is safe.

    Examples
    --------
    >>> check_subject_id("sub-001") is None
    True
    >>> check_subject_id("../x")
    "characters other than letters, digits, '.', '_', '-': '/'"
    """
    if _SAFE.fullmatch(sid):
        return None
    if len(sid) > 128:
        return f"{len(sid)} characters"
    bad = sorted({c for c in sid if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        return "characters other than letters, digits, '.', '_', '-': " + ", ".join(
            repr(c) for c in bad)
    return f"a first character {sid[:1]!r}"


def safe_name(text: object) -> str:
    """Turn any text into one file-name component that cannot leave its folder.

    Safe text (see :data:`SAFE_ID_RULE`) is returned unchanged; otherwise every
    character other than letters, digits, ``_`` and ``-`` is percent-encoded
    (UTF-8), which is reversible, so distinct texts give distinct names.

    Examples
    --------
    >>> safe_name("sub-001"), safe_name("../x"), safe_name("a/b"), safe_name("")
    ('sub-001', '%2E%2E%2Fx', 'a%2Fb', '%')
    """
    value = str(text)
    if _SAFE.fullmatch(value):
        return value
    if not value:
        return "%"
    out = []
    for char in value:
        if char.isascii() and (char.isalnum() or char in "_-"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)[:240]


def output_path(root: str | Path, *parts: str | Path) -> Path:
    """Build ``root / parts...`` and refuse a path that leaves ``root``.

    Parameters
    ----------
    root
        The folder the user named (run, cache or output folder).
    parts
        Path components below it; build those that come from data with
        :func:`safe_name`.

    Returns
    -------
    pathlib.Path
        The absolute path (symbolic links resolved), inside ``root``.

    Raises
    ------
    OutputPathError
        For an absolute part, or a path that resolves outside ``root``.
    """
    base = Path(root).expanduser().resolve()
    for part in parts:
        if Path(part).is_absolute():
            raise OutputPathError(
                f"`output path` must stay inside {base}, got an absolute part `{part}`; build "
                "names from data with gazimed_lab.paths.safe_name")
    target = base.joinpath(*[str(p) for p in parts]).resolve()
    if target != base and not target.is_relative_to(base):
        raise OutputPathError(
            f"`output path` must stay inside {base}, got {target} (from parts "
            f"{[str(p) for p in parts]}); build names from data with "
            "gazimed_lab.paths.safe_name")
    return target


def path_state(path: str | Path) -> str:
    """Describe what a path that should be a file is instead (for "got ..." in messages).

    Examples
    --------
    >>> path_state("/")
    'a directory'
    >>> path_state("/no/such/file")
    'a missing path'
    """
    path = Path(path)
    if path.is_dir():
        return "a directory"
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if path.exists() and not path.is_file():
        return "not a regular file"
    if path.is_file():
        return "a file"
    return "a missing path"


def check_not_input(out: str | Path, inputs: Mapping[str, str | Path | None],
                    what: str = "out") -> Path:
    """Refuse an output path that is one of the inputs (same file once resolved).

    Raises
    ------
    OutputPathError
        Naming the input it would overwrite.
    """
    path = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        if value is None:
            continue
        source = Path(value).expanduser().resolve()
        same = source == path or (source.exists() and path.exists()
                                  and os.path.samefile(source, path))
        if same:
            raise OutputPathError(
                f"`{what}` must not be an input, got the {name} {source}; choose another "
                "output file, e.g. predictions.csv")
    if path.is_dir():
        raise OutputPathError(f"`{what}` must be a file path, got a directory ({path}); name a "
                              "file inside it, e.g. predictions.csv")
    return path


_CAUSES = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "a read-only file system",
           errno.EDQUOT: "the disk quota is exceeded", errno.EISDIR: "it is a directory",
           errno.ENOTDIR: "a part of the path is a file, not a directory"}


def _cause(exc: OSError) -> str:
    return _CAUSES.get(exc.errno or 0, exc.strerror or str(exc) or type(exc).__name__)


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: the path and the cause, then what to do.

    Examples
    --------
    >>> describe_os_error(OSError(28, "No space left on device", "/runs/a/x.csv"))
    '`/runs/a/x.csv` could not be written: the disk is full; free space or choose another folder'
    """
    if not exc.filename:  # already one of ours, or a message without a path
        return exc.strerror or str(exc)
    fix = {errno.ENOSPC: "free space or choose another folder",
           errno.EDQUOT: "free space or choose another folder",
           errno.EISDIR: "name a file, not a folder"}.get(
        exc.errno or 0, "choose a folder you can write to (e.g. another system.run_dir)")
    return f"`{exc.filename}` could not be written: {_cause(exc)}; {fix}"


def atomic_write(path: str | Path, write: Callable[[Path], object], what: str = "file") -> Path:
    """Write a file through a temporary name beside it, then rename it into place.

    Parameters
    ----------
    path
        The final file; its folder is created.
    write
        Called with the temporary path; writes the whole file there.
    what
        Name in error messages.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        With a one-line message naming the path and the cause (read-only folder,
        full disk, a directory in the way); the original file, if any, is left
        as it was and no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"`{what}` must be a file path, got a directory "
                                f"({path}); name a file inside it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        cause = _cause(exc)
        raise type(exc)(exc.errno, f"`{what}` could not be written to {path}: {cause}; free "
                        "space or choose a writable folder") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
