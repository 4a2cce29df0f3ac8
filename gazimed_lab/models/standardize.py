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

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["FittedStandardize", "SubjectStandardize", "distributed_world"]


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


class FittedStandardize(SubjectStandardize):
    """Standardize each feature with statistics fitted once on the training split.

    For features that training does not change (e.g. regional means of the
    preprocessed images), a batch of a few subjects gives noisy statistics; like a
    ``StandardScaler`` fitted on the training rows, this uses the mean and variance
    of the whole training split, in training as in evaluation. They are fitted by one
    pass over the training batches before the first epoch
    (:meth:`begin_fit` / :meth:`accumulate` / :meth:`end_fit`, all-reduced over
    processes), and saved in checkpoints with the other buffers. Until fitted it
    behaves as :class:`SubjectStandardize`.
    """

    fitted: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._sums: list[torch.Tensor] | None = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # Checkpoints written before ``fitted`` existed hold a trained model's running
        # statistics: read them as fitted.
        state_dict.setdefault(prefix + "fitted", torch.ones((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``x`` with the fitted statistics (batch ones until fitted)."""
        if not bool(self.fitted):
            return super().forward(x)
        return self._running(x.reshape(x.shape[0], -1)).view(x.shape)

    def begin_fit(self) -> None:
        """Start accumulating statistics (count, sum, sum of squares, in float64)."""
        self._sums = None

    def accumulate(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` ``(n, ...)`` to the statistics being fitted."""
        flat = x.detach().reshape(x.shape[0], -1).double()
        sums = [torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=flat.device),
                flat.sum(dim=0), (flat * flat).sum(dim=0)]
        self._sums = sums if self._sums is None else [a + b for a, b in zip(self._sums, sums)]

    def end_fit(self) -> int:
        """Set the statistics from what was accumulated (all processes); return the row count."""
        if self._sums is None:
            n_feat = self.num_features
            device = self.running_mean.device if self.running_mean is not None else None
            self._sums = [torch.zeros(1, dtype=torch.float64, device=device),
                          torch.zeros(n_feat, dtype=torch.float64, device=device),
                          torch.zeros(n_feat, dtype=torch.float64, device=device)]
        count, total, squares = self._sums
        if distributed_world() > 1:
            for t in (count, total, squares):
                dist.all_reduce(t)
        n = float(count.item())
        self._sums = None
        if n < 2:
            raise ValueError(f"fitted standardization must see at least 2 training rows, got "
                             f"{n:.0f}")
        mean = total / n
        var = torch.clamp(squares / n - mean * mean, min=0.0) * n / (n - 1)
        assert self.running_mean is not None and self.running_var is not None
        with torch.no_grad():
            self.running_mean.copy_(mean.to(self.running_mean.dtype))
            self.running_var.copy_(var.to(self.running_var.dtype))
            self.fitted.fill_(True)
        return int(n)
