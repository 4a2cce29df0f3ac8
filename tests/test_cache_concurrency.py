"""Several builders of one cache: processes of one run (data.cache_workers) and of others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cohort_config

from gazimed_lab.data.cache import EntryBusy, VolumeCache, _lock, _unlock
from gazimed_lab.data.cache_build import cache_subjects, entry_key
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.grid import get_grid
from gazimed_lab.data.manifest import ManifestError
from gazimed_lab.data.transforms import preprocess_subject

GRID = get_grid("demo_4mm")


def _table(manifest: Path) -> pd.DataFrame:
    table = pd.read_csv(manifest, keep_default_na=False)
    for col in ("mri", "pet"):
        table[col] = [str(manifest.parent / p) if p else "" for p in table[col]]
    return table


def _entries(cache: VolumeCache) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.root.glob("*.npy"))}


def _leftovers(cache: VolumeCache) -> list[str]:
    return [p.name for p in cache.root.iterdir() if p.suffix in (".tmp", ".lock")]


BUILDER = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    import pandas as pd
    from gazimed_lab.data.cache import VolumeCache
    from gazimed_lab.data.cache_build import cache_subjects
    from gazimed_lab.data.grid import get_grid

    manifest, cache_dir, go, out = sys.argv[1:5]
    table = pd.read_csv(manifest, keep_default_na=False)
    for col in ("mri", "pet"):
        table[col] = [str(Path(manifest).parent / p) if p else "" for p in table[col]]
    cache = VolumeCache(cache_dir)
    Path(out + ".ready").write_text("")
    while not Path(go).exists():  # start together
        time.sleep(0.005)
    cache_subjects(table, cache, get_grid("demo_4mm"), 2, "whole_brain", manifest)
    Path(out).write_text(json.dumps({"builds": cache.builds, "hits": cache.hits}))
''')


@pytest.mark.slow  # two fresh interpreters (about 15 s on 2 busy cores)
def test_two_processes_building_one_cache_build_each_entry_once(tiny_cohort: Path,
                                                               tmp_path: Path) -> None:
    shared, go = tmp_path / "shared", tmp_path / "go"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    # the same subjects in the same order, started together: without the entry locks
    # both build nearly every entry (measured: 26 builds of 16 entries)
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tiny_cohort), str(shared),
                               str(go), str(out)], stderr=subprocess.PIPE, text=True)
             for out in outs]
    deadline = time.monotonic() + 300
    while not all(Path(f"{o}.ready").exists() for o in outs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.write_text("")
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
    counts = [json.loads(o.read_text()) for o in outs]
    n = len(_table(tiny_cohort))
    # every entry built once in all, and read by the other process
    assert sum(c["builds"] for c in counts) == n, counts
    assert all(c["builds"] + c["hits"] == n for c in counts), counts
    cache = VolumeCache(shared)
    assert not _leftovers(cache)
    alone = VolumeCache(tmp_path / "alone")
    cache_subjects(_table(tiny_cohort), alone, GRID, 2, "whole_brain")
    assert _entries(cache) == _entries(alone)  # whole, and the same bytes as one builder's
    for meta in cache.root.glob("*.json"):
        assert json.loads(meta.read_text())["subject_id"].startswith("sub-")
    again = MNIDataModule(cohort_config(tiny_cohort, tmp_path, f"data.cache_dir={shared}"))
    again.setup()
    assert (again.cache.builds, again.cache.hits) == (0, n)


def test_parallel_build_equals_the_serial_one(tiny_cohort: Path, tmp_path: Path) -> None:
    table = _table(tiny_cohort)
    serial, parallel = VolumeCache(tmp_path / "serial"), VolumeCache(tmp_path / "parallel")
    records: dict[str, list[dict[str, str]]] = {"serial": [], "parallel": []}
    one = cache_subjects(table, serial, GRID, 3, "whole_brain", records=records["serial"])
    two = cache_subjects(table, parallel, GRID, 3, "whole_brain", records=records["parallel"],
                         workers=2)
    assert [Path(p).name for p in one[0]] == [Path(p).name for p in two[0]]
    np.testing.assert_array_equal(one[1], two[1])
    assert records["serial"] == records["parallel"]
    assert parallel.builds == serial.builds == len(table)
    assert _entries(serial) == _entries(parallel) and not _leftovers(parallel)
    cache_subjects(table, parallel, GRID, 3, "whole_brain", workers=2)
    assert (parallel.builds, parallel.hits) == (len(table), len(table))
    # through the config; problems are listed per subject as in one process
    bad = tiny_cohort.parent / pd.read_csv(tiny_cohort).loc[2, "mri"]
    bad.write_bytes(bad.read_bytes()[:3000])
    dm = MNIDataModule(cohort_config(tiny_cohort, tmp_path, "data.cache_workers=2"))
    with pytest.raises(ManifestError, match=r"subject `sub-002`: `mri` must be a complete"):
        dm.setup()


def test_a_lock_held_elsewhere_is_waited_for_and_a_dead_ones_file_ignored(
        tmp_path: Path) -> None:
    cache = VolumeCache(tmp_path)
    cache.root.mkdir(parents=True)
    arr = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    built: list[str] = []

    def build() -> tuple[np.ndarray, np.ndarray]:
        built.append("here")
        return arr, np.array([1.0, 0.0])

    held, release = threading.Event(), threading.Event()

    def other_builder() -> None:  # another process's builder (its own open file: own lock)
        fd = _lock(cache.lock_path("k"))
        held.set()
        release.wait(5)
        VolumeCache(tmp_path).save("k", arr * 2, np.array([1.0, 1.0]), {})
        _unlock(cache.lock_path("k"), fd)

    thread = threading.Thread(target=other_builder)
    thread.start()
    assert held.wait(10)
    with pytest.raises(EntryBusy):  # not waiting: told at once
        cache.get_or_build("k", arr.shape, build, wait=False)
    threading.Timer(0.3, release.set).start()
    out, mask = cache.get_or_build("k", arr.shape, build)  # waits for the holder
    thread.join()
    assert not built and (cache.builds, cache.hits) == (0, 1)
    np.testing.assert_array_equal(out, arr * 2)
    np.testing.assert_array_equal(mask, [1.0, 1.0])
    # a lock file left by a killed builder holds no lock: the next build goes ahead
    cache.lock_path("j").write_text("")
    os.utime(cache.lock_path("j"), (0, 0))
    cache.get_or_build("j", arr.shape, build)
    assert built == ["here"] and not _leftovers(cache)


def test_entries_another_process_is_building_are_left_to_it_until_the_rest_are_done(
        tiny_cohort: Path, tmp_path: Path) -> None:
    table = _table(tiny_cohort)
    cache = VolumeCache(tmp_path / "cache")
    cache.root.mkdir(parents=True)
    first = table.iloc[0]
    key = entry_key(first["mri"], first["pet"] or None, GRID, 2, "whole_brain", "float16")
    held = threading.Event()

    def other_builder() -> None:  # holds subject 0 until every other entry is written
        fd = _lock(cache.lock_path(key))
        held.set()
        deadline = time.monotonic() + 60
        while len(list(cache.root.glob("*.npy"))) < len(table) - 1:
            if time.monotonic() > deadline:  # the builder waited for us: give up the entry
                _unlock(cache.lock_path(key), fd)
                return
            time.sleep(0.02)
        arr, mask = preprocess_subject(first["mri"], first["pet"] or None, GRID, 2,
                                       "whole_brain")
        VolumeCache(tmp_path / "cache").save(key, arr, mask, {"subject_id": first["subject_id"]})
        _unlock(cache.lock_path(key), fd)

    thread = threading.Thread(target=other_builder)
    thread.start()
    assert held.wait(10)
    cache_subjects(table, cache, GRID, 2, "whole_brain")
    thread.join()
    assert (cache.builds, cache.hits) == (len(table) - 1, 1)
    assert not _leftovers(cache)

