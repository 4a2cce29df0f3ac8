"""Smoke test of the benchmark suite (``python -m benchmarks --size tiny``); no timed assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.mark.slow  # about 20 s on 2 cores: a cohort is generated, a worker process started
def test_tiny_suite_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--size", "tiny", "--threads", "1",
         "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Goals:" in proc.stdout and str(out) in proc.stdout
    results = json.loads(out.read_text())

    for key in ("machine", "data", "model", "gpu", "loadavg_start", "loadavg_end"):
        assert key in results, key
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] == torch.__version__

    data = results["data"]
    assert data["throughput"]
    for entry in data["throughput"]:
        for loader in ("naive", "cached", "raw"):
            assert entry[loader]["samples"] == entry["train_subjects"] > 0
        assert "cached_aug" in entry  # cpu-demo augments (intensity and noise)
        numbers = _numbers(entry)
        assert numbers and all(math.isfinite(n) and n >= 0 for n in numbers)
        assert entry["cached_over_naive"] > 0 and entry["cached_over_raw"] > 0
        # float16 cache: half the bytes of float32 (plus the .npy header)
        assert entry["bytes_per_subject"]["cache_npy"] < entry["bytes_per_subject"][
            "float32_equivalent"]
    for entry in data["throughput"]:
        for loader in ("cached_model", "cached_f32_loader", "raw_default_collate",
                       "legacy_cached", "legacy_monai_aug"):
            assert entry[loader]["samples"] == entry["train_subjects"], loader
        assert entry["aug_over_cached_model"] > 0 and entry["aug_over_legacy"] > 0
        costs = entry["augment_costs"]  # cpu-demo: intensity and noise, no affine
        assert costs["noise_ms_per_sample"] > 0 and "affine_ms_per_sample" not in costs
    build = data["cache_build"]
    assert build["subjects"] == 4 and build["workers"] >= 1
    assert len(build["single_s"]) == len(build["parallel_s"]) == results["repeats"]
    assert build["parallel_speedup"] > 0 and build["single_cpu_s"][0] > 0
    rows = data["epochs"]["rows"]
    assert [r["subjects"] for r in rows] == [6, 12]
    for row in rows:
        assert row["data_epoch_s"] > 0 and row["train_epoch_s"] > 0
    assert data["epochs"]["data_linearity"] > 0

    model = results["model"]
    records = {(r["variant"], r["precision"]): r for r in model["configs"]}
    assert set(records) == {("ours", "float32"), ("ours", "bfloat16"), ("ours_sdpa", "float32"),
                            ("naive", "float32"), ("naive", "bfloat16"),
                            ("naive_all_stages", "float32")}
    for record in records.values():
        assert "error" not in record and "skipped" not in record, record
        for key in ("per_sample_s", "samples_per_s", "gflop_per_sample", "peak_rss_mb"):
            assert math.isfinite(record[key]) and record[key] > 0, (key, record)
    # The naive baseline does more work: a third encoder pass and dense attention.
    assert records[("naive", "float32")]["gflop_per_sample"] > records[("ours", "float32")][
        "gflop_per_sample"]
    ratios = {(r["baseline"], r["precision"]): r for r in model["ratios"]}
    assert ratios[("naive", "float32")]["naive_over_ours"] > 0

    if not torch.cuda.is_available():
        assert results["gpu"] == {"skipped": "no CUDA device"}
    goals = {g["goal"]: g for g in _goal_rows(results)}
    assert any(name.startswith("cached >= 10x naive") for name in goals)
    for prefix in ("augmented >= 0.3x cached", "cached, float32 on CPU >= 0.5x raw read",
                   "cache build from mni152_2mm inputs"):
        assert any(name.startswith(prefix) for name in goals), prefix


def _goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.report import goals
    finally:
        sys.path.remove(str(REPO))
    return goals(results)


def test_naive_baseline_matches_network_interface() -> None:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.naive import NaiveReferenceNet
    finally:
        sys.path.remove(str(REPO))
    from gazimed_lab.config import load_config
    from gazimed_lab.models.lightning import resolve_spec
    from gazimed_lab.models.network import network_kwargs

    cfg = load_config("cpu-demo")
    kwargs = network_kwargs(cfg.model, resolve_spec(cfg, n_features=118))
    kwargs["img_size"] = [16, 16, 16]
    fused = NaiveReferenceNet("fused", **kwargs)
    every = NaiveReferenceNet("all", **kwargs)
    assert fused.stages == list(kwargs["fusion_stages"]) and every.stages == [0, 1, 2, 3, 4]
    assert every.tokens > fused.tokens
    images = torch.randn(2, 2, 16, 16, 16)
    features = torch.randn(2, kwargs["clinical_features_dim"])
    logits = fused.logits(images, torch.ones(2, 2), features, torch.ones_like(features))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert every.fusion_flops(2) > fused.fusion_flops(2) > 0


def test_device_loader_part_runs_on_any_device(tmp_path: Path) -> None:
    """The GPU suite's loader part (run on CUDA when a GPU is lent) on the CPU, tiny size."""
    from benchmarks.device_loader import keeps_up, run_device_loader
    from benchmarks.report import _loader_lines

    loader = run_device_loader("cpu", "tiny", tmp_path, repeats=1)
    (row,) = loader["rows"]
    assert row["train_subjects"] > 0 and row["pin_memory"] is False
    for key in ("host", "to_device_two_pass", "to_device_trilinear"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert loader["augment_ms_per_sample_two_pass"] > 0
    slow = keeps_up(loader, network_samples_per_s=row["to_device_two_pass"] * 2)
    assert slow["keeps_up"] is False and slow["loader_over_network"] == 0.5
    assert keeps_up(loader, None) == {"keeps_up": None}
    text = "\n".join(_loader_lines({"loader": loader, "loader_vs_network": slow}, False))
    assert "does NOT keep up" in text and "to device (two_pass)" in text
