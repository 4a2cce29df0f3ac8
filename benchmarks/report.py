"""Tables and goal checks from a results JSON (``python -m benchmarks.report FILE``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["goals", "render"]

#: Per-subject epoch time of the largest cohort over the smallest within this band = linear.
LINEAR_BAND = (0.8, 1.25)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]], markdown: bool) -> list[str]:
    cells = [[_fmt(c) for c in row] for row in rows]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return out + ["| " + " | ".join(r) + " |" for r in cells]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    return [line, "-" * len(line)] + ["  ".join(c.ljust(w) for c, w in zip(r, widths))
                                      for r in cells]


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with the measured ratio and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, target: str, met: bool | None, note: str = "") -> None:
        out.append({"goal": goal, "value": value, "target": target, "met": met, "note": note})

    data = results.get("data") or {}
    for t in data.get("throughput", []):
        where = f"{t['grid']}, {t['num_workers']} workers, batch {t['batch_size']}"
        add(f"cached >= 10x naive ({where})", t["cached_over_naive"], ">= 10",
            t["cached_over_naive"] >= 10)
        add(f"cached >= 0.5x raw read ({where})", t["cached_over_raw"], ">= 0.5",
            t["cached_over_raw"] >= 0.5, "the loader a trainer uses (cache dtype out)")
        if "cached_model_over_raw" in t:
            value = t["cached_model_over_raw"]
            add(f"cached, float32 on CPU >= 0.5x raw read ({where})", value, ">= 0.5",
                value >= 0.5, "loader + conversion: what a CPU model receives")
        if "aug_over_cached_model" in t and t["num_workers"] == 0:
            value = t["aug_over_cached_model"]
            note = "both float32 on CPU; augmentation included"
            paired = (t.get("paired") or {}).get("cached_aug_ratio")
            if paired:  # the steadier figure: epochs timed in turn
                value = paired["median"]
                note += (f"; median of {t['paired']['rounds']} alternating rounds (range "
                         f"{paired['min']}-{paired['max']}; separate timings: "
                         f"{t['aug_over_cached_model']})")
            add(f"augmented >= 0.3x cached, CPU, one process ({where})", value, ">= 0.3",
                value >= 0.3, note)
    build = data.get("cache_build") or {}
    if build:
        value = build["parallel_speedup"]
        add(f"cache build from {build['inputs'].split('resampled to ')[-1]} inputs: "
            f"{build['workers']} processes >= 1.7x one", value, ">= 1.7", value >= 1.7,
            f"load average before each build {build['loadavg_before_each']}")
    epochs = data.get("epochs") or {}
    for key in ("data", "train"):
        if f"{key}_linearity" in epochs:
            value = epochs[f"{key}_linearity"]
            sizes = [r["subjects"] for r in epochs["rows"]]
            add(f"{key} epoch linear in subjects ({sizes[0]} -> {sizes[-1]})", value,
                f"per-subject time ratio in [{LINEAR_BAND[0]}, {LINEAR_BAND[1]}]",
                LINEAR_BAND[0] <= value <= LINEAR_BAND[1])
    model = results.get("model") or {}
    for r in model.get("ratios", []):
        if r["baseline"] != "naive":
            continue
        value = r.get("naive_over_ours")
        add(f"network >= 2.5x naive per sample ({r['label']}, {r['precision']})", value,
            ">= 2.5", None if value is None else value >= 2.5, r.get("reason", ""))
    gpu = results.get("gpu") or {}
    if "skipped" in gpu:
        add("GPU: bf16 >= 2x float32", None, ">= 2", None, gpu["skipped"])
        add("GPU: batch 4 with checkpointing <= 16 GB", None, "<= 16 GiB", None, gpu["skipped"])
        add("GPU: the augmented training loader keeps up with the network", None, ">= 1x", None,
            gpu["skipped"])
    elif gpu:
        value = gpu.get("bf16_over_fp32")
        add("GPU: bf16 >= 2x float32", value, ">= 2", None if value is None else value >= 2)
        mem = gpu.get("bf16_checkpointing_gib")
        add(f"GPU: batch {gpu.get('batch')} with checkpointing <= 16 GB", mem, "<= 16 GiB",
            None if mem is None else mem <= 16)
        verdict = gpu.get("loader_vs_network") or {}
        add("GPU: the augmented training loader keeps up with the network",
            verdict.get("loader_over_network"), ">= 1x", verdict.get("keeps_up"),
            "the best worker setting against the fastest network setting")
    return out


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    return [
        f"machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m.get('memory_gb')} GB, "
        f"torch {m['torch']} ({m['torch_threads']} threads), monai {m['monai']}, "
        f"CUDA: {m.get('cuda_device') or 'none'}"
        + ("; glibc malloc tuned (--malloc-tuned)" if results.get("malloc_tuning") else ""),
        f"date {m['date']}; load average at start {results.get('loadavg_start')}, "
        f"at end {results.get('loadavg_end')}; took {results.get('duration_s')} s; "
        f"command: {results.get('command')}",
    ]


def render(results: dict[str, Any], markdown: bool = False) -> str:
    """The results as text (or Markdown) tables plus the goal checks."""
    lines = _machine(results)
    data = results.get("data") or {}
    if data.get("throughput"):
        lines += ["", "Data path (samples/s, median; train split, page cache warm):"]
        rows = [[t["grid"], t["train_subjects"], t["batch_size"], t["num_workers"],
                 t["naive"]["samples_per_s"], t["cached"]["samples_per_s"],
                 t.get("cached_model", {}).get("samples_per_s"),
                 t.get("cached_aug", {}).get("samples_per_s"),
                 t.get("legacy_monai_aug", {}).get("samples_per_s"), t["raw"]["samples_per_s"],
                 t["cached_over_naive"], t["cached_over_raw"], t.get("cached_model_over_raw"),
                 t.get("aug_over_cached_model"), t.get("aug_over_legacy")]
                for t in data["throughput"]]
        lines += _table(["grid", "subjects", "batch", "workers", "naive", "cached",
                         "cached f32", "cached+aug f32", "before: MONAI per item", "raw read",
                         "cached/naive", "cached/raw", "f32/raw", "aug/f32", "aug/before"],
                        rows, markdown)
        rows = [[t["grid"], t["num_workers"], t.get("legacy_cached", {}).get("samples_per_s"),
                 t.get("raw_default_collate", {}).get("samples_per_s"),
                 t.get("legacy_cached_over_raw_default")] for t in data["throughput"]]
        lines += ["", "Before issue 15 (float32 per item, torch's collation), same run:"]
        lines += _table(["grid", "workers", "cached", "raw read (torch collation)",
                         "cached/raw"], rows, markdown)
        paired = [t for t in data["throughput"] if t.get("paired")]
        if paired:
            lines += ["", "Augmented loaders against cached f32, one epoch of each in turn "
                          "(samples/s, median; ratio: median of the rounds, range):"]
            rows = []
            for t in paired:
                p, rate = t["paired"], t["paired"]["samples_per_s"]
                tri, two = p["cached_aug_ratio"], p["cached_aug_two_pass_ratio"]
                rows.append([t["grid"], t["num_workers"], p["rounds"], rate["cached_model"],
                             rate["cached_aug"], rate["cached_aug_two_pass"],
                             f"{tri['median']} ({tri['min']}-{tri['max']})",
                             f"{two['median']} ({two['min']}-{two['max']})"])
            lines += _table(["grid", "workers", "rounds", "cached f32", "aug (default)",
                             "aug (two_pass)", "aug/f32", "two_pass aug/f32"], rows, markdown)
        costs = [(t["grid"], t["augment_costs"]) for t in data["throughput"]
                 if t.get("augment_costs")]
        if costs:
            kinds = ["affine", "affine_whole_grid", "affine_two_pass", "intensity", "noise"]
            lines += ["", "Augmentation alone, ms per sample (CPU, every subject transformed):"]
            lines += _table(["grid", *kinds], [[g, *[c.get(f"{k}_ms_per_sample") for k in kinds]]
                                               for g, c in costs], markdown)
    allocs = [(t["grid"], t["allocation"]) for t in data.get("throughput", [])
              if t.get("allocation")]
    if allocs:
        lines += ["", "A fresh float32 batch filled from float16 (ms):"]
        lines += _table(["grid", "MB", "torch.empty", "NumPy-backed", "THP"],
                        [[g, a["mb"], a["torch_empty_ms"], a["numpy_backed_ms"], a["thp"]]
                         for g, a in allocs], markdown)
    build = data.get("cache_build") or {}
    if build:
        lines += ["", f"Cache build ({build['inputs']}, onto {build['grid']}, "
                      f"{build['channels']} channels): one process {build['single_median_s']} s "
                      f"({build['s_per_subject_single']} s/subject), {build['workers']} processes "
                      f"{build['parallel_median_s']} s: {build['parallel_speedup']}x; "
                      f"runs {build['single_s']} / {build['parallel_s']}; CPU s "
                      f"{build.get('single_cpu_s')} / {build.get('parallel_cpu_s')}; cores "
                      f"obtained {build.get('single_cores_used')} / "
                      f"{build.get('parallel_cores_used')}"]
    epochs = data.get("epochs") or {}
    if epochs.get("rows"):
        lines += ["", f"Epoch time ({epochs['preset']}; {epochs['cohort']}):"]
        rows = [[r["subjects"], r["train_subjects"], r["data_epoch_s"], r["data_ms_per_subject"],
                 r.get("train_epoch_s"), r.get("train_ms_per_subject")] for r in epochs["rows"]]
        lines += _table(["subjects", "train", "data epoch s", "data ms/subject",
                         "train epoch s", "train ms/subject"], rows, markdown)
    model = results.get("model") or {}
    if model.get("configs"):
        lines += ["", "Model, forward + backward (CPU):"]
        rows = []
        for r in model["configs"]:
            grid = "x".join(str(s) for s in r.get("img_size", [])) or "-"
            rows.append([r["label"], grid, r["variant"], r["precision"], r["batch"],
                         r.get("per_sample_s"), r.get("samples_per_s"),
                         r.get("gflop_per_sample"), r.get("achieved_gflops"),
                         r.get("peak_rss_mb"), (r.get("skipped") or r.get("error") or "")[:90]])
        lines += _table(["network", "grid", "variant", "precision", "batch", "s/sample",
                         "samples/s", "GFLOP/sample", "GFLOP/s", "peak RSS MB", "note"],
                        rows, markdown)
    gpu = results.get("gpu") or {}
    if gpu:
        lines += [""]
        if "skipped" in gpu:
            lines.append(f"GPU suite: skipped ({gpu['skipped']})")
        else:
            lines.append(f"GPU ({gpu['device']}, {gpu['preset']}, batch {gpu['batch']}, "
                         f"{gpu['model_gflop_per_step']} GFLOP/step):")
            rows = [[r["precision"], r["checkpointing"], r["compile"], r.get("samples_per_s"),
                     r.get("max_memory_allocated_gib"), r.get("achieved_tflops"),
                     r.get("fraction_of_peak"), r.get("skipped") or r.get("error") or ""]
                    for r in gpu["configs"]]
            lines += _table(["precision", "checkpointing", "compile", "samples/s", "peak GiB",
                             "TFLOP/s", "of peak", "note"], rows, markdown)
            lines += _loader_lines(gpu, markdown)
    checks = goals(results)
    if checks:
        lines += ["", "Goals:"]
        rows = [[g["goal"], g["value"], g["target"],
                 {True: "met", False: "NOT met", None: "not measured"}[g["met"]], g["note"]]
                for g in checks]
        lines += _table(["goal", "measured", "target", "status", "note"], rows, markdown)
    return "\n".join(lines)


def _loader_lines(gpu: dict[str, Any], markdown: bool) -> list[str]:
    """The training loader into the device (``gpu["loader"]``) and whether it keeps up."""
    loader = gpu.get("loader")
    if not loader:
        return []
    if "error" in loader:
        return ["", f"Training loader into the device: failed ({loader['error']})"]
    lines = ["", f"Training loader into {loader['device']} ({loader['grid']}, {loader['preset']} "
                 f"augmentation; samples/s, median): host = float16 batches only; to device = "
                 "plus the copy, conversion and augmentation on the device"]
    rows = [[r["num_workers"], r["batch_size"], r["pin_memory"], r["host"],
             r["to_device_two_pass"], r["to_device_trilinear"]] for r in loader["rows"]]
    lines += _table(["workers", "batch", "pinned", "host", "to device (two_pass)",
                     "to device (trilinear)"], rows, markdown)
    lines.append("augmentation alone on the device, ms per sample (every transform): "
                 f"two_pass {loader.get('augment_ms_per_sample_two_pass')}, trilinear "
                 f"{loader.get('augment_ms_per_sample_trilinear')}")
    verdict = gpu.get("loader_vs_network") or {}
    if verdict.get("keeps_up") is not None:
        lines.append(f"loader {verdict['loader_samples_per_s']} samples/s against the fastest "
                     f"network setting's {verdict['network_samples_per_s']}: "
                     f"{verdict['loader_over_network']}x, "
                     f"{'keeps up' if verdict['keeps_up'] else 'does NOT keep up'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the tables of a results file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("results", type=Path, help="a JSON written by python -m benchmarks")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text()), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
