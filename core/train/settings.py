"""How a training run is set up: `TrainSettings`, checked when made, and its learning-rate schedule.

The schedule is a function of the step alone (no scheduler object with state), so a resumed run
needs nothing but the step to continue on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from core.errors import LatentDeskError


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 32             # the global batch; under DDP each process takes batch_size / processes
    lr: float = 1e-4
    seed: int = 0
    warmup_steps: int = 0            # linear ramp up to lr over these first steps
    lr_decay_until: int = 0          # then cosine decay, reaching lr_floor * lr at this step (0: constant lr)
    lr_floor: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # max global gradient norm; 0 = off
    ema_decay: float = 0.0           # 0 = no EMA
    # The EMA starts over from the weights being trained at this step (0 = never): a closing fine-tune
    # (stage 1's for detail) then ships its own weights, not an average reaching back before it.
    ema_restart: int = 0
    bf16: bool = False               # forward passes autocast to bfloat16; weights and optimizer stay fp32
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        if not isinstance(self.ema_restart, int) or self.ema_restart < 0:
            raise LatentDeskError(f"ema-restart must be a step (0 or more), not {self.ema_restart!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LatentDeskError(f"{name.replace('_', '-')} must be a whole number of at least 1, "
                                      f"not {getattr(self, name)!r}")
        if not self.lr > 0:
            raise LatentDeskError(f"the learning rate must be above 0, not {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise LatentDeskError(f"the EMA decay must be in [0, 1), not {self.ema_decay!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): a function of the step alone, so resuming keeps it."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr
        if self.lr_decay_until:
            done = min(1.0, max(0, step - self.warmup_steps) / max(1, self.lr_decay_until - self.warmup_steps))
            lr *= self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * done))
        return lr

    def trajectory(self) -> dict:
        """The settings a resumed run must share: all but how long it runs and how often it reports."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "checkpoint_every", "log_every")}
