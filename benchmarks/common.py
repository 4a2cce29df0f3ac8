"""Shared helpers: machine facts, timing statistics, memory readings, suite sizes."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "SIZES",
    "load_now",
    "machine_facts",
    "median",
    "peak_rss_mb",
    "rss_mb",
    "timed",
]

#: The repository root (the folder holding ``benchmarks/``).
REPO = Path(__file__).resolve().parents[1]

#: What each ``--size`` measures. ``full`` is the README's run; ``tiny`` is the CI smoke run.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "repeats": 1,
        # Data path: (label, preset, grid, generated cohort size, subjects used: its first n).
        "throughput": [("demo_4mm", "cpu-demo", "demo_4mm", 12, 12)],
        "workers": [0],
        "epoch_cohort": 12,
        "epoch_sizes": [6, 12],
        # Cache build: the first n subjects of a generated cohort (source grid) resampled to
        # input_grid, conformed to grid; one process vs one per core.
        "cache_build": {"source_grid": "demo_4mm", "cohort": 12, "n": 4,
                        "input_grid": "mni152_2mm", "grid": "demo_4mm", "channels": 2},
        "train_epochs": True,
        # Model: (label, preset, img_size override or None, batch, warm-up steps, min repeats).
        "model": [("cpu-demo-tiny", "cpu-demo", [16, 16, 16], 2, 1, 1)],
        "model_variants": ["ours", "ours_sdpa", "naive", "naive_all_stages"],
        "precisions": ["float32", "bfloat16"],
        "isolate": False,
        "gpu_batch": 1,
    },
    "full": {
        "repeats": 3,
        "throughput": [
            ("demo_4mm", "cpu-demo", "demo_4mm", 400, 100),
            ("mni152_2mm", "full", "mni152_2mm", 48, 48),
        ],
        "workers": [0, 2],
        "epoch_cohort": 400,
        "epoch_sizes": [100, 200, 400],
        # 1 mm T1 and PET (Clinica's t1-linear / pet-linear resolution) conformed to 2 mm
        "cache_build": {"source_grid": "mni152_2mm", "cohort": 48, "n": 8,
                        "input_grid": "mni152_1mm", "grid": "mni152_2mm", "channels": 3},
        "train_epochs": True,
        "model": [
            ("cpu-demo", "cpu-demo", None, 8, 2, 5),
            # batch 1: the reference design's all-stage dense fusion fits in memory here
            # (about 12 GB with --max-attention-gb 14), so its speed can be measured.
            ("cpu-demo-b1", "cpu-demo", None, 1, 1, 3),
            ("reference", "default", None, 1, 1, 1),
        ],
        "model_variants": ["ours", "ours_sdpa", "naive", "naive_all_stages"],
        "precisions": ["float32", "bfloat16"],
        "isolate": True,
        "gpu_batch": 4,
    },
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts() -> dict[str, Any]:
    """CPU model and cores, memory, library versions, threads, load average and date."""
    import monai
    import numpy as np
    import torch

    facts: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg": _loadavg(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        facts["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return facts


def load_now() -> list[float] | None:
    """``os.getloadavg()`` rounded (None where unavailable)."""
    return _loadavg()


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def timed(func: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Run ``func`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns
    -------
    dict
        ``times_s`` (each timed run), ``median_s``, ``min_s`` and the last return value
        under ``result``.
    """
    result = None
    for _ in range(warmup):
        result = func()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return {"times_s": [round(t, 4) for t in times], "median_s": median(times),
            "min_s": min(times), "result": result}


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (Linux ``/proc``)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process's memory image so far, in MiB.

    ``VmHWM`` from ``/proc/self/status``: it starts afresh at ``exec``, whereas
    ``ru_maxrss`` keeps the parent's resident size at ``fork`` (Linux carries it across
    ``execve``), which would credit a worker with its parent's memory. ``ru_maxrss``
    is the fallback where ``/proc`` is missing.
    """
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
