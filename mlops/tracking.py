"""MLflow tracking: the tracking URI, the one get-or-create-experiment helper, runs.

The default tracking URI is a SQLite store in the working directory; `MLFLOW_TRACKING_URI` overrides
it (a tracking server, a database), and every function takes `tracking_uri=` to override both. An
experiment created on a SQLite store keeps its artifacts beside the database (`mlartifacts/`); a
server decides itself. MLflow is imported inside the functions, so importing this module (e.g. for a
command run with `--no-mlflow`) costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from guidance.run_log import NullRun, RunLog

SQLITE_PREFIX = "sqlite:///"
# MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s timeout) keep one call against a server
# that is down busy for about 4 minutes: meant for rate limits. A command a person waits on, and a Tune trial
# that has samples to make, give up after a few seconds instead and say so (or log again later).
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def fail_fast_http() -> None:
    """Bound MLflow's HTTP retries in this process (`FAIL_FAST_HTTP`), unless the user set them; MLflow
    reads them at every request."""
    for key, value in FAIL_FAST_HTTP.items():
        os.environ.setdefault(key, value)


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: Optional[str] = None) -> str:
    """The URI to use: `tracking_uri` when given, else `default_tracking_uri()`."""
    return tracking_uri or default_tracking_uri()


def client(*, tracking_uri: Optional[str] = None) -> Any:
    """An `MlflowClient` whose tracking and registry URIs are both the resolved tracking URI (never
    MLflow's process-global state, so it is safe beside runs tracked elsewhere in the process)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(tracking_uri: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: `mlartifacts/` beside a SQLite database, else the
    server's choice (None)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return (Path(tracking_uri[len(SQLITE_PREFIX) :]).resolve().parent / "mlartifacts").as_uri()


def experiment_id(name: str, *, tracking_uri: Optional[str] = None) -> str:
    """The id of experiment `name`, created when it does not exist yet (also when another process
    creates it at the same moment)."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    c = client(tracking_uri=uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException:  # created concurrently
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _param(value: Any) -> str:
    return str(value)[:500]  # MLflow's limit on a parameter value


@contextlib.contextmanager
def tracked_run(
    experiment: str, run_name: str, params: Optional[dict] = None, enabled: bool = True, *, tracking_uri: Optional[str] = None
) -> Iterator[RunLog]:
    """A run in `experiment`, or a no-op `NullRun` when tracking is disabled. Yields a `RunLog`
    (`log_metrics(dict, step)`, `log_params(dict)`, `log_artifact(path)`, `log_dict(dict, name)`).

    Implements `guidance.run_log.OpenRun`: pass it where a guidance loop takes a tracker."""
    if not enabled:
        yield NullRun()
        return
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    exp_id = experiment_id(experiment, tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield _MlflowRun(mlflow, run)


class _MlflowRun:
    def __init__(self, mlflow: Any, run: Any) -> None:
        self._mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: dict) -> None:
        self._mlflow.log_params({k: _param(v) for k, v in params.items()})

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._mlflow.log_dict(data, name)


# ---- runs driven from outside (a sweep's parent run, its trials' nested runs) ----------------------


def start_run(
    exp_id: str, run_name: str, params: dict, tags: Optional[dict] = None, *, tracking_uri: Optional[str] = None
) -> str:
    """Create a RUNNING run in the experiment with id `exp_id`, with `params` and `tags`; returns its id.
    The run stays open until `finish_run` (or `end_run`), across processes and restarts."""
    c = client(tracking_uri=tracking_uri)
    run = c.create_run(exp_id, run_name=run_name, tags=tags or {})
    for k, v in params.items():
        c.log_param(run.info.run_id, k, _param(v))
    return run.info.run_id


def reopen_run(run_id: str, *, tracking_uri: Optional[str] = None) -> None:
    """Mark a run RUNNING again (a resumed sweep goes on logging to its parent run)."""
    client(tracking_uri=tracking_uri).update_run(run_id, status="RUNNING")


def finish_run(
    run_id: str, metrics: dict, dicts: dict[str, Any], status: str = "FINISHED", *, tracking_uri: Optional[str] = None
) -> None:
    """Log the finite numeric `metrics` and each of `dicts` ({artifact file name: JSON-able data}), then end the run."""
    c = client(tracking_uri=tracking_uri)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and v == v:
            c.log_metric(run_id, k, float(v))
    for name, data in dicts.items():
        c.log_dict(run_id, data, name)
    c.set_terminated(run_id, status)


def end_run(run_id: str, status: str, tags: Optional[dict[str, str]] = None, *, tracking_uri: Optional[str] = None) -> None:
    """End a run with `status` unless it has ended already, and set `tags` on it either way."""
    c = client(tracking_uri=tracking_uri)
    if c.get_run(run_id).info.status == "RUNNING":
        c.set_terminated(run_id, status)
    for k, v in (tags or {}).items():
        c.set_tag(run_id, k, v)
