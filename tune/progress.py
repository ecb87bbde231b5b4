"""A Tune callback that reports each finished trial, so the CLI can show a sweep's progress and ETA.

It runs on the driver, where Tune calls it; `update(done, total, status)` is the CLI's progress bar
(`speechguide.progress`). A trial counts as done when it ends in any way: scored every batch, stopped
early by ASHA, or failed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ray.tune import Callback


class TrialProgress(Callback):
    def __init__(self, total: int, update: Callable[[int, int, str], None]) -> None:
        self.total, self.update = total, update
        self.done = 0
        self.best = -math.inf

    def _ended(self, trial: Any, how: str) -> None:
        self.done += 1
        objective = (trial.last_result or {}).get("objective")
        if objective is not None and objective > self.best:
            self.best = float(objective)
        best = f", best objective {self.best:.3f}" if self.best > -math.inf else ""
        self.update(self.done, self.total, f"{trial.trial_id} {how}{best}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "ended")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "failed")
