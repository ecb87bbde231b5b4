"""Where a long job (a training loop) reports its parameters, metrics and files, without knowing where.

`guidance/` never imports MLflow. A loop takes an `OpenRun` (a callable that opens a run and yields a
`RunLog`), and does nothing when none is given (`no_run`). `mlops.tracking.tracked_run` is the MLflow
implementation the CLI passes in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Iterator, Optional, Protocol, Union


class RunLog(Protocol):
    """One open run: what a loop may log to it."""

    run_id: Optional[str]

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None: ...
    def log_params(self, params: dict) -> None: ...
    def log_artifact(self, path: Union[str, Path], artifact_path: Optional[str] = None) -> None: ...
    def log_dict(self, data: dict, name: str) -> None: ...


class OpenRun(Protocol):
    """Opens run `run_name` in `experiment` with `params` logged; used as `with open_run(...) as run:`."""

    def __call__(self, experiment: str, run_name: str, params: Optional[dict] = None) -> ContextManager[RunLog]: ...


class NullRun:
    """A run that records nothing (tracking off)."""

    run_id: Optional[str] = None

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None: ...
    def log_params(self, params: dict) -> None: ...
    def log_artifact(self, path: Union[str, Path], artifact_path: Optional[str] = None) -> None: ...
    def log_dict(self, data: dict, name: str) -> None: ...


@contextlib.contextmanager
def no_run(experiment: str, run_name: str, params: Optional[dict] = None) -> Iterator[RunLog]:
    """The default `OpenRun`: a `NullRun`, nothing recorded anywhere."""
    yield NullRun()
