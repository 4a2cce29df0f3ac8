"""On-disk cache of preprocessed volumes: one ``.npy`` (C, D, H, W) per subject.

The cache key hashes everything the preprocessed array depends on: each input
file's path, size, ``mtime_ns`` and content hash, the grid, the channels, the
normalization settings, the storage dtype and :data:`CACHE_VERSION`, so that
any change gives a new key. Arrays are stored compactly (float16 by default)
and read back memory-mapped. Writes are atomic (temporary file +
:func:`os.replace`); an unreadable or wrongly shaped entry is rebuilt.

**Several builders at once** (DDP ranks, the nodes of a cluster sharing the cache
folder, two notebooks): an entry is built under an exclusive lock on
``volumes/<key>.lock`` (``flock``; on NFS the kernel maps it to POSIX locks). A
process that finds the lock held builds other missing entries first, then waits
and reads the entry the holder wrote: no entry is built twice, no reader sees half
of one, and builders on several nodes share the work without talking to each
other. The lock goes with the process that holds it (a killed builder does not
block the others) and its file is removed once the entry is written. On a file
system without locks the cache warns once and still never corrupts an entry
(writes are atomic renames of complete files; two builders of one entry write
identical bytes), but may build it twice.
:func:`~gazimed_lab.data.cache_build.cache_subjects` fills the cache for a
table of subjects, in several processes with ``data.cache_workers``.

Each entry's JSON sidecar also records how its volumes were conformed
(``qa.grid_actions``: on the grid, or resampled from which grid) and the flags of
images accepted although probably not in MNI space (``qa.flagged``). The switch
``data.accept_flagged_images`` is not part of the key: the array is the same
either way, and :func:`~gazimed_lab.data.cache_build.cache_subjects` refuses a
flagged entry on every read unless the switch is on. Entries written before these
records existed are rebuilt once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

import numpy as np

from gazimed_lab.config import CACHE_DTYPES

__all__ = [
    "CACHE_VERSION",
    "CacheFullError",
    "EntryBusy",
    "VolumeCache",
    "file_fingerprint",
    "volume_key",
]

log = logging.getLogger(__name__)

#: Bump when preprocessing code changes in a way that changes cached arrays (or their QA
#: records). 2: MRI and PET may lie on different grids; the pair's world-space agreement
#: is checked and recorded (an entry of version 1 never had that check).
CACHE_VERSION = "gazimed-volumes-2"

_CONTENT_MEMO: dict[tuple[str, int, int, int, int], str] = {}


def _content_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Path, size, ``mtime_ns`` and content hash of a file.

    The content hash is remembered within a process per (path, inode, size,
    mtime_ns, ctime_ns), so that repeated setups do not re-read unchanged files;
    any write changes ``ctime_ns``, even when ``mtime`` is restored.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    memo_key = (str(resolved), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    content = _CONTENT_MEMO.get(memo_key)
    if content is None:
        content = _content_hash(resolved)
        _CONTENT_MEMO[memo_key] = content
    return {
        "path": str(resolved),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "blake2b": content,
    }


def volume_key(
    mri: str | Path,
    pet: str | Path | None,
    grid_key: str,
    channels: int,
    settings: dict[str, Any],
) -> str:
    """Hex key of one subject's preprocessed array.

    Parameters
    ----------
    mri, pet
        Input files (``pet`` None or "" when missing or unused).
    grid_key
        :meth:`gazimed_lab.data.grid.Grid.key` of the target grid.
    channels
        Number of image channels stored.
    settings
        Normalization and storage settings (e.g. ``pet_reference``, dtype).
    """
    payload = {
        "version": CACHE_VERSION,
        "mri": file_fingerprint(mri),
        "pet": file_fingerprint(pet) if pet else None,
        "grid": grid_key,
        "channels": int(channels),
        "settings": settings,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CacheFullError(OSError):
    """The cache folder's disk is full: reported once, not once per subject."""


_WARNED_NO_LOCKS: set[str] = set()


class EntryBusy(Exception):
    """Another process holds the entry's lock (raised only when not waiting for it)."""


def _lock(path: Path, wait: bool = True) -> int | None:
    """Hold an exclusive ``flock`` on ``path`` (created if absent); return its descriptor.

    The holder unlinks the file before releasing it (:func:`_unlock`), so a waiter that
    wakes up on an unlinked file tries again on the current one. ``None`` when the file
    system has no locks (warned once per folder). Without ``wait``, a lock held by
    another process raises :class:`EntryBusy` at once.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is None:
                raise OSError(errno.ENOLCK, "no fcntl module")
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise EntryBusy(str(path)) from None
        except OSError as exc:
            os.close(fd)
            if str(path.parent) not in _WARNED_NO_LOCKS:
                _WARNED_NO_LOCKS.add(str(path.parent))
                log.warning("cache folder %s does not support file locks (%s): processes "
                            "building the same entry at once may each build it (entries stay "
                            "whole)", path.parent, exc)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # the holder removed it meanwhile: lock the current file


def _unlock(path: Path, fd: int | None) -> None:
    """Remove the lock file, then release the lock (see :func:`_lock`)."""
    if fd is None:
        return
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _disk_full(exc: OSError) -> bool:
    # numpy reports a short write as "N requested and M written", without an errno.
    text = str(exc)
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        "requested and" in text and "written" in text)


class VolumeCache:
    """Preprocessed (C, D, H, W) arrays plus a modality mask, keyed by :func:`volume_key`.

    Parameters
    ----------
    root
        Cache folder (``data.cache_dir``); arrays go to ``root/volumes``.
    dtype
        Storage dtype, ``float16`` (default) or ``float32``.

    Attributes
    ----------
    builds, hits
        How many entries this object built and how many it read back.
    """

    def __init__(self, root: str | Path, dtype: str = "float16") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"`data.cache_dtype` must be one of {CACHE_DTYPES}, got {dtype!r}")
        self.root = Path(root) / "volumes"
        self.dtype = np.dtype(dtype)
        self.builds = 0
        self.hits = 0

    def array_path(self, key: str) -> Path:
        """Path of the ``.npy`` array of ``key``."""
        return self.root / f"{key}.npy"

    def meta_path(self, key: str) -> Path:
        """Path of the JSON sidecar (modality mask, shape) of ``key``."""
        return self.root / f"{key}.json"

    def lock_path(self, key: str) -> Path:
        """Path of the lock file held while ``key`` is built."""
        return self.root / f"{key}.lock"

    def load(self, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """Memory-mapped array and modality mask, or None if absent or corrupt."""
        array_path, meta_path = self.array_path(key), self.meta_path(key)
        if not (array_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            mask = np.asarray(meta["modality_mask"], dtype=np.float32)
            arr = np.load(array_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            log.warning("rebuilding unreadable cache entry %s: %s", array_path, exc)
            return None
        if not isinstance(meta.get("qa"), dict):
            log.info("rebuilding cache entry %s: written before grid actions and image "
                     "flags were recorded", array_path)
            return None
        if tuple(arr.shape) != tuple(shape) or arr.dtype != self.dtype or mask.shape != (2,):
            log.warning(
                "rebuilding cache entry %s: shape %s dtype %s, expected %s %s",
                array_path, arr.shape, arr.dtype, tuple(shape), self.dtype,
            )
            return None
        return arr, mask

    def read_info(self, key: str) -> dict[str, Any]:
        """Read the JSON sidecar of ``key`` (subject, files, ``qa`` records); {} if unreadable."""
        try:
            meta = json.loads(self.meta_path(key).read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def save(self, key: str, arr: np.ndarray, mask: np.ndarray, info: dict[str, Any]) -> None:
        """Store ``arr`` (cast to the cache dtype) and ``mask`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = np.asarray(arr)
        if self.dtype == np.float16:
            limit = float(np.finfo(np.float16).max)
            data = np.clip(data, -limit, limit)
        data = np.ascontiguousarray(data, dtype=self.dtype)
        meta = {"modality_mask": [float(v) for v in mask], "shape": list(data.shape),
                "dtype": str(self.dtype), "version": CACHE_VERSION, "qa": {}, **info}
        text = json.dumps(meta, indent=1, default=str).encode()
        try:
            _atomic_write(self.array_path(key), lambda fh: np.save(fh, data, allow_pickle=False))
            _atomic_write(self.meta_path(key), lambda fh: fh.write(text))
        except OSError as exc:
            if not _disk_full(exc):
                raise
            try:
                free = f"{shutil.disk_usage(self.root).free / 2**20:.0f} MiB free"
            except OSError:
                free = "free space unknown"
            raise CacheFullError(
                errno.ENOSPC,
                f"`data.cache_dir` must have room for the preprocessed volumes, got a full disk "
                f"at {self.root} ({free}; one volume takes {data.nbytes / 2**20:.1f} MiB); "
                "free space, or set data.cache_dir to a folder on a larger disk") from exc

    def get_or_build(
        self,
        key: str,
        shape: tuple[int, ...],
        build: Callable[[], tuple[np.ndarray, np.ndarray]],
        info: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read ``key`` from the cache, building and storing it first when needed.

        The build runs under the entry's lock: a process that finds another building
        the same entry waits for it and reads its result (see the module docstring), or,
        without ``wait``, raises :class:`EntryBusy` so that it can build other entries first.
        """
        found = self.load(key, shape)
        if found is not None:
            self.hits += 1
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path(key)
        fd = _lock(lock, wait)
        try:
            found = self.load(key, shape)  # written by another process while we waited
            if found is not None:
                self.hits += 1
                return found
            arr, mask = build()
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(
                    f"preprocessed array must have shape {tuple(shape)}, got "
                    f"{tuple(arr.shape)} ({info or key})"
                )
            self.save(key, arr, mask, info or {})
            self.builds += 1
        finally:
            _unlock(lock, fd)
        found = self.load(key, shape)
        if found is None:  # pragma: no cover - disk full or similar
            raise OSError(f"cache entry must be readable after writing, got none ({key})")
        return found
