"""Throughput and memory benchmarks of gazimed-lab's data path and network.

Run from the repository root::

    python -m benchmarks --suite all --size full      # about 15 minutes on 2 CPU cores
    python -m benchmarks --size tiny --out /tmp/b.json  # smoke run, seconds
    python -m benchmarks.report benchmarks/results/bench.json --markdown

Suites (each a module): :mod:`benchmarks.data` (naive per-item preprocessing vs
the datamodule's cached path vs a raw read of the cache; epoch time against cohort
size), :mod:`benchmarks.model` (forward + backward per sample and peak memory of
the network and of the naive reference-style baseline in :mod:`benchmarks.naive`)
and :mod:`benchmarks.gpu` (mixed precision, checkpointing and ``torch.compile`` on
a CUDA device, skipped without one). Results go to one JSON file; nothing is
asserted on timings.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION"]

#: Layout version of the results JSON.
SCHEMA_VERSION = 1
