"""Learning-rate schedules the configs name that torch does not ship."""
from __future__ import annotations

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class CosineAnnealingRestartLR(LRScheduler):
    """Cosine annealing with restarts, as BasicSR's `CosineAnnealingRestartLR` (the official recipe's schedule).

    Cycle i lasts `periods[i]` iterations and starts at `restart_weights[i] * base_lr`. At iteration t in cycle i,
    which began at iteration c (the sum of the earlier periods):

        lr(t) = eta_min + restart_weights[i] * (base_lr - eta_min) / 2 * (1 + cos(pi * (t - c) / periods[i]))

    A cycle owns its last iteration (t = c + periods[i] gives eta_min), so the next cycle restarts at t + 1. With
    periods [250k, 500k] and a run stopped at 500k, the second cycle is cut halfway: the lr ends near base_lr / 2.
    The lr is a closed form of the iteration, so a resumed run continues the curve exactly.

    Args:
        optimizer: the wrapped optimizer.
        periods: length of each cycle, in iterations (optimizer steps).
        restart_weights: peak of each cycle as a fraction of the base lr; as many as `periods`.
        eta_min: the floor of every cycle.

    Example:
        >>> opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99))
        >>> sched = CosineAnnealingRestartLR(opt, periods=[250000, 500000], restart_weights=[1, 1], eta_min=1e-7)
    """

    def __init__(self, optimizer: Optimizer, periods: Sequence[int], restart_weights: Sequence[float] = (1.0,),
                 eta_min: float = 0.0, last_epoch: int = -1):
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in restart_weights]
        if not self.periods or any(p <= 0 for p in self.periods):
            raise ValueError(f"module.scheduler.periods={list(periods)}: need one or more positive cycle lengths")
        if len(self.restart_weights) != len(self.periods):
            raise ValueError(f"module.scheduler.restart_weights={list(restart_weights)} must have one weight per "
                             f"period ({len(self.periods)} periods: {self.periods})")
        self.eta_min = float(eta_min)
        self.cumulative = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def _cycle(self, t: int) -> int:
        for i, end in enumerate(self.cumulative):
            if t <= end:
                return i
        return len(self.cumulative) - 1  # past the last cycle: stay on its curve (it rises again, as BasicSR's)

    def lr_at(self, t: int) -> list[float]:
        """The lr of every parameter group at iteration t."""
        i = self._cycle(t)
        start = self.cumulative[i - 1] if i > 0 else 0
        factor = 0.5 * (1.0 + math.cos(math.pi * (t - start) / self.periods[i]))
        return [self.eta_min + self.restart_weights[i] * (base - self.eta_min) * factor for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)
