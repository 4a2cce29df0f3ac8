"""Batch augmentation: MONAI's transforms with the drawn parameters, per-subject draws,
batch independence, on the device after the transfer, training only."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import SMALL, cohort_config
from monai.transforms import Affine, ScaleIntensity, ShiftIntensity

from gazimed_lab.config import RESAMPLERS
from gazimed_lab.data.augment import BatchAugment
from gazimed_lab.data.datamodule import MNIDataModule
from gazimed_lab.data.resample import resample_, two_pass_box

#: affine on (the cpu-demo preset turns it off), every transform firing
AFFINE = ["data.aug_rotate_deg=8", "data.aug_scale=0.08", "data.aug_translate_vox=2",
          "data.aug_prob=1.0"]


def _volumes(n: int, shape: tuple[int, ...] = (3, 23, 27, 21), seed: int = 0) -> torch.Tensor:
    """Brain-like volumes: smooth nonzero interior, zero border (as normalized volumes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, *shape)
    inner = torch.randn(n, shape[0], shape[1] - 8, shape[2] - 9, shape[3] - 5, generator=g)
    x[:, :, 3:-5, 4:-5, 2:-3] = inner
    return x


def test_batch_augment_is_monais_transforms_with_the_drawn_parameters() -> None:
    aug = BatchAugment(prob=1.0, rotate_deg=8.0, scale=0.08, translate_vox=2.0,
                       intensity=0.1, noise_std=0.0, resampler="trilinear", seed=11)
    images = _volumes(3)
    keys = [(0, 4), (2, 4), (1, 9)]
    out = aug(images, torch.ones(3, 2), keys)
    assert not torch.equal(out, images)  # a copy was augmented, the input left alone
    for b, (epoch, index) in enumerate(keys):
        d = aug.draw(epoch, index, channels=3)
        assert d.rotate is not None and d.translate is not None and d.zoom is not None
        assert d.scale is not None and d.shift is not None and d.noise_std is None
        ref = torch.as_tensor(Affine(rotate_params=list(d.rotate),
                                     translate_params=list(d.translate),
                                     scale_params=list(d.zoom), mode="bilinear",
                                     padding_mode="zeros", image_only=True)(images[b]))
        ref = torch.stack([
            torch.as_tensor(ShiftIntensity(offset=d.shift[c])(
                ScaleIntensity(minv=None, maxv=None, factor=d.scale[c] - 1.0)(ref[c])))
            for c in range(3)])
        assert torch.allclose(out[b], ref.float(), atol=1e-4), (b, (out[b] - ref).abs().max())


def test_noise_is_gaussian_with_the_drawn_std_and_pet_stays_zero_without_pet() -> None:
    aug = BatchAugment(prob=1.0, rotate_deg=0.0, scale=0.0, translate_vox=0.0,
                       intensity=0.0, noise_std=0.5, seed=3)
    images = _volumes(2, shape=(2, 30, 30, 30))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    images[1, 1] = 0.0
    out = aug(images, mask, [(0, 0), (0, 1)])
    noise = out[0] - images[0]
    std = aug.draw(0, 0, channels=2).noise_std
    assert std is not None and 0.0 < std < 0.5
    assert abs(float(noise.std()) - std) < 0.02 * std + 1e-3
    assert abs(float(noise.mean())) < 0.02 * std + 1e-3
    assert (out[1, 1] == 0).all() and not (out[1, 0] == images[1, 0]).all()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_noise_is_a_window_of_the_runs_bank_new_each_epoch() -> None:
    aug = BatchAugment(prob=1.0, rotate_deg=0.0, scale=0.0, translate_vox=0.0,
                       intensity=0.0, noise_std=0.5, seed=3)
    zeros = torch.zeros(2, 2, 20, 22, 18)
    mask = torch.ones(2, 2)
    n = zeros[0].numel()
    out = aug(zeros, mask, [(4, 0), (4, 1)])
    bank = aug.noise_bank(n, torch.device("cpu"))
    assert bank.shape == (2 * n,)

    def windows(epoch: int) -> list[torch.Tensor]:
        found = []
        for b in range(2):
            d = aug.draw(epoch, b, channels=2)
            assert d.noise_std is not None
            start = d.noise_seed % (n + 1)
            found.append(bank[start:start + n].view(zeros.shape[1:]) * d.noise_std)
        return found

    now = windows(4)
    for b in range(2):
        assert torch.equal(out[b], now[b])
    # two subjects of one epoch: shifted windows, uncorrelated voxel by voxel
    assert abs(_correlation(now[0], now[1])) < 0.05
    later = aug(zeros, mask, [(5, 0), (5, 1)])  # a new epoch: the same bank, new windows
    assert aug.noise_bank(n, torch.device("cpu")) is bank
    for b, window in enumerate(windows(5)):
        assert torch.equal(later[b], window)
        assert abs(_correlation(later[b], out[b])) < 0.05
    again = BatchAugment(prob=1.0, rotate_deg=0.0, scale=0.0, translate_vox=0.0,
                         intensity=0.0, noise_std=0.5, seed=3)
    assert torch.equal(again(zeros, mask, [(4, 1), (4, 0)]), out[[1, 0]])  # from (seed, epoch)


def test_draws_come_from_seed_epoch_and_subject_within_the_config_ranges() -> None:
    aug = BatchAugment(prob=0.5, rotate_deg=5.0, scale=0.05, translate_vox=2.0,
                       intensity=0.1, noise_std=0.02, seed=7)
    same = BatchAugment(prob=0.5, rotate_deg=5.0, scale=0.05, translate_vox=2.0,
                        intensity=0.1, noise_std=0.02, seed=7)
    assert aug.draw(3, 5, 3) == same.draw(3, 5, 3)
    assert aug.draw(3, 5, 3) != aug.draw(4, 5, 3) != aug.draw(3, 6, 3)
    assert BatchAugment(seed=8).draw(3, 5, 3) != BatchAugment(seed=7).draw(3, 5, 3)
    draws = [aug.draw(e, i, 3) for e in range(20) for i in range(20)]
    for kind in ("rotate", "scale", "shift", "noise_std"):
        rate = np.mean([getattr(d, kind) is not None for d in draws])
        assert 0.4 < rate < 0.6, (kind, rate)
    spatial = [d for d in draws if d.rotate is not None]
    assert max(abs(a) for d in spatial for a in d.rotate) <= math.radians(5.0)
    assert max(abs(z - 1) for d in spatial for z in d.zoom) <= 0.05
    assert max(abs(t) for d in spatial for t in d.translate) <= 2.0
    assert max(abs(f - 1) for d in draws if d.scale for f in d.scale) <= 0.1
    assert max(d.noise_std for d in draws if d.noise_std is not None) < 0.02


def test_a_subjects_result_does_not_depend_on_its_batch() -> None:
    aug = BatchAugment(prob=1.0, rotate_deg=8.0, scale=0.08, translate_vox=2.0,
                       intensity=0.1, noise_std=0.05, seed=5)
    images = _volumes(4, seed=1)
    images[1, :, :, :14] = 0.0  # a smaller brain
    images[3].zero_()  # an all-zero sample stays zero under the affine
    mask = torch.ones(4, 2)
    keys = [(2, 10), (2, 11), (2, 12), (2, 13)]
    whole = aug(images, mask, keys)
    pair = aug(images[[2, 0]], mask[[2, 0]], [keys[2], keys[0]])
    alone = aug(images[1:2].clone(), mask[1:2], [keys[1]], inplace=True)
    assert torch.equal(pair[0], whole[2]) and torch.equal(pair[1], whole[0])
    assert torch.equal(alone[0], whole[1])


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_items_resampled_apart_are_written_as_the_affine_then_intensity_then_noise(
        resampler: str) -> None:
    """Items resampled apart (two passes, or the CPU trilinear kernel) take their intensity
    change and noise in the same write: the values of resampling first and changing
    intensity and adding noise after, inside the support box and outside it (where the
    fill is the shift plus the noise)."""
    images = _volumes(8, seed=2)
    support = ((3, 18), (4, 22), (2, 18))  # _volumes are zero outside it
    mask = torch.ones(8, 2)
    mask[[1, 6], 1] = 0.0  # without PET: PET channels zero afterwards, whatever they held
    keys = [(3, i) for i in range(8)]
    for prob, move in ((1.0, 2.0), (0.6, 2.0), (1.0, 30.0)):  # all, a mix, moved out
        aug = BatchAugment(prob=prob, rotate_deg=8.0, scale=0.08, translate_vox=move,
                           intensity=0.1, noise_std=0.05, support=support, seed=5,
                           resampler=resampler)
        out = aug(images, mask, keys)
        draws = [aug.draw(e, i, channels=3) for e, i in keys]
        ref = images.clone()
        resample_(ref, [(b, d.affine) for b, d in enumerate(draws) if d.affine is not None],
                  resampler, support=support)
        for b, d in enumerate(draws):
            for c in range(3):
                ref[b, c] = ref[b, c] * (d.scale or (1.0,) * 3)[c] + (d.shift or (0.0,) * 3)[c]
            if d.noise_std is not None:
                ref[b] += d.noise_std * aug._noise(ref[b], d.noise_seed)
            if not mask[b, 1]:
                ref[b, 1:] = 0.0
        assert float((out - ref).abs().max()) < 1e-5, (prob, move)
        if prob < 1.0:  # the mix holds moved and still items, with and without noise
            kinds = {(d.affine is not None, d.noise_std is not None) for d in draws}
            assert len(kinds) == 4, kinds
            assert any(d.affine is not None and d.scale and d.shift is None
                       and d.noise_std is None
                       for d in draws)  # moved and scaled only: a zero fill
        if move > 20 and resampler == "two_pass":  # beyond the support: boxes empty
            assert sum(two_pass_box(images[b], d.affine, support=support) is None
                       for b, d in enumerate(draws) if d.affine is not None) >= 2


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_a_float16_batch_is_converted_and_augmented_as_its_float32_copy(resampler: str) -> None:
    """Served float16, a batch gives the same float32 result as converted first (on the CPU
    the kernel's items are converted into its source only); the input is left alone."""
    images = _volumes(6, seed=4).half()
    served = images.clone()
    mask = torch.ones(6, 2)
    mask[2, 1] = 0.0
    keys = [(1, i) for i in range(6)]
    aug = BatchAugment(prob=0.7, rotate_deg=6.0, scale=0.05, translate_vox=2.0,
                       intensity=0.1, noise_std=0.05, support=((3, 18), (4, 22), (2, 18)),
                       seed=3, resampler=resampler)
    out = aug(images, mask, keys)
    assert out.dtype == torch.float32 and torch.equal(images, served)
    assert torch.equal(out, aug(images.float(), mask, keys))
    draws = [aug.draw(e, i, channels=3) for e, i in keys]
    assert 0 < sum(d.affine is not None for d in draws) < 6  # moved and still items
    with pytest.raises(ValueError, match=r"`images` must be a \(B, C, D, H, W\) float32 or "
                                         r"float16 tensor, got \(6, 3, 23, 27, 21\) torch.float64"):
        aug(images.double(), mask, keys)


class _Seen(pl.Callback):
    """Record the images the model receives, and what the loader served, during fit."""

    def __init__(self) -> None:
        self.train: list[dict] = []
        self.val: list[dict] = []
        self.served: torch.dtype | None = None
        self.val_served: torch.dtype | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.served = next(iter(trainer.train_dataloader))["images"].dtype

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_served = next(iter(trainer.val_dataloaders))["images"].dtype

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append({"epoch": trainer.current_epoch, "images": batch["images"].clone(),
                           "subject_id": list(batch["subject_id"]),
                           "modality_mask": batch["modality_mask"].clone()})

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx,
                                  dataloader_idx=0) -> None:
        self.val.append({"images": batch["images"].clone(),
                         "subject_id": list(batch["subject_id"])})


@pytest.mark.slow  # a two-epoch fit (about 15 s on 2 busy cores)
def test_fit_augments_on_the_device_after_transfer_in_training_only(tiny_cohort: Path,
                                                                    tmp_path: Path) -> None:
    from gazimed_lab.models.lightning import AlzheimersLightningModule
    from gazimed_lab.training import create_trainer

    cfg = cohort_config(tiny_cohort, tmp_path, *SMALL, *AFFINE, "data.channels=3",
                        "data.batch_size=4", "trainer.max_epochs=2")
    dm = MNIDataModule(cfg)
    seen = _Seen()
    trainer = create_trainer(cfg, callbacks=[seen])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(AlzheimersLightningModule(cfg), datamodule=dm)
    assert seen.served == torch.float16  # the cache dtype crosses to the device
    assert seen.val_served == torch.float32  # a CPU trainer: stacked into float32 at once
    train = dm.train_dataset
    plain = {sid: train[i]["images"] for i, sid in enumerate(train.subject_ids)}
    assert seen.train and {b["epoch"] for b in seen.train} == {0, 1}
    for batch in seen.train:
        assert batch["images"].dtype == torch.float32
        keys = [(batch["epoch"], train.subject_ids.index(s)) for s in batch["subject_id"]]
        inputs = torch.stack([plain[s] for s in batch["subject_id"]])
        expected = dm.augment(inputs, batch["modality_mask"], keys)
        assert torch.equal(batch["images"], expected)
        assert not torch.equal(batch["images"], inputs)
    val = dm.val_dataset
    for batch in seen.val:  # validation: float32, never augmented
        assert batch["images"].dtype == torch.float32
        expected = torch.stack([val[val.subject_ids.index(s)]["images"]
                                for s in batch["subject_id"]])
        assert torch.equal(batch["images"], expected)


def test_loaders_outside_a_trainer_serve_float32_augmented_alike(tiny_cohort: Path,
                                                                  tmp_path: Path) -> None:
    cfg = cohort_config(tiny_cohort, tmp_path, *AFFINE, "data.channels=2", "data.batch_size=4")
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()  # no trainer: converted and augmented in the loader
    batch = next(iter(loader))
    assert batch["images"].dtype == torch.float32 and "augment_key" not in batch
    # the same subjects through the device path (float16 loader + the hook) match exactly
    from gazimed_lab.data.datamodule import subject_loader

    device_side = next(iter(subject_loader(dm.train_dataset, 4, train=True, seed=dm.seed,
                                           on_device=True)))
    assert device_side["images"].dtype == torch.float16
    assert device_side["subject_id"] == batch["subject_id"]
    finished = dm.finish_batch(device_side, train=True)
    assert "augment_key" not in finished and torch.equal(finished["images"], batch["images"])
    # train=False (validation, prediction): converted, not augmented
    plain = dm.finish_batch(next(iter(subject_loader(dm.train_dataset, 4, train=True,
                                                     seed=dm.seed, on_device=True))))
    index = [dm.train_dataset.subject_ids.index(s) for s in plain["subject_id"]]
    assert torch.equal(plain["images"],
                       torch.stack([dm.train_dataset[i]["images"] for i in index]))
    # a CPU trainer's loaders (dtype float32): what is not augmented is stacked into
    # float32 at once, the same values; what is, stays float16 for the augmentation
    joined = next(iter(subject_loader(dm.train_dataset, 4, train=True, seed=dm.seed,
                                      on_device=True, dtype=torch.float32)))
    assert joined["images"].dtype == torch.float16 and "augment_key" in joined
    assert torch.equal(dm.finish_batch(joined, train=True)["images"], batch["images"])
    val = dm.val_dataset
    joined = next(iter(subject_loader(val, 4, on_device=True, dtype=torch.float32)))
    assert joined["images"].dtype == torch.float32
    assert torch.equal(joined["images"],
                       torch.stack([val[val.subject_ids.index(s)]["images"]
                                    for s in joined["subject_id"]]))


def test_normalized_volumes_are_zero_outside_the_mask_the_affine_works_in(tiny_cohort: Path,
                                                                        tmp_path: Path) -> None:
    """The datamodule's affine skips what lies outside the brain mask (its bounding box for
    the two passes, its rows for the CPU trilinear kernel): every cached volume is zero
    there, and with either resampler the result equals the whole-grid resampling."""
    cfg = cohort_config(tiny_cohort, tmp_path, *AFFINE, "data.channels=3", "data.batch_size=4")
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    train = dm.train_dataset
    support = dm.brain_support
    assert support is not None and dm.augment is not None and dm.augment.support is support
    inside = torch.as_tensor(support.mask)
    assert 0.2 < float(inside.float().mean()) < 0.9  # a real part of this grid
    images = torch.stack([train[i]["images"] for i in range(len(train))]).float()
    assert (images[..., ~inside] == 0).all() and (images[..., inside] != 0).any()
    keys = [(0, i) for i in range(len(train))]
    mask = torch.ones(len(train), 2)
    for resampler in RESAMPLERS:
        data = copy.deepcopy(cfg.data)
        data.aug_resampler = resampler
        cut = BatchAugment.from_config(data, seed=dm.seed, support=support)
        whole = BatchAugment.from_config(data, seed=dm.seed)  # no support: the whole grid
        diff = cut(images, mask, keys) - whole(images, mask, keys)
        assert float(diff.abs().max()) < 1e-4, resampler  # float32 rounding of the grid
