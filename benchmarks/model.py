"""Model suite: forward + backward per sample and peak memory, network vs naive baseline.

Each configuration (network size x variant x precision) runs in a fresh Python
process (``python -m benchmarks.model --worker CONFIG``), so that its peak resident
memory (``VmHWM`` of ``/proc/self/status``, see :func:`benchmarks.common.peak_rss_mb`)
is its own; the process's memory after imports, before the network is built, is
recorded too. At ``tiny``
size every configuration shares one process (its peak memory is then cumulative).

A step is one forward and backward pass in training mode on random inputs (no
optimizer step), in float32 or under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
The warm-up steps are untimed; the first runs under
``torch.utils.flop_counter.FlopCounterMode`` to count the step's FLOPs.

Variants
--------
``ours``
    :class:`gazimed_lab.models.network.MultimodalAlzheimersNet` as configured.
``ours_sdpa``
    The same network with MONAI's window attention routed through the fused
    ``F.scaled_dot_product_attention`` in training too (MONAI uses it only when
    gradients are off): measures a possible package change, patched here only.
``naive`` / ``naive_all_stages``
    :class:`benchmarks.naive.NaiveReferenceNet` (fused stages / all five stages).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import REPO, SIZES, median, peak_rss_mb, rss_mb

__all__ = ["model_configs", "run_model_suite", "run_one"]

MARK = "BENCH_RESULT "
#: Attention storage (fwd + bwd) estimated as this many attention matrices.
_ATTN_COPIES = 6


def model_configs(size: str, repeats: int, threads: int | None,
                  max_attention_gb: float) -> list[dict[str, Any]]:
    """The configurations of a size: every network x variant x precision."""
    spec = SIZES[size]
    out = []
    for label, preset, img_size, batch, warmup, min_repeats in spec["model"]:
        for variant in spec["model_variants"]:
            for precision in spec["precisions"]:
                if variant in ("ours_sdpa", "naive_all_stages") and precision != "float32":
                    continue
                out.append({
                    "label": label, "preset": preset, "img_size": img_size, "batch": batch,
                    "warmup": warmup, "repeats": max(repeats, min_repeats), "variant": variant,
                    "precision": precision, "threads": threads,
                    "max_attention_gb": max_attention_gb,
                })
    return out


def _sdpa_window_forward(self: Any, x: Any, mask: Any) -> Any:
    """MONAI ``WindowAttention.forward`` through fused SDPA with gradients enabled too."""
    import torch.nn.functional as F

    b, n, c = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    index = self.relative_position_index[:n, :n].reshape(-1)
    bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
    if mask is not None:
        nw = mask.shape[0]
        bias = bias.view(1, 1, h, n, n) + mask.reshape(1, nw, 1, n, n).to(bias.dtype)
        bias = bias.expand(b // nw, nw, h, n, n).reshape(b, h, n, n)
    else:
        bias = bias.unsqueeze(0)
    drop = float(self.attn_drop.p) if self.training else 0.0
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop,
                                       scale=self.scale)
    return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def _build(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The network of a configuration and its keyword arguments."""
    from gazimed_lab.config import load_config
    from gazimed_lab.models.lightning import resolve_spec
    from gazimed_lab.models.network import MultimodalAlzheimersNet, network_kwargs

    # The Swin network against the naive reference-style one (cpu-demo itself reads atlas
    # regions since issue 11; this benchmark is about the Swin pathway and its fusion).
    cfg = load_config(config["preset"], overrides=["model.image_pathway=swin",
                                                   "model.deep_supervision=false"])
    kwargs = network_kwargs(cfg.model, resolve_spec(cfg, n_features=118))
    if config["img_size"]:
        kwargs["img_size"] = list(config["img_size"])
    variant = config["variant"]
    if variant.startswith("naive"):
        from benchmarks.naive import NaiveReferenceNet

        stages = "all" if variant == "naive_all_stages" else "fused"
        return NaiveReferenceNet(stages, **kwargs), kwargs
    return MultimodalAlzheimersNet(**kwargs), kwargs


@contextlib.contextmanager
def _window_attention(variant: str) -> Iterator[None]:
    """Route MONAI's window attention through fused SDPA for ``ours_sdpa``, then restore it."""
    from monai.networks.nets.swin_unetr import WindowAttention

    original = WindowAttention.forward
    if variant == "ours_sdpa":
        WindowAttention.forward = _sdpa_window_forward
    try:
        yield
    finally:
        WindowAttention.forward = original


def _attention_check(net: Any, config: dict[str, Any]) -> str | None:
    """A skip reason when the naive dense attention would not fit the memory limit."""
    from benchmarks.naive import dense_attention_bytes

    tokens = getattr(net, "tokens", None)
    if tokens is None:
        return None
    one = dense_attention_bytes(tokens, net.heads, config["batch"])
    need = _ATTN_COPIES * one / 2**30
    if need <= config["max_attention_gb"]:
        return None
    return (f"dense attention over {tokens} tokens x {net.heads} heads x batch "
            f"{config['batch']}: {one / 2**30:.1f} GiB per attention matrix, about "
            f"{need:.0f} GiB for forward + backward (> --max-attention-gb "
            f"{config['max_attention_gb']:g})")


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process; return a JSON-able record."""
    with _window_attention(config["variant"]):
        return _measure(config)


def _measure(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(0)
    rss_start = rss_mb()
    net, kwargs = _build(config)
    record: dict[str, Any] = {
        **{k: config[k] for k in ("label", "preset", "variant", "precision", "batch")},
        "img_size": list(kwargs["img_size"]), "in_channels": kwargs["in_channels"],
        "embed_dim": kwargs["embed_dim"], "depths": list(kwargs["depths"]),
        "patch_size": list(kwargs["patch_size"]), "fusion_stages": list(kwargs["fusion_stages"]),
        "parameters": sum(p.numel() for p in net.parameters()),
        "threads": torch.get_num_threads(), "rss_after_imports_mb": rss_start,
    }
    if hasattr(net, "fusion_flops"):
        b = int(config["batch"])
        record["fusion_gflop_per_sample"] = round(net.fusion_flops(b) / b / 1e9, 3)
    skip = _attention_check(net, config)
    if skip:
        record["skipped"] = skip
        return record
    net.train()
    b, c = int(config["batch"]), int(kwargs["in_channels"])
    images = torch.randn(b, c, *kwargs["img_size"])
    modality = torch.ones(b, 2)
    features = torch.randn(b, int(kwargs["clinical_features_dim"]))
    observed = torch.ones_like(features)
    targets = torch.rand(b)
    bf16 = config["precision"] == "bfloat16"

    def step() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net.logits(images, modality, features, observed)
        loss = F.mse_loss(torch.sigmoid(logits.float()), targets)
        loss.backward()

    start = time.perf_counter()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for _ in range(int(config["warmup"]) - 1):
        step()
    record["warmup_s"] = round(time.perf_counter() - start, 3)
    times = []
    for _ in range(max(1, int(config["repeats"]))):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = median(times)
    flops = int(counter.get_total_flops())
    record.update(
        times_s=[round(t, 4) for t in times], step_s=round(step_s, 4),
        per_sample_s=round(step_s / b, 4), samples_per_s=round(b / step_s, 3),
        gflop_per_sample=round(flops / b / 1e9, 2),
        achieved_gflops=round(flops / step_s / 1e9, 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    return record


def _spawn(configs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Run configurations in one fresh worker process; parse its records."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.model", "--worker", json.dumps(configs)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return [{**_ident(c), "skipped": f"timed out after {timeout:.0f} s"} for c in configs]
    records = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines()
               if line.startswith(MARK)]
    if proc.returncode != 0 or len(records) != len(configs):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        done = {(r["label"], r["variant"], r["precision"]) for r in records}
        records += [{**_ident(c), "error": f"worker exit {proc.returncode}: {' | '.join(tail)}"}
                    for c in configs
                    if (c["label"], c["variant"], c["precision"]) not in done]
    return records


def _ident(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("label", "preset", "variant", "precision", "batch")}


def _ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Naive time per sample over ours, per network size and precision."""
    by_key = {(r["label"], r["variant"], r["precision"]): r for r in records}
    out = []
    for (label, variant, precision), naive in by_key.items():
        if not variant.startswith("naive"):
            continue
        ours = by_key.get((label, "ours", precision))
        row = {"label": label, "baseline": variant, "precision": precision}
        if ours and "per_sample_s" in ours and "per_sample_s" in naive:
            row["naive_over_ours"] = round(naive["per_sample_s"] / ours["per_sample_s"], 3)
            row["flop_ratio"] = round(naive["gflop_per_sample"] / ours["gflop_per_sample"], 3)
        else:
            row["naive_over_ours"] = None
            row["reason"] = naive.get("skipped") or naive.get("error") or "not measured"
            fused = by_key.get((label, "naive", "float32"), {})
            if ours and "gflop_per_sample" in ours and "gflop_per_sample" in fused and (
                    "fusion_gflop_per_sample" in naive):
                # Not run: its FLOPs = the measured naive's, with this fusion's FLOPs
                # (counted on meta tensors) in place of the fused-stages fusion's.
                est = (fused["gflop_per_sample"] - fused["fusion_gflop_per_sample"]
                       + naive["fusion_gflop_per_sample"])
                row["estimated_gflop_per_sample"] = round(est, 1)
                row["flop_ratio"] = round(est / ours["gflop_per_sample"], 1)
        out.append(row)
    return out


def run_model_suite(size: str, repeats: int, threads: int | None = None,
                    max_attention_gb: float = 4.0, timeout: float = 900.0) -> dict[str, Any]:
    """Run every configuration of ``size`` (see :data:`benchmarks.common.SIZES`).

    Parameters
    ----------
    size
        ``tiny`` or ``full``.
    repeats
        Timed steps per configuration (after the warm-up steps).
    threads
        ``torch.set_num_threads`` in the workers (default: torch's default).
    max_attention_gb
        Naive configurations whose dense attention would need more (estimated) are
        recorded as skipped.
    timeout
        Seconds allowed per worker process.

    Returns
    -------
    dict
        ``method``, ``configs`` (one record each) and ``ratios`` (naive over ours).
    """
    configs = model_configs(size, repeats, threads, max_attention_gb)
    if SIZES[size]["isolate"]:
        records = [r for c in configs for r in _spawn([c], timeout)]
        memory = "peak RSS (VmHWM) of a fresh process per configuration"
    else:
        records = _spawn(configs, timeout * len(configs))
        memory = "peak RSS (VmHWM) of one process shared by all configurations (cumulative)"
    return {
        "method": "forward + backward in training mode on random inputs, no optimizer step; "
                  f"median of timed steps after warm-up; memory: {memory}; FLOPs from "
                  "torch.utils.flop_counter.FlopCounterMode over one step",
        "configs": records,
        "ratios": _ratios(records),
    }


def _main() -> int:
    parser = argparse.ArgumentParser(description="model benchmark worker (internal)")
    parser.add_argument("--worker", required=True, help="JSON list of configurations")
    args = parser.parse_args()
    for config in json.loads(args.worker):
        try:
            record = run_one(config)
        except Exception as exc:  # recorded, not raised: one failure must not hide the rest
            record = {**_ident(config), "error": f"{type(exc).__name__}: {exc}"}
        print(MARK + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
