"""Host buffers: large ones are kept and handed out again only once nothing refers to them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cohort_config

from gazimed_lab.data import batches
from gazimed_lab.data.batches import KEPT_PER_SHAPE, host_empty, release_host_buffers
from gazimed_lab.data.datamodule import MNIDataModule, subject_loader


@pytest.fixture
def kept_from_1kib(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep buffers from 1 KiB on (the default, 32 MiB, is a 2 mm batch), none kept before."""
    release_host_buffers()
    monkeypatch.setattr(batches, "REUSED_FROM", 1024)
    yield
    release_host_buffers()


def test_a_buffer_comes_back_only_when_no_tensor_refers_to_it(kept_from_1kib: None) -> None:
    first = host_empty((4, 256), torch.float32)
    address = first.data_ptr()
    view, array, storage = first[1:], first.numpy(), first.untyped_storage()
    del first
    holders: list[object] = [view, array, storage]
    while holders:  # any one of a view, an exported array or the storage holds it
        assert host_empty((4, 256), torch.float32).data_ptr() != address
        holders.pop()
    del view, array, storage
    assert host_empty((4, 256), torch.float32).data_ptr() == address
    # another shape or dtype is another buffer
    assert host_empty((2, 512), torch.float32).data_ptr() != address
    assert host_empty((4, 256), torch.float16).data_ptr() != address


def test_at_most_a_few_per_shape_are_kept_and_small_ones_never(kept_from_1kib: None) -> None:
    held = [host_empty((512,), torch.float32) for _ in range(KEPT_PER_SHAPE + 2)]
    assert len({t.data_ptr() for t in held}) == len(held)  # all in use: all distinct
    host_empty((8,), torch.float32)  # 32 bytes: not kept
    assert release_host_buffers() == KEPT_PER_SHAPE
    assert release_host_buffers() == 0
    held[0].fill_(3.0)  # released buffers still in use stay valid
    assert torch.all(held[0] == 3.0)


def test_threads_never_share_a_buffer(kept_from_1kib: None) -> None:
    clashes: list[int] = []

    def work(mark: int) -> None:
        for _ in range(300):
            buffer = host_empty((1024,), torch.float32)
            buffer.fill_(float(mark))
            if not torch.all(buffer == mark):
                clashes.append(mark)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not clashes


def test_batches_kept_by_the_caller_keep_their_values(kept_from_1kib: None, tiny_cohort: Path,
                                                      tmp_path: Path) -> None:
    cfg = cohort_config(tiny_cohort, tmp_path, "data.channels=2", "data.batch_size=2")
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    train = dm.train_dataset.as_stored(augment=False)
    expected = {sid: train[i]["images"].float() for i, sid in enumerate(train.subject_ids)}
    loader = subject_loader(train, 2, on_device=True, dtype=torch.float32)
    kept = list(loader)  # every batch held at once: none may be reused
    assert len({b["images"].data_ptr() for b in kept}) == len(kept)
    for batch in kept:
        assert batch["images"].dtype == torch.float32
        assert torch.equal(batch["images"], torch.stack([expected[s] for s in batch["subject_id"]]))
    del kept, batch
    addresses = [b["images"].data_ptr() for b in loader]  # each dropped before the next
    assert len(set(addresses)) < len(addresses)  # so buffers were handed out again


def test_a_batch_read_at_once_is_the_files_and_serves_as_the_stack(tmp_path: Path) -> None:
    from gazimed_lab.data.batches import read_batch, stack_images

    volumes = [np.random.default_rng(k).standard_normal((2, 5, 4, 3)).astype(np.float16)
               for k in range(3)]
    paths = [tmp_path / f"{k}.npy" for k in range(3)]
    for path, volume in zip(paths, volumes):
        np.save(path, volume)
    batch = read_batch(paths)
    assert batch is not None and batch.dtype == torch.float16
    assert np.array_equal(batch.numpy(), np.stack(volumes))
    items = [batch[b] for b in range(3)]
    assert stack_images(items).data_ptr() == batch.data_ptr()  # taken as it is, no copy
    again = stack_images(items)  # taken once: a second stack is a copy
    assert again.data_ptr() != batch.data_ptr() and torch.equal(again, batch)
    preloaded = batch.clone()  # views of a tensor read_batch did not make: copied, not aliased
    assert stack_images(list(preloaded)).data_ptr() != preloaded.data_ptr()
    assert stack_images(items[1:]).data_ptr() != batch.data_ptr()  # not the whole batch
    assert torch.equal(stack_images(items, torch.float32), batch.float())
    # files that cannot make one batch are left to one read each
    np.save(paths[2], volumes[2][:1])
    assert read_batch(paths) is None
    np.save(paths[2], volumes[2].astype(np.float64))
    assert read_batch(paths[2:] + paths[:2]) is None
    # a truncated or foreign file is named
    np.save(paths[2], volumes[2])
    paths[2].write_bytes(paths[2].read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"cache entry must hold 240 bytes of data for "
                                         r"\(2, 5, 4, 3\) float16, got 230 \(.*2\.npy\); a "
                                         r"truncated file: rebuild the cache"):
        read_batch(paths)
    paths[2].write_text("not an array")
    with pytest.raises(ValueError, match=r"cache entry must be a \.npy array, got .* "
                                         r"\(.*2\.npy\); rebuild the cache"):
        read_batch(paths)


def test_the_loaders_batches_are_their_items(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = cohort_config(tiny_cohort, tmp_path, "data.channels=3", "data.batch_size=3")
    dm = MNIDataModule(cfg)
    dm.setup("fit")
    stored = dm.train_dataset.as_stored()
    keys = [(2, 4), (2, 0), (2, 7)]
    together = stored.__getitems__(keys)  # what a DataLoader asks for
    for key, item in zip(keys, together):
        alone = stored[key]
        assert item.keys() == alone.keys() and item["augment_key"] == key
        for name, value in alone.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == item[name].dtype and torch.equal(value, item[name]), name
            else:
                assert value == item[name], name
