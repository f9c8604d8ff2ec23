"""Training health, watched at every optimizer step: the warnings the seeds describe, one line each.

- a loss spike: a step's train loss above `loss_spike_factor` x the running median of recent steps;
- a gradient norm (before clipping) above `grad_norm_max`;
- no improvement of train.monitor for `plateau_evals` validations while early stopping is off.

Each kind warns at most once per validation period, so a bad stretch is one line, not thousands.
Non-finite losses and gradients are not warnings: the loop stops on them (see trainer.py).
"""

from __future__ import annotations

import statistics
from collections import deque

from kiln.config import HealthConfig

WINDOW = 50        # steps in the running median
MIN_HISTORY = 20   # steps before spikes are judged at all


class HealthMonitor:
    def __init__(self, settings: HealthConfig, patience: int | None):
        self.settings, self.patience = settings, patience
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.warned: set[str] = set()

    def after_step(self, step: int, loss: float, grad_norm: float) -> list[str]:
        warnings = []
        s = self.settings
        if s.loss_spike_factor and len(self.recent) >= MIN_HISTORY and "spike" not in self.warned:
            median = statistics.median(self.recent)
            if median > 0 and loss > s.loss_spike_factor * median:
                self.warned.add("spike")
                warnings.append(f"loss spike at step {step}: train loss {loss:.4g} is {loss / median:.1f}x its running median "
                                f"{median:.4g}; if it repeats, lower train.lr or set train.gradient_clip_val")
        self.recent.append(loss)
        if s.grad_norm_max and grad_norm > s.grad_norm_max and "grad" not in self.warned:
            self.warned.add("grad")
            warnings.append(f"gradient norm {grad_norm:.4g} at step {step} is above train.health.grad_norm_max="
                            f"{s.grad_norm_max:g}; set train.gradient_clip_val or lower train.lr")
        return warnings

    def after_validation(self, bad_evals: int, monitor: str) -> list[str]:
        self.warned.clear()
        n = self.settings.plateau_evals
        if n and self.patience is None and bad_evals == n:
            return [f"{monitor} has not improved for {n} validations and early stopping is off (train.patience: null); "
                    f"check the data, the learning rate, or set train.patience"]
        return []
