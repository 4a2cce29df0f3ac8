"""A ridge regression fitted in closed form, its penalty chosen by leave-one-out error.

:class:`RidgeFit` accumulates the sufficient statistics of a ridge regression of a
target on features (row count, sums, cross-products; all-reduced over processes),
then :meth:`RidgeFit.solve` returns the coefficients and intercept for the penalty
among :data:`RIDGE_ALPHAS` (times the row count) with the smallest leave-one-out
squared error. The leave-one-out residual of row ``i`` is ``e_i / (1 - h_i)``
(``h_i`` its leverage, the intercept's ``1 / n`` included), so no refit is needed;
the leverages need the rows themselves, which each process keeps for its own rows
and all-reduces as error sums. The intercept is not penalized.

The regions pathway (``model.region_readout: ridge``) fits its readout this way,
once before the first epoch, as scikit-learn's ``RidgeCV`` would on the same
standardized features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from gazimed_lab.models.standardize import distributed_world

__all__ = ["RIDGE_ALPHAS", "RidgeFit", "RidgeSolution"]

#: Ridge penalties tried, as multiples of the number of training rows.
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class RidgeSolution:
    """Coefficients ``(F,)``, intercept, the penalty chosen and every penalty's LOO error.

    With ``standardize_target`` the coefficients and intercept predict the target's
    z-score (``target_mean`` and ``target_std`` of the rows seen); the LOO errors stay
    in the target's units.
    """

    coef: torch.Tensor
    intercept: float
    alpha: float
    loo_mse: dict[float, float]
    rows: int
    target_mean: float = 0.0
    target_std: float = 1.0


class RidgeFit:
    """Accumulate ``(features, target)`` rows, then solve the ridge regression (module doc)."""

    def __init__(self, n_features: int, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> None:
        if int(n_features) < 1:
            raise ValueError(f"`n_features` must be >= 1, got {n_features}")
        if not alphas or any(not a > 0 for a in alphas):
            raise ValueError(f"`alphas` must be positive penalties, got {alphas}")
        self.n_features = int(n_features)
        self.alphas = tuple(float(a) for a in alphas)
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []

    def accumulate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` ``(n, F)`` with targets ``y`` ``(n,)``."""
        x = x.detach().double().reshape(x.shape[0], -1)
        y = y.detach().double().reshape(-1)
        if x.shape[1] != self.n_features or len(y) != len(x):
            raise ValueError(f"ridge rows must be (n, {self.n_features}) with n targets, got "
                             f"{tuple(x.shape)} and {len(y)}")
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise ValueError("ridge rows and targets must be finite, got NaN or inf")
        self._rows.append((x, y))

    def _local(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows:
            return (torch.cat([x for x, _ in self._rows]), torch.cat([y for _, y in self._rows]))
        empty = torch.zeros(0, self.n_features, dtype=torch.float64)
        return empty, torch.zeros(0, dtype=torch.float64)

    def solve(self, standardize_target: bool = False) -> RidgeSolution:
        """Return the ridge solution with the smallest leave-one-out error (all processes).

        ``standardize_target``: predict the target's z-score instead (same penalty, the
        coefficients divided by the target's standard deviation).
        """
        x, y = self._local()
        n_t = torch.tensor([float(len(y))], dtype=torch.float64, device=x.device)
        sums = [n_t, x.sum(dim=0), y.sum().reshape(1), x.t() @ x, x.t() @ y,
                (y * y).sum().reshape(1)]
        _all_reduce(sums)
        n = float(sums[0].item())
        if n < 3:
            raise ValueError(f"the ridge readout must see at least 3 training rows, got {n:.0f}")
        mx, my = sums[1] / n, float(sums[2].item()) / n
        gram = sums[3] - n * torch.outer(mx, mx)          # centred X'X
        cross = sums[4] - n * mx * my                      # centred X'y
        eye = torch.eye(self.n_features, dtype=torch.float64, device=x.device)
        xc, yc = x - mx, y - my
        best: tuple[float, float, torch.Tensor] | None = None
        errors: dict[float, float] = {}
        for alpha in self.alphas:
            inverse = torch.linalg.inv(gram + alpha * n * eye)
            coef = inverse @ cross
            leverage = ((xc @ inverse) * xc).sum(dim=1) + 1.0 / n
            residual = (yc - xc @ coef) / torch.clamp(1.0 - leverage, min=1e-6)
            total = (residual * residual).sum().reshape(1)
            _all_reduce([total])
            errors[alpha] = float(total.item()) / n
            if best is None or errors[alpha] < best[0]:
                best = (errors[alpha], alpha, coef)
        assert best is not None
        self._rows = []
        _, alpha, coef = best
        intercept = my - float(mx @ coef)
        if not standardize_target:
            return RidgeSolution(coef=coef, intercept=intercept, alpha=alpha, loo_mse=errors,
                                 rows=int(n))
        std = max(float(sums[5].item()) / n - my * my, 0.0) ** 0.5 * (n / (n - 1)) ** 0.5
        if not std > 0:
            raise ValueError("the ridge readout's training targets must vary, got one value")
        return RidgeSolution(coef=coef / std, intercept=(intercept - my) / std, alpha=alpha,
                             loo_mse=errors, rows=int(n), target_mean=my, target_std=std)


def _all_reduce(tensors: list[torch.Tensor]) -> None:
    if distributed_world() > 1:
        for t in tensors:
            dist.all_reduce(t)
