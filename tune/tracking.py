"""MLflow for a sweep: the parent run (created, and reopened on resume, by the driver) and the
terminal status of every trial's nested run.

Ray's `setup_mlflow` opens a trial's nested run inside the trial; a trial that ASHA stops never
reaches its own `end_run`, so `RunStatusCallback` closes each nested run on the driver when Tune
says the trial is over (FINISHED when it scored every batch, KILLED when stopped early, FAILED on error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The sweep experiment (artifacts beside an embedded sqlite store, as guidance.tracking does)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location)


def start_parent(tracking_uri: str, exp_id: str, run_name: str, params: dict) -> str:
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=run_name, tags={"speechguide.kind": "tune-sweep"})
    for k, v in params.items():
        c.log_param(run.info.run_id, k, str(v)[:500])
    return run.info.run_id


def reopen_parent(tracking_uri: str, run_id: str) -> None:
    client(tracking_uri).update_run(run_id, status="RUNNING")


def finish_parent(tracking_uri: str, run_id: str, metrics: dict, best_profile: Optional[dict], table: list[dict], status: str = "FINISHED") -> None:
    c = client(tracking_uri)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and v == v:
            c.log_metric(run_id, k, float(v))
    if best_profile is not None:
        c.log_dict(run_id, best_profile, "best_profile.json")
    c.log_dict(run_id, {"trials": table}, "trials.json")
    c.set_terminated(run_id, status)


class RunStatusCallback(Callback):
    """Ends each trial's nested MLflow run with the status Tune gave the trial."""

    def __init__(self, tracking_uri: str, batches: int) -> None:
        self.tracking_uri, self.batches = tracking_uri, batches

    def _end(self, trial: Any, status: str) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if not run_id:
            return
        try:
            c = client(self.tracking_uri)
            if c.get_run(run_id).info.status == "RUNNING":
                c.set_terminated(run_id, status)
            c.set_tag(run_id, "tune.outcome", json.dumps({"status": status, "batches": trial.last_result.get("batches")}))
        except Exception as exc:  # tracking trouble must not stop the sweep
            print(f"warning: could not close MLflow run {run_id}: {exc}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("batches", 0)) >= self.batches
        self._end(trial, "FINISHED" if done else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
