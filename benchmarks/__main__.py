"""``python -m benchmarks``: run the suites, write one JSON, print the tables."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks import SCHEMA_VERSION
from benchmarks.common import REPO, SIZES, load_now, machine_facts

SUITES = ("data", "model", "gpu")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the data path and the network (JSON out, table printed). "
                    "Run from the repository root.",
    )
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--size", choices=tuple(SIZES), default="full",
                        help="full: the README's run (about 15 min on 2 cores); tiny: seconds")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default: per size)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default benchmarks/results/bench-<size>-<time>.json)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="generated cohorts (kept) and temporary caches (default: "
                             "$GAZIMED_CACHE or .cache/gazimed-lab, as demo_cohort)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, in this process and the model workers "
                             "(default: torch's default, one per core)")
    parser.add_argument("--max-attention-gb", type=float, default=4.0,
                        help="skip naive configurations whose dense attention needs more")
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="keep freed memory in glibc's heap (mallopt; MALLOC_* for the "
                             "workers) so that large buffers are not page-faulted afresh")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return parser


#: glibc settings of --malloc-tuned: allocations up to 32 MiB (the maximum) come from the
#: heap, and up to 1 GiB of freed heap is kept rather than returned to the kernel.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 1 << 30,
                 "MALLOC_TOP_PAD_": 256 << 20}


def tune_malloc() -> dict[str, int]:
    """Apply :data:`MALLOC_TUNING` to this process (mallopt) and to child processes (env)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    codes = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}
    for name, value in MALLOC_TUNING.items():
        if libc.mallopt(codes[name], value) != 1:
            raise OSError(f"mallopt({name}={value}) must succeed, got failure")
        os.environ[name] = str(value)
    return dict(MALLOC_TUNING)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen suites; return the results (also written to ``args.out``)."""
    spec = SIZES[args.size]
    repeats = int(args.repeats or spec["repeats"])
    work = args.work_dir or Path(os.environ.get("GAZIMED_CACHE") or ".cache/gazimed-lab")
    suites = SUITES if args.suite == "all" else (args.suite,)
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "size": args.size, "repeats": repeats, "suites": list(suites),
        "loadavg_start": load_now(), "machine": machine_facts(),
    }
    if args.malloc_tuned:
        results["malloc_tuning"] = tune_malloc()
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
        results["machine"]["torch_threads"] = torch.get_num_threads()
    start = time.perf_counter()
    if "data" in suites:
        from benchmarks.data import run_data_suite

        results["data"] = run_data_suite(args.size, repeats, work.resolve())
    if "model" in suites:
        from benchmarks.model import run_model_suite

        results["model"] = run_model_suite(args.size, repeats, args.threads,
                                           args.max_attention_gb)
    if "gpu" in suites:
        from benchmarks.gpu import run_gpu_suite

        results["gpu"] = run_gpu_suite(args.size, int(spec["gpu_batch"]), work_dir=work.resolve())
    results["duration_s"] = round(time.perf_counter() - start, 1)
    results["loadavg_end"] = load_now()
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = REPO / "benchmarks" / "results" / f"bench-{args.size}-{stamp}.json"
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    from benchmarks.report import render

    print(render(results, markdown=args.markdown))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
