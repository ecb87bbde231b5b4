"""One Ray Tune trial: generate a profile's validation samples in batches, report after each batch.

Reporting per batch is what lets ASHA stop a poor profile after a fraction of its samples. Each report
carries a small checkpoint (the judge outputs scored so far), so a retried or restored trial goes on
from the batch it reached instead of starting over (a trial whose node died included: Tune's
`FailureConfig` retries it). The trial logs to MLflow through Ray's `setup_mlflow`, as a run nested
under the sweep's parent run, through `tune.tracking.TrialLog`: an MLflow server that is down delays
the logging (each report counts what is still unsent in `mlflow_unlogged`), never the trial.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from ray import tune

from guidance.data import write_wav
from guidance.plots import spectrogram_grid
from tune.evaluator import ProfileEvaluator, load_models
from tune.objective import ValReference
from tune.settings import TuneSettings
from tune.tracking import TrialLog
from tune.space import ProfileSpace, profile_params

STATE_FILE = "state.pt"
WAVS_LOGGED = 3  # digits 0..2 of the first batch


def _start_mlflow(settings: TuneSettings, experiment_id: str, parent_run_id: str, profile, resumed_at: int) -> Any:
    """The trial's nested run (TrialLog tries again at the next batch when this raises)."""
    import mlflow
    from ray.air.integrations.mlflow import setup_mlflow

    if mlflow.active_run() is not None:  # an earlier try opened the run, then failed to log its parameters
        mlflow.log_params(profile_params(profile))
        return mlflow
    ctx = tune.get_context()
    return setup_mlflow(
        profile_params(profile),
        tracking_uri=settings.tracking_uri,
        experiment_id=experiment_id,
        run_name=ctx.get_trial_name(),
        tags={"mlflow.parentRunId": parent_run_id, "ray.trial_id": ctx.get_trial_id(), "resumed_at_batch": str(resumed_at)},
    )


def _log_media(mlflow: Any, result, spec, trial_name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for d in range(min(WAVS_LOGGED, len(result.waves))):
            write_wav(tmp_path / "wavs" / f"{int(result.targets[d])}_000.wav", result.waves[d], spec.sample_rate)
        shown = result.mels[: min(10, len(result.mels))]
        spectrogram_grid({trial_name: shown}, [f"'{int(t)}'" for t in result.targets[: len(shown)]], tmp_path / "spectrograms.png")
        mlflow.log_artifacts(str(tmp_path / "wavs"), "wavs")
        mlflow.log_artifact(str(tmp_path / "spectrograms.png"))


def trial(
    config: dict,
    settings_json: str = "",
    reference: Optional[dict] = None,
    space: Optional[ProfileSpace] = None,
    experiment_id: Optional[str] = None,
    parent_run_id: Optional[str] = None,
) -> None:
    """The function trainable (bound to its fixed inputs with `tune.with_parameters`)."""
    settings = TuneSettings.model_validate_json(settings_json)
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    device = "cuda" if settings.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    profile = space.to_profile(config, name=f"tuned-{tune.get_context().get_trial_id()}")
    models, judge = load_models(settings, device)
    evaluator = ProfileEvaluator(settings, models, judge, ValReference(reference["embeddings"], float(reference["spread"])))

    start, seconds, previous_run = 0, 0.0, None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
            previous_run = (Path(d) / "run_id").read_text() or None if (Path(d) / "run_id").exists() else None
        evaluator.accumulator.load_state(state)
        start, seconds = int(state["batches"]), float(state["trial_seconds"])

    log: Optional[TrialLog] = None
    unsent: dict[str, Callable[[Any], Any]] = {}  # files to log, kept until the server takes them
    if settings.mlflow and experiment_id and parent_run_id:
        from mlops.tracking import client, fail_fast_http

        fail_fast_http()  # a few seconds per call against a server that is down, then on with the samples
        if previous_run:  # the interrupted attempt's run ends here; this attempt logs to a new nested run
            try:
                client(tracking_uri=settings.tracking_uri).set_terminated(previous_run, "FAILED")
            except Exception:  # the server is down: the run stays RUNNING, and the callback's report says why
                pass
        log = TrialLog(lambda: _start_mlflow(settings, experiment_id, parent_run_id, profile, start))
        unsent["profile.json"] = lambda m: m.log_dict(json.loads(profile.to_json()), "profile.json")

    for result in evaluator.run(profile, start=start):
        seconds += result.metrics.pop("batch_seconds")
        metrics = {**result.metrics, "trial_seconds": seconds, "batches": float(result.index)}
        if log is not None:
            log.log_metrics(metrics, step=result.index)
            if result.index == start + 1 and start == 0:
                unsent["media"] = lambda m, r=result: _log_media(m, r, models.spec, tune.get_context().get_trial_name())
            for name in list(unsent):  # one failed call per batch at most: each costs seconds while the server is down
                if log.pending or not log.call(unsent[name]):
                    break
                del unsent[name]
        run_id = log.run_id if log is not None else ""
        unlogged = float(len(log.pending) + len(unsent)) if log is not None else 0.0
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({**evaluator.accumulator.state(), "batches": torch.tensor(result.index),
                        "trial_seconds": torch.tensor(seconds)}, Path(tmp) / STATE_FILE)
            (Path(tmp) / "run_id").write_text(run_id)
            tune.report({**metrics, "mlflow_run_id": run_id, "mlflow_unlogged": unlogged},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
    if log is not None:
        if log.problem:
            print(f"trial {tune.get_context().get_trial_id()}: {log.problem}; {len(log.pending)} batch(es) and "
                  f"{len(unsent)} file group(s) not logged to MLflow")
        log.end()
