"""GPU suite: precision, activation checkpointing and ``torch.compile`` on a CUDA device.

Runs only when ``torch.cuda.is_available()``; otherwise the result is
``{"skipped": "no CUDA device"}``. Per configuration: samples/s of forward +
backward (training mode, random inputs, no optimizer step), peak
``torch.cuda.max_memory_allocated`` and achieved TFLOP/s, where the FLOPs are the
model FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode``
without checkpointing (recomputation is not credited), compared with the card's
dense peak from :data:`PEAK_TFLOPS`.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median

__all__ = ["PEAK_TFLOPS", "card_peaks", "run_gpu_suite"]

#: Dense (no structured sparsity) peak TFLOP/s from NVIDIA's datasheets: tensor-core
#: bf16 / fp16 (fp32 accumulate) and tf32, and plain fp32 (CUDA cores). The sparse
#: figures on the datasheets are twice these. First matching substring of the
#: device name wins, so the more specific names come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]

PRECISIONS = {"32-true": None, "16-mixed": "float16", "bf16-mixed": "bfloat16"}


def card_peaks(name: str) -> dict[str, float] | None:
    """Peak TFLOP/s of a device name (``torch.cuda.get_device_name``), or None if unknown."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return dict(peaks)
    return None


def _network(preset: str, checkpointing: bool) -> tuple[Any, dict[str, Any]]:
    from gazimed_lab.config import load_config
    from gazimed_lab.models.lightning import resolve_spec
    from gazimed_lab.models.network import MultimodalAlzheimersNet, network_kwargs

    cfg = load_config(preset)
    kwargs = network_kwargs(cfg.model, resolve_spec(cfg, n_features=118))
    kwargs["activation_checkpointing"] = checkpointing
    return MultimodalAlzheimersNet(**kwargs), kwargs


def _one(preset: str, batch: int, precision: str, checkpointing: bool, compile_: bool,
         steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(0)
    net, kw = _network(preset, checkpointing)
    net = net.to(dev).train()
    model = torch.compile(net) if compile_ else net
    images = torch.randn(batch, kw["in_channels"], *kw["img_size"], device=dev)
    modality = torch.ones(batch, 2, device=dev)
    features = torch.randn(batch, kw["clinical_features_dim"], device=dev)
    observed, targets = torch.ones_like(features), torch.rand(batch, device=dev)
    dtype = getattr(torch, PRECISIONS[precision]) if PRECISIONS[precision] else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            scores = model(images, modality, features, observed)
        scaler.scale(F.mse_loss(scores.float(), targets)).backward()

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = median(times)
    return {"warmup_s": round(warmup, 2), "step_s": round(step_s, 4),
            "samples_per_s": round(batch / step_s, 2),
            "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def _model_flops(preset: str, batch: int) -> int:
    """FLOPs of one fp32 forward + backward step without checkpointing."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net, kw = _network(preset, False)
    net = net.cuda().train()
    images = torch.randn(batch, kw["in_channels"], *kw["img_size"], device="cuda")
    features = torch.randn(batch, kw["clinical_features_dim"], device="cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        net(images, torch.ones(batch, 2, device="cuda"), features).sum().backward()
    del net
    torch.cuda.empty_cache()
    return int(counter.get_total_flops())


def run_gpu_suite(size: str, batch: int, steps: int = 10,
                  work_dir: Path | None = None) -> dict[str, Any]:
    """Measure the reference-size network (``tiny``: cpu-demo) on the first CUDA device.

    With ``work_dir`` also the training loader into the device
    (:func:`benchmarks.device_loader.run_device_loader`: generated cohorts and caches go
    there) and whether it keeps up with the fastest network configuration.

    Parameters
    ----------
    size
        ``full``: ``default`` preset (2 mm grid, reference-size Swin), every precision x
        checkpointing x compile; ``tiny``: ``cpu-demo`` preset, no compile.
    batch
        Batch size.
    steps
        Timed steps per configuration (after three warm-up steps).
    work_dir
        Where the loader part keeps its cohort and cache (None: no loader part).
    """
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    name = torch.cuda.get_device_name(0)
    preset = "default" if size == "full" else "cpu-demo"
    peaks = card_peaks(name)
    flops = _model_flops(preset, batch)
    out: dict[str, Any] = {
        "device": name, "preset": preset, "batch": batch, "peak_tflops": peaks,
        "model_gflop_per_step": round(flops / 1e9, 1),
        "total_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "configs": [],
    }
    for precision in PRECISIONS:
        for checkpointing in (False, True):
            for compile_ in ((False, True) if size == "full" else (False,)):
                row: dict[str, Any] = {"precision": precision, "checkpointing": checkpointing,
                                       "compile": compile_}
                try:
                    row.update(_one(preset, batch, precision, checkpointing, compile_, steps))
                except torch.cuda.OutOfMemoryError:
                    row["skipped"] = "CUDA out of memory"
                except Exception as exc:  # e.g. a compile failure: recorded, not raised
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                finally:
                    torch._dynamo.reset()  # drop compiled graphs (and the modules they hold)
                if "step_s" in row:
                    tflops = flops / row["step_s"] / 1e12
                    row["achieved_tflops"] = round(tflops, 1)
                    kind = {"32-true": "fp32", "16-mixed": "fp16", "bf16-mixed": "bf16"}[precision]
                    if peaks and kind in peaks:
                        row["fraction_of_peak"] = round(tflops / peaks[kind], 3)
                out["configs"].append(row)
                gc.collect()
                torch.cuda.empty_cache()
    rows = {(r["precision"], r["checkpointing"], r["compile"]): r for r in out["configs"]}
    fp32, bf16 = rows.get(("32-true", False, False), {}), rows.get(("bf16-mixed", False, False), {})
    if "samples_per_s" in fp32 and "samples_per_s" in bf16:
        out["bf16_over_fp32"] = round(bf16["samples_per_s"] / fp32["samples_per_s"], 2)
    ckpt = rows.get(("bf16-mixed", True, False), {})
    if "max_memory_allocated_gib" in ckpt:
        out["bf16_checkpointing_gib"] = ckpt["max_memory_allocated_gib"]
    if work_dir is not None:
        from benchmarks.device_loader import keeps_up, run_device_loader

        try:
            out["loader"] = run_device_loader("cuda", size, work_dir / "device-loader")
        except Exception as exc:  # recorded, not raised: the network numbers stand
            out["loader"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        fastest = max((r["samples_per_s"] for r in out["configs"] if "samples_per_s" in r),
                      default=None)
        out["loader_vs_network"] = keeps_up(out["loader"], fastest)
    return out
