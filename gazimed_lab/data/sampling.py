"""Subject order per epoch: seeded by (seed, epoch), shared out across processes.

Why not torch's defaults:

- ``DataLoader(shuffle=True, generator=...)`` advances one generator epoch after
  epoch, so a run resumed from a checkpoint sees another order than the run it
  continues. Here the order of epoch ``e`` is a function of ``(seed, e)`` only.
- ``DistributedSampler`` shuffles with its own scheme and pads the evaluation
  splits with repeated subjects (their scores would count twice in the metrics).
  Here every process takes an interleaved share of the *same* order: with ``W``
  processes and ``data.batch_size = B`` each, global batch ``i`` holds exactly
  the subjects that batch ``i`` of a single-process run with batch ``W * B``
  holds. Evaluation splits are never padded (shares may differ by one subject).

Training items are keyed ``(epoch, index)`` so that augmentation draws depend
on the seed, the epoch and the subject only (not on worker count, order or
resume); see :class:`gazimed_lab.data.transforms.VolumeDataset`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["SubjectSampler", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """Derive a 32-bit seed from integers (``SeedSequence``: unrelated streams per tuple)."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


class SubjectSampler(DistributedSampler):
    """Epoch-seeded subject order, interleaved across ``num_replicas`` processes.

    A ``DistributedSampler`` subclass, so Lightning keeps it as it is (and calls
    :meth:`set_epoch` before every epoch).

    Parameters
    ----------
    dataset
        Anything with a length.
    shuffle
        Training: a new permutation each epoch, the last ``n % num_replicas``
        subjects of it left out so every process gets as many batches.
        Evaluation (``False``): subject order, every subject exactly once.
    seed
        The run's seed (``system.seed``).
    num_replicas, rank
        Number of processes and this process's global rank.
    keyed
        Yield ``(epoch, index)`` instead of ``index`` (training with augmentation).
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        keyed: bool = False,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"`rank` must be in [0, num_replicas), got rank {rank} of {num_replicas}"
            )
        n = len(dataset)
        if 0 < n < num_replicas:
            raise ValueError(
                f"every process must get at least one subject, got {n} subjects for "
                f"{num_replicas} processes; use fewer devices or a larger split"
            )
        # DistributedSampler only takes len() of the dataset.
        super().__init__(cast("Dataset[Any]", dataset), num_replicas=num_replicas, rank=rank,
                         shuffle=shuffle, seed=seed, drop_last=False)
        self.keyed = keyed
        if shuffle:
            self.num_samples = n // num_replicas
        else:
            self.num_samples = len(range(rank, n, num_replicas))
        self.total_size = self.num_samples * num_replicas if shuffle else n

    def order(self) -> list[int]:
        """Global subject order of the current epoch (before sharing out)."""
        n = len(self.dataset)  # type: ignore[arg-type]  # Sized (see __init__)
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=generator).tolist()[: self.total_size]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        """Yield the indices (or ``(epoch, index)`` keys) of this process's share."""
        share = self.order()[self.rank :: self.num_replicas]
        if self.keyed:
            return iter([(int(self.epoch), i) for i in share])
        return iter(share)

    def __len__(self) -> int:
        """Return the number of subjects this process serves per epoch."""
        return self.num_samples
