"""Learning-rate schedule: linear warmup, then a cosine (or constant) to the end of training."""

from __future__ import annotations

import math
from dataclasses import dataclass

from timeviper.train.config import OptimConfig


@dataclass(frozen=True)
class Schedule:
    """``schedule(step)`` is the factor on the peak learning rate for the update after ``step``
    completed steps (0 <= step < total_steps).

    Warmup ramps ``1/W, 2/W, ..., 1`` over the first ``W = ceil(warmup_ratio * total_steps)``
    updates; the cosine then falls from there to ``min_lr_ratio``, which the last update uses. The
    factor is a pure function of the step, so resuming needs nothing but the step.
    """

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    min_lr_ratio: float = 0.0

    @classmethod
    def from_config(cls, optim: OptimConfig, total_steps: int) -> Schedule:
        return cls(total_steps, math.ceil(optim.warmup_ratio * total_steps), optim.scheduler, optim.min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = (step + 1 - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine
