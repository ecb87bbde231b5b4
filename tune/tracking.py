"""MLflow for a sweep's trials: Ray's `setup_mlflow` opens a trial's nested run inside the trial; a
trial that ASHA stops never reaches its own `end_run`, so `RunStatusCallback` closes each nested run on
the driver when Tune says the trial is over (FINISHED when it scored every batch, KILLED when stopped
early, FAILED on error). The sweep's parent run and experiment come from `mlops.tracking`.

Tracking never costs a trial: `TrialLog` keeps what the MLflow server did not take (server down, network)
and sends it with the next batch's metrics once the server answers again; what is still unsent when the
trial ends is counted in its last report (`mlflow_unlogged`), and the sweep says so at the end (the
figures themselves are in Tune's results either way). Runs the callback could not close are tried again
when the sweep ends.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from ray.tune import Callback

from mlops.tracking import end_run


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


class TrialLog:
    """A trial's MLflow run that never fails the trial. `start()` opens the run (Ray's `setup_mlflow`) and
    is tried again at each batch until it works; metrics go out in order, and a batch the server did not
    take waits in `pending` for the next try."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self.mlflow: Optional[Any] = None
        self.pending: list[tuple[dict, int]] = []
        self.problem = ""  # the last failure, for the trial's log

    @property
    def run_id(self) -> str:
        return self.mlflow.active_run().info.run_id if self.mlflow is not None else ""

    def ready(self) -> bool:
        if self.mlflow is None:
            try:
                self.mlflow = self._start()
            except Exception as exc:
                self.problem = f"MLflow run not started: {_short(exc)}"
                return False
        return True

    def call(self, fn: Callable[[Any], Any]) -> bool:
        """One logging call on the run (a file, the media); False, and noted, when it failed."""
        if not self.ready():
            return False
        try:
            fn(self.mlflow)
            return True
        except Exception as exc:
            self.problem = f"MLflow call failed: {_short(exc)}"
            return False

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.pending.append((dict(metrics), step))
        while self.pending:
            batch, at = self.pending[0]
            if not self.call(lambda m: m.log_metrics(batch, step=at)):
                return
            self.pending.pop(0)

    def end(self) -> None:
        if self.mlflow is not None:
            self.call(lambda m: m.end_run())


class RunStatusCallback(Callback):
    """Ends each trial's nested MLflow run with the status Tune gave the trial; `unclosed` keeps the runs
    the server did not answer for, and `close_unclosed()` (at the end of the sweep) tries them again."""

    def __init__(self, tracking_uri: str, batches: int) -> None:
        self.tracking_uri, self.batches = tracking_uri, batches
        self.unclosed: dict[str, tuple[str, dict]] = {}  # run id -> (status, tags)
        self.problem = ""

    def _close(self, run_id: str, status: str, tags: dict) -> bool:
        try:
            end_run(run_id, status, tags, tracking_uri=self.tracking_uri)
            self.unclosed.pop(run_id, None)
            return True
        except Exception as exc:  # tracking trouble must not stop the sweep
            self.unclosed[run_id] = (status, tags)
            self.problem = _short(exc)
            return False

    def _end(self, trial: Any, status: str) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if not run_id:
            return
        outcome = json.dumps({"status": status, "batches": trial.last_result.get("batches")})
        self._close(run_id, status, {"tune.outcome": outcome})

    def close_unclosed(self) -> list[str]:
        """Try the runs that could not be closed again; returns the ids still open."""
        for run_id, (status, tags) in list(self.unclosed.items()):
            self._close(run_id, status, tags)
        return list(self.unclosed)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("batches", 0)) >= self.batches
        self._end(trial, "FINISHED" if done else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
