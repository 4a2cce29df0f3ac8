"""``SubjectStandardize``: features standardized across subjects, across processes too.

Every brain in MNI space shares one anatomy, so the encoder's features at a
token differ between subjects by a few percent of their size. Standardizing
each feature across the subjects of a batch (BatchNorm statistics; running ones
in evaluation) exposes those differences (see :mod:`gazimed_lab.models.fusion`).

With several processes (DDP) the statistics cover the *global* batch: the
sums are all-reduced with autograd, so the forward values and the gradients
equal those of one process holding every subject. torch's ``SyncBatchNorm``
does this on GPUs only; this works with the gloo backend on CPU as well, which
is why the trainer does not convert the network with ``sync_batchnorm``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["SubjectStandardize", "distributed_world"]


def distributed_world() -> int:
    """Return the number of processes of the initialized default process group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


class SubjectStandardize(nn.BatchNorm1d):
    """Standardize each feature across subjects (BatchNorm) on any ``(B, ...)`` tensor.

    The trailing dimensions are flattened into ``num_features`` features. A
    training batch of one subject (over all processes) has no between-subject
    statistics: it is normalized with the running statistics (not updated), as
    in evaluation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``x`` (running statistics in eval, or for a batch of one subject)."""
        flat = x.reshape(x.shape[0], -1)
        if self.training and distributed_world() > 1:
            out = self._global_batch(flat)
        elif self.training and flat.shape[0] == 1:
            out = self._running(flat)
        else:
            out = super().forward(flat)
        return out.view(x.shape)

    def _running(self, flat: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)

    def _global_batch(self, flat: torch.Tensor) -> torch.Tensor:
        """Batch statistics over every process's subjects (two-pass mean and variance)."""
        from torch.distributed.nn.functional import all_reduce

        flat = flat.float()
        count = torch.tensor([float(flat.shape[0])], device=flat.device)
        dist.all_reduce(count)
        n = float(count.item())
        if n <= 1:
            return self._running(flat)
        mean = all_reduce(flat.sum(dim=0)) / n
        centered = flat - mean
        var = all_reduce((centered * centered).sum(dim=0)) / n
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        out = centered * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out
