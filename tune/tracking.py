"""MLflow for a sweep's trials: Ray's `setup_mlflow` opens a trial's nested run inside the trial; a
trial that ASHA stops never reaches its own `end_run`, so `RunStatusCallback` closes each nested run on
the driver when Tune says the trial is over (FINISHED when it scored every batch, KILLED when stopped
early, FAILED on error). The sweep's parent run and experiment come from `mlops.tracking`.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune import Callback

from mlops.tracking import end_run


class RunStatusCallback(Callback):
    """Ends each trial's nested MLflow run with the status Tune gave the trial."""

    def __init__(self, tracking_uri: str, batches: int) -> None:
        self.tracking_uri, self.batches = tracking_uri, batches

    def _end(self, trial: Any, status: str) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if not run_id:
            return
        outcome = json.dumps({"status": status, "batches": trial.last_result.get("batches")})
        try:
            end_run(run_id, status, {"tune.outcome": outcome}, tracking_uri=self.tracking_uri)
        except Exception as exc:  # tracking trouble must not stop the sweep
            print(f"warning: could not close MLflow run {run_id}: {exc}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("batches", 0)) >= self.batches
        self._end(trial, "FINISHED" if done else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
