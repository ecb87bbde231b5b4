"""A sweep: Optuna (through Ray Tune) proposes profiles, ASHA or FIFO schedules their trials.

The default profile is the first point Optuna evaluates, so every sweep measures its own baseline
on the same noise. State lives under `storage_path/name` (a local path or any URI Ray's storage
accepts); a sidecar file there records the settings and the MLflow parent run, so
`resume(path)` rebuilds the same trainable and `Tuner.restore` carries on with every finished
trial kept and errored ones resumed from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from guidance.guides import GuidanceProfile
from tune.evaluator import base_profile, load_models, score_profile, val_reference, weights
from tune.objective import OUTSIDE_METRIC
from tune.settings import SIDECAR, TuneSettings, _is_uri
from tune.space import ProfileSpace, SpaceBounds


KEPT_METRICS = (
    "objective", "judge_accuracy", OUTSIDE_METRIC, "fd", "diversity", "samples", "nonfinite_samples", "trial_seconds", "batches",
    "time_total_s", "timestamp", "mlflow_unlogged",
)
REGISTERED_METRICS = ("objective", "judge_accuracy", OUTSIDE_METRIC, "fd", "diversity")


@dataclass
class TrialRow:
    trial_id: str
    status: str  # "complete" (every batch) | "stopped" (early, by ASHA) | "error"
    metrics: dict[str, float]
    config: dict[str, Any]
    is_default: bool = False


@dataclass
class SweepResult:
    path: str
    settings: TuneSettings
    rows: list[TrialRow]
    best: Optional[TrialRow]
    best_profile: Optional[GuidanceProfile]
    baseline: dict[str, float]
    pareto: list[str] = field(default_factory=list)
    parent_run_id: Optional[str] = None
    registered_version: Optional[int] = None
    registration_note: str = ""
    wall_seconds: float = 0.0
    tracking_problems: list[str] = field(default_factory=list)  # what MLflow did not get (the figures are in Tune's results)

    def summary(self) -> dict:
        """JSON-ready figures: best vs default on the validation objective and the compute spent."""
        return {
            "path": self.path,
            "settings": json.loads(self.settings.model_dump_json()),
            "trials": len(self.rows),
            "complete": sum(r.status == "complete" for r in self.rows),
            "stopped": sum(r.status == "stopped" for r in self.rows),
            "errored": sum(r.status == "error" for r in self.rows),
            "samples_generated": sum(r.metrics.get("samples", 0) for r in self.rows),
            "trials_with_nonfinite_samples": sum(r.metrics.get("nonfinite_samples", 0) > 0 for r in self.rows),
            "trial_seconds": sum(r.metrics.get("trial_seconds", 0) for r in self.rows),
            "best": None if self.best is None else {"trial_id": self.best.trial_id, **self.best.metrics},
            "best_profile": None if self.best_profile is None else json.loads(self.best_profile.to_json()),
            "baseline": self.baseline,
            "pareto": self.pareto,
            "parent_run_id": self.parent_run_id,
            "registered_version": self.registered_version,
            "registration_note": self.registration_note,
            "wall_seconds": self.wall_seconds,
            "mlflow_unlogged": sum(r.metrics.get("mlflow_unlogged", 0) for r in self.rows),
            "tracking_problems": self.tracking_problems,
        }


# ---- the sidecar (settings + MLflow ids) next to Ray's experiment state -----------------------

def _fs(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path) if _is_uri(path) else (pafs.LocalFileSystem(), path)


def write_sidecar(exp_path: str, data: dict) -> None:
    fs, p = _fs(exp_path)
    fs.create_dir(p, recursive=True)
    with fs.open_output_stream(f"{p}/{SIDECAR}") as f:
        f.write(json.dumps(data, indent=2).encode())


def read_sidecar(exp_path: str) -> dict:
    fs, p = _fs(exp_path)
    try:
        with fs.open_input_stream(f"{p}/{SIDECAR}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"{exp_path} is not a speechguide sweep (no {SIDECAR}): {exc}") from exc


# ---- Ray pieces ------------------------------------------------------------------------------

@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables that are not set yet, for the duration (Ray workers inherit them)."""
    added = [k for k, v in values.items() if v and k not in os.environ]
    for k in added:
        os.environ[k] = values[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def ray_session(settings: TuneSettings) -> Iterator[None]:
    """Connect to $RAY_ADDRESS, reuse an initialised Ray, or start a small local cluster (and stop it)."""
    import ray

    cache = os.environ.get("SPEECHGUIDE_CACHE")
    with _env(
        TUNE_GLOBAL_CHECKPOINT_S="5",  # finished trials reach the saved experiment state within seconds
        # every per-batch checkpoint forces a state snapshot (num_to_keep=1): wanted here, so no warning about it
        TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0",
        OMP_NUM_THREADS=str(max(1, int(settings.cpus_per_trial))),
        SPEECHGUIDE_FSDD_DIR=settings.data_dir or "",
    ):
        if cache:  # trials run in their own working directories
            os.environ["SPEECHGUIDE_CACHE"] = os.path.abspath(cache)
        if ray.is_initialized():
            yield
            return
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            cpus = max(1, math.ceil(settings.max_concurrent * settings.cpus_per_trial))
            gpus = math.ceil(settings.max_concurrent * settings.gpus_per_trial) if settings.gpus_per_trial else 0
            ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def _trainable(settings: TuneSettings, space: ProfileSpace, reference, experiment_id: Optional[str], parent_run_id: Optional[str]):
    from ray import tune

    from tune.trainable import trial

    bound = tune.with_parameters(
        trial,
        settings_json=settings.model_dump_json(),
        reference={"embeddings": reference.embeddings, "spread": reference.spread},
        space=space,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
    )
    return tune.with_resources(bound, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def _tuner(settings: TuneSettings, space: ProfileSpace, trainable, name: str, progress: Optional[Callable[[int, int, str], None]] = None,
           run_status=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = settings.objective == "multi"
    multi_metrics, multi_modes = weights(settings).multi_objectives()
    searcher = OptunaSearch(
        space=space,
        metric=list(multi_metrics) if multi else "objective",
        mode=list(multi_modes) if multi else "max",
        points_to_evaluate=[space.default_point(settings.base_steps)] if settings.start_from_default else None,
        seed=settings.seed,
    )
    if settings.scheduler == "asha":  # in multi mode ASHA still stops on the scalar objective
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric="objective", mode="max", max_t=settings.batches,
            grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    callbacks = [run_status] if run_status is not None else []
    if progress is not None:  # a progress bar replaces Tune's own status tables
        from tune.progress import TrialProgress

        callbacks.append(TrialProgress(settings.trials, progress))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent),
            scheduler=scheduler,
            num_samples=settings.trials,
            reuse_actors=False,  # a fresh process per trial: no MLflow run or torch state leaks between trials
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=settings.storage_path,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0 if progress is not None else 1,
        ),
    )


# ---- results ---------------------------------------------------------------------------------

def _rows(grid, settings: TuneSettings, space: ProfileSpace) -> list[TrialRow]:
    default = space.to_profile(space.default_point(settings.base_steps), name="x")
    rows = []
    for r in grid:
        metrics = {k: float(v) for k, v in (r.metrics or {}).items() if k in KEPT_METRICS}
        if "objective" not in metrics:
            rows.append(TrialRow(str((r.metrics or {}).get("trial_id", "?")), "error", {}, r.config or {}))
            continue
        status = "complete" if metrics.get("batches", 0) >= settings.batches else ("error" if r.error else "stopped")
        is_default = space.to_profile(r.config, name="x") == default
        rows.append(TrialRow(str(r.metrics.get("trial_id")), status, metrics, r.config, is_default))
    return rows


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Trials no other trial beats on every measure (accuracy up, FD down, diversity up, and the outside
    recognizer's accuracy up when every trial has it)."""
    outside = bool(rows) and all(OUTSIDE_METRIC in r.metrics for r in rows)

    def key(r: TrialRow) -> tuple[float, ...]:
        base = (r.metrics["judge_accuracy"], -r.metrics["fd"], min(r.metrics["diversity"], 1.0))
        return (*base, r.metrics[OUTSIDE_METRIC]) if outside else base

    front = []
    for r in rows:
        kr = key(r)
        if not any(all(a >= b for a, b in zip(key(o), kr)) and key(o) != kr for o in rows):
            front.append(r)
    return front


def _pick_best(rows: list[TrialRow], multi: bool) -> tuple[Optional[TrialRow], list[TrialRow]]:
    pool = [r for r in rows if r.status == "complete"] or [r for r in rows if r.status != "error"]
    if not pool:
        return None, []
    front = pareto_front(pool) if multi else []
    best = max(front or pool, key=lambda r: r.metrics["objective"])
    return best, front


def _register(profile: GuidanceProfile, settings: TuneSettings, metrics: dict, parent: Optional[str]) -> tuple[Optional[int], str]:
    """Register the best profile as `candidate` in the MLflow model registry (mlops.registry)."""
    try:
        from mlops.registry import register_profile
    except ImportError:
        return None, "not registered: mlops.registry (the model registry) is not available in this build"
    try:
        version = register_profile(
            profile, settings.register_name, metrics, alias="candidate", run_id=parent, tracking_uri=settings.tracking_uri
        )
        return int(version), f"registered {settings.register_name} version {version} as 'candidate'"
    except Exception as exc:  # the sweep's results stand even when the registry is unreachable
        return None, f"not registered: {type(exc).__name__}: {exc}"


def run(
    settings: TuneSettings,
    resume: Optional[str] = None,
    log: Callable[[str], None] = print,
    score_baseline: bool = True,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> SweepResult:
    """Start a sweep (or resume the one stored at `resume`), then pick, save and register the best profile.

    `progress(done, trials, status)` is told about each trial that ends (new sweeps; a resumed one has
    Tune's own output)."""
    from ray import tune

    from mlops import tracking

    started = time.time()
    sidecar: dict = {}
    if resume:
        sidecar = read_sidecar(resume)
        stored = dict(sidecar["settings"])
        stored.setdefault("outside_asr_weight", 0.0)  # sweeps started before the outside term keep their objective
        settings = TuneSettings.model_validate(stored)
        exp_path, name = resume.rstrip("/"), sidecar["name"]
    else:
        settings = settings.resolved()
        name = settings.name or f"tune-{settings.guide}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_path = f"{settings.storage_path.rstrip('/')}/{name}"
    models, judge = load_models(settings)
    reference = val_reference(settings, models, judge)
    space = ProfileSpace(base_profile(settings), bounds=SpaceBounds(steps=(settings.steps_min, settings.steps_max)))

    exp_id, parent = sidecar.get("experiment_id"), sidecar.get("parent_run_id")
    if settings.mlflow:
        tracking.fail_fast_http()  # an MLflow server that goes down mid-sweep costs seconds per call, not minutes
    if settings.mlflow and not resume:
        exp_id = tracking.experiment_id(settings.experiment, tracking_uri=settings.tracking_uri)
        parent = tracking.start_run(
            exp_id, f"sweep {name}", {k: v for k, v in settings.model_dump().items() if k not in ("tracking_uri",)},
            tags={"speechguide.kind": "tune-sweep"}, tracking_uri=settings.tracking_uri,
        )
        log(f"MLflow parent run {parent} at {settings.tracking_uri}")
    elif settings.mlflow and parent:
        tracking.reopen_run(parent, tracking_uri=settings.tracking_uri)
    if not resume:
        write_sidecar(exp_path, {"name": name, "settings": json.loads(settings.model_dump_json()),
                                 "experiment_id": exp_id, "parent_run_id": parent})

    from tune.tracking import RunStatusCallback

    run_status = RunStatusCallback(settings.tracking_uri, settings.batches) if settings.mlflow else None
    with ray_session(settings):
        trainable = _trainable(settings, space, reference, exp_id, parent)
        if resume:
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
        else:
            tuner = _tuner(settings, space, trainable, name, progress, run_status)
        grid = tuner.fit()

    rows = _rows(grid, settings, space)
    best, front = _pick_best(rows, settings.objective == "multi")
    default_row = next((r for r in rows if r.is_default and r.status == "complete"), None)
    if default_row is not None:
        baseline = dict(default_row.metrics)
    elif not score_baseline:
        baseline = {}
    else:
        log("the default profile's trial did not score every batch; scoring it in process")
        baseline = score_profile(settings, space.base, models, judge, reference)
    best_profile = space.to_profile(best.config, name=f"{name}-best") if best else None
    result = SweepResult(exp_path, settings, rows, best, best_profile, baseline, [r.trial_id for r in front], parent)
    if best_profile is not None:
        write_sidecar_file(exp_path, "best_profile.json", best_profile.to_json())
        metrics = {f"val_{k}": v for k, v in best.metrics.items() if k in REGISTERED_METRICS}
        metrics.update({f"default_val_{k}": baseline[k] for k in REGISTERED_METRICS if k in baseline})
        if settings.mlflow:
            result.registered_version, result.registration_note = _register(best_profile, settings, metrics, parent)
            log(result.registration_note)
    result.wall_seconds = time.time() - started
    if settings.mlflow:
        _finish_tracking(result, run_status, parent, log)
    write_sidecar_file(exp_path, "sweep_summary.json", json.dumps(result.summary(), indent=2))
    return result


def _finish_tracking(result: SweepResult, run_status, parent: Optional[str], log: Callable[[str], None]) -> None:
    """Close what the trials' callback could not, log the sweep's figures to its parent run, and say plainly what
    MLflow did not get (a server down at the end of the sweep costs the sweep nothing: its results are on disk)."""
    rows = result.rows
    if run_status is not None and run_status.close_unclosed():
        result.tracking_problems.append(f"{len(run_status.unclosed)} trial run(s) left RUNNING in MLflow ({run_status.problem})")
    unlogged = [(r.trial_id, int(r.metrics.get("mlflow_unlogged", 0))) for r in rows if r.metrics.get("mlflow_unlogged", 0)]
    if unlogged:
        result.tracking_problems.append(
            f"{sum(n for _, n in unlogged)} batch report(s) or file group(s) of {len(unlogged)} trial(s) never reached MLflow "
            f"({', '.join(t for t, _ in unlogged)}); every trial's figures are in Tune's results under {result.path}")
    if parent:
        try:
            _finish_parent(result, parent)
        except Exception as exc:  # noqa: BLE001 - the sweep's results stand without their MLflow copy
            result.tracking_problems.append(f"parent run {parent} not finished: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    for line in result.tracking_problems:
        log(f"MLflow: {line}")


def _finish_parent(result: SweepResult, parent: str) -> None:
    """The sweep's figures (best vs default, trials, compute) and files on its MLflow parent run, which ends FINISHED."""
    from mlops import tracking

    summary, best = result.summary(), result.best
    parent_metrics = {"best_objective": (best.metrics["objective"] if best else float("nan")),
                      "default_objective": result.baseline.get("objective", float("nan")),
                      "trials_complete": summary["complete"], "trials_stopped": summary["stopped"],
                      "samples_generated": summary["samples_generated"], "trial_seconds": summary["trial_seconds"]}
    dicts = {"trials.json": {"trials": [{"trial_id": r.trial_id, "status": r.status, **r.metrics, "default": r.is_default} for r in result.rows]}}
    if result.best_profile is not None:
        dicts = {"best_profile.json": json.loads(result.best_profile.to_json()), **dicts}
    tracking.finish_run(parent, parent_metrics, dicts, tracking_uri=result.settings.tracking_uri)


def write_sidecar_file(exp_path: str, filename: str, text: str) -> None:
    fs, p = _fs(exp_path)
    with fs.open_output_stream(f"{p}/{filename}") as f:
        f.write(text.encode())
