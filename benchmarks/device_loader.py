"""Does the training loader keep a device busy? The host loader, the transfer and the
augmentation on the device, timed on any device (the GPU suite runs it on CUDA).

For one generated cohort on the preset's grid (2 mm ``full`` for ``--size full``), with
the datamodule's own loader settings except ``pin_memory`` (on for CUDA):

- ``host``: the keyed training loader as a running trainer drives it (float16 batches,
  pinned on CUDA), nothing else;
- ``to_device``: the same plus the ``non_blocking`` copy to the device and
  ``finish_batch(train=True)`` there (float32 conversion and the preset's augmentation),
  synchronized at the end of each epoch, per resampler (``two_pass``, ``trilinear``);
- ``augment_ms_per_sample``: the augmentation alone on a device batch, every transform
  firing, per resampler.

:func:`keeps_up` compares the best worker setting's rate with the network's training rate.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median

__all__ = ["keeps_up", "run_device_loader"]

#: ``--size``: (preset, grid, cohort size, batch of the augmentation timing, workers).
LOADER_SIZES: dict[str, tuple[str, str, int, int, tuple[int, ...]]] = {
    "tiny": ("cpu-demo", "demo_4mm", 12, 4, (0,)),
    "full": ("full", "mni152_2mm", 48, 4, (0, 4)),
}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epochs(loader: Any, step: Any, device: Any, repeats: int) -> float:
    """Median samples/s over ``repeats`` epochs (after one untimed epoch)."""
    from benchmarks.data import _drain

    rates = []
    for timed in [False] + [True] * max(1, repeats):
        start = time.perf_counter()
        samples = _drain(loader, step)
        _sync(device)
        if timed:
            rates.append(samples / (time.perf_counter() - start))
    return round(median(rates), 1)


def _to_device(device: Any, dm: Any) -> Any:
    def step(batch: dict[str, Any]) -> dict[str, Any]:
        moved = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v
                 for k, v in batch.items()}
        return dm.finish_batch(moved, train=True)

    return step


def run_device_loader(device: Any, size: str, work_dir: Path, repeats: int = 3) -> dict[str, Any]:
    """Time the training loader into ``device`` (see the module docstring)."""
    import torch

    from benchmarks.data import COHORT_SEED, _config, with_resampler
    from gazimed_lab.data.datamodule import MNIDataModule, subject_loader
    from gazimed_lab.data.synthetic import demo_cohort

    device = torch.device(device)
    preset, grid, n, batch, workers = LOADER_SIZES[size]
    work_dir.mkdir(parents=True, exist_ok=True)
    manifest = demo_cohort(work_dir, n_subjects=n, seed=COHORT_SEED, grid=grid)
    out: dict[str, Any] = {"device": str(device), "preset": preset, "grid": grid,
                           "cohort": f"{n} subjects", "rows": []}
    augments: dict[str, Any] = {}
    for w in workers:
        cfg = _config(preset, grid, manifest, work_dir / f"cache_{grid}", work_dir / "run", w)
        dm = MNIDataModule(cfg)
        dm.prepare_data()
        train = dm.train_dataset
        pin = device.type == "cuda"
        loader = subject_loader(train, int(cfg.data.batch_size), train=True, seed=dm.seed,
                                num_workers=w, pin_memory=pin, on_device=True)
        row: dict[str, Any] = {"num_workers": w, "batch_size": int(cfg.data.batch_size),
                               "pin_memory": pin, "train_subjects": len(train),
                               "host": _epochs(loader, lambda b: b, device, repeats)}
        for resampler in ("two_pass", "trilinear"):
            alt = with_resampler(dm, resampler)
            augments[resampler] = alt.augment
            row[f"to_device_{resampler}"] = _epochs(loader, _to_device(device, alt), device,
                                                    repeats)
        out["rows"].append(row)
        out["shape"] = [dm.channels, *dm.img_size]
    images = torch.randn(batch, *out["shape"], device=device)
    mask = torch.ones(batch, 2, device=device)
    keys = [(0, i) for i in range(batch)]
    for resampler, aug in augments.items():
        every = copy.copy(aug)
        every.prob = 1.0
        times = []
        for _ in range(max(1, repeats) + 1):
            work = images.clone()
            _sync(device)
            start = time.perf_counter()
            every(work, mask, keys, inplace=True)
            _sync(device)
            times.append(time.perf_counter() - start)
        out[f"augment_ms_per_sample_{resampler}"] = round(1000 * median(times[1:]) / batch, 3)
    return out


def keeps_up(loader: dict[str, Any], network_samples_per_s: float | None) -> dict[str, Any]:
    """Whether the fastest loader setting (augmenting, default resampler) outpaces the network."""
    rates = [r["to_device_two_pass"] for r in loader.get("rows", [])]
    if not rates or not network_samples_per_s:
        return {"keeps_up": None}
    best = max(rates)
    return {"loader_samples_per_s": best, "network_samples_per_s": network_samples_per_s,
            "loader_over_network": round(best / network_samples_per_s, 2),
            "keeps_up": best >= network_samples_per_s}
