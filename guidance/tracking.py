"""MLflow tracking with an embedded default: a SQLite store in the working directory.

`MLFLOW_TRACKING_URI` overrides it (a tracking server, a database). MLflow is imported lazily so
that the library stays quick to import for code that never logs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _experiment(mlflow: Any, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    artifact_location = (Path.cwd() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(name, artifact_location=artifact_location)


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, params: dict | None = None, enabled: bool = True) -> Iterator[Any]:
    """A run in `experiment`, or a no-op logger when tracking is disabled. Yields an object with
    `log_metrics(dict, step)`, `log_params(dict)`, `log_artifact(path)` and `log_dict(dict, name)`."""
    if not enabled:
        yield _NullRun()
        return
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri())
    exp_id = _experiment(mlflow, experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield _MlflowRun(mlflow, run)


class _NullRun:
    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_params(self, params: dict) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: dict, name: str) -> None: ...


class _MlflowRun:
    def __init__(self, mlflow: Any, run: Any) -> None:
        self._mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: dict) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._mlflow.log_dict(data, name)
