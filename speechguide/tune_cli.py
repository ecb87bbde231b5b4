"""`speechguide tune`: a Ray Tune search over guidance profiles, scored on the validation split.

Kept apart from `speechguide.cli` so that the main command line never imports Ray; `register` adds
the command to the CLI's typer app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from speechguide.common import fail


def _settings(**options):
    from pydantic import ValidationError

    from tune.settings import TuneSettings

    try:
        return TuneSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "settings"
        fail(f"--{where.replace('_', '-')}: {err['msg']}" if where != "settings" else err["msg"])


def _table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = sorted((r for r in result.rows if r.status != "error"), key=lambda r: -r.metrics["objective"])
    table = Table(title=f"best trials of {len(result.rows)} (validation split)")
    for col in ("trial", "status", "objective", "judge acc.", "outside ASR acc.", "FD", "diversity", "samples", "trial s", "scale", "norm", "schedule", "sigma window", "steps"):
        table.add_column(col)
    for r in rows[:10]:
        p = r.config
        scale = p.get("scale_norm", p.get("scale_plain"))
        mark = " (default)" if r.is_default else (" *" if result.best and r.trial_id == result.best.trial_id else "")
        outside = r.metrics.get("outside_asr_accuracy")
        table.add_row(
            r.trial_id + mark, r.status, f"{r.metrics['objective']:.3f}", f"{100 * r.metrics['judge_accuracy']:.0f}%",
            "-" if outside is None else f"{100 * outside:.0f}%", f"{r.metrics['fd']:.1f}", f"{r.metrics['diversity']:.2f}", f"{r.metrics['samples']:.0f}",
            f"{r.metrics.get('trial_seconds', 0):.0f}", f"{scale:.3g}" if scale is not None else "-",
            str(p.get("norm_scaling", "-")), str(p.get("schedule", "-")),
            f"{p.get('sigma_lo', 0):.3g}..{p.get('sigma_hi', 0):.3g}", str(p.get("steps", "-")),
        )
    console = Console()
    console.width = max(console.width, 160)  # the table stays readable when output goes to a log file
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `tune` command to `app`."""

    @app.command("tune")
    def tune_command(
        trials: Optional[int] = typer.Option(None, help="Number of trials (profiles tried) (default 20)."),
        scheduler: Optional[str] = typer.Option(None, help="asha (stop poor trials early) | fifo (default asha)."),
        objective: Optional[str] = typer.Option(None, help="scalar | multi (Optuna multi-objective: accuracy, FD, diversity) (default scalar)."),
        per_class: Optional[int] = typer.Option(None, help="Validation samples per digit in a full trial (default 10)."),
        batch_per_class: Optional[int] = typer.Option(None, help="Samples per digit in each reported batch (default 2)."),
        guide: Optional[str] = typer.Option(None, help="Guide kind to tune: clean | noisy (default clean)."),
        profile: Optional[Path] = typer.Option(None, help="Base profile JSON (default: the guide kind's default profile)."),
        steps_min: Optional[int] = typer.Option(None, help="Fewest sampler steps searched (default 8)."),
        steps_max: Optional[int] = typer.Option(None, help="Most sampler steps searched (default 12)."),
        base_steps: Optional[int] = typer.Option(None, help="Steps of the default profile, the baseline (default 10)."),
        seed: Optional[int] = typer.Option(None, help="Noise and Optuna seed (default 0)."),
        cpus_per_trial: Optional[float] = typer.Option(None, help="CPUs per trial (default 1)."),
        gpus_per_trial: Optional[float] = typer.Option(None, help="GPUs per trial, fractions allowed (default 0)."),
        max_concurrent: Optional[int] = typer.Option(None, help="Trials running at once (default 2)."),
        max_failures: Optional[int] = typer.Option(None, help="Retries of a failed trial (default 2)."),
        storage_path: Optional[str] = typer.Option(None, help="Where sweeps are stored: a path or a URI (default ./runs/tune)."),
        name: Optional[str] = typer.Option(None, help="Sweep name (directory under the storage path)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Resume the interrupted sweep stored at this path (Tuner.restore)."),
        mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the sweep and its trials to MLflow and register the best profile."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the best profile JSON here."),
        models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
        data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
        outside_asr_weight: Optional[float] = typer.Option(None, help="Weight of the outside recognizer's (PocketSphinx) digit accuracy on the generated waves in the objective; 0 leaves it out (default 1, as much as the judge's accuracy)."),
    ) -> None:
        """Search guidance profiles with Ray Tune (Optuna, ASHA) on the validation split; log to MLflow."""
        import json

        from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
        from tune.settings import TuneSettings

        for label, value, choices in (("--scheduler", scheduler, ("asha", "fifo")), ("--objective", objective, ("scalar", "multi")), ("--guide", guide, CLASSIFIER_GUIDE_KINDS)):
            if value is not None and value not in choices:
                fail(f"{label} must be one of {', '.join(choices)}, got {value!r}")
        if out is not None and out.suffix != ".json":
            fail(f"--out must end in .json, got {out}")
        if profile is not None and not profile.is_file():
            fail(f"--profile {profile} does not exist")
        if models_dir is not None and not models_dir.is_dir():
            fail(f"--models-dir {models_dir} does not exist")
        if resume is not None:
            given = {k: v for k, v in dict(trials=trials, scheduler=scheduler, objective=objective, per_class=per_class, guide=guide, name=name, storage_path=storage_path, outside_asr_weight=outside_asr_weight).items() if v is not None}
            if given:
                fail(f"--resume continues a stored sweep with its own settings; drop {', '.join('--' + k.replace('_', '-') for k in given)}")
            from tune.sweep import read_sidecar

            try:
                read_sidecar(resume)
            except FileNotFoundError as exc:
                fail(str(exc))
            settings = TuneSettings()
        else:
            settings = _settings(
                trials=trials, scheduler=scheduler, objective=objective, per_class=per_class, batch_per_class=batch_per_class,
                guide=guide, profile=str(profile) if profile else None, steps_min=steps_min, steps_max=steps_max,
                base_steps=base_steps, seed=seed, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                max_concurrent=max_concurrent, max_failures=max_failures, storage_path=storage_path, name=name,
                mlflow=mlflow, models_dir=str(models_dir) if models_dir else None, data_dir=str(data_dir) if data_dir else None,
                outside_asr_weight=outside_asr_weight,
            )
            if settings.outside_asr_weight:
                try:
                    from outside_judges.report import default_recognizer

                    default_recognizer()
                except ImportError as exc:  # MissingJudgeDependency names the PyPI package to install
                    fail(f"--outside-asr-weight: {' '.join(str(exc).split())} (or pass --outside-asr-weight 0)")
            if settings.profile:
                from speechguide.common import read_profile

                read_profile(Path(settings.profile), "--profile")
        from speechguide.progress import job_progress, on_terminal
        from tune.sweep import run

        shown = resume is None and on_terminal()  # a resumed sweep shows Tune's own output
        with job_progress("tune", settings.trials, enabled=shown) as update:
            trial_ended = (lambda done, total, status: update(completed=done, total=total, status=status)) if shown else None
            result = run(settings, resume=resume, log=typer.echo, progress=trial_ended)
        _table(result)
        s = result.summary()
        base, best = s["baseline"], s["best"]
        typer.echo(f"sweep stored at {result.path} ({s['complete']} complete, {s['stopped']} stopped early, {s['errored']} errored; "
                   f"{s['samples_generated']:.0f} samples, {s['trial_seconds']:.0f} trial-seconds, {s['wall_seconds']:.0f} s wall)")
        if best:
            def outside(m: dict) -> str:
                return f", outside ASR {100 * m['outside_asr_accuracy']:.1f}%" if "outside_asr_accuracy" in m else ""

            typer.echo(f"validation objective: default {base.get('objective', float('nan')):.4f} "
                       f"(acc {100 * base.get('judge_accuracy', float('nan')):.1f}%{outside(base)}, FD {base.get('fd', float('nan')):.1f}) -> "
                       f"best {best['objective']:.4f} (acc {100 * best['judge_accuracy']:.1f}%{outside(best)}, FD {best['fd']:.1f})")
        if result.best_profile is not None and out is not None:
            result.best_profile.save(out)
            typer.echo(f"best profile written to {out}")
        elif result.best_profile is not None:
            typer.echo(json.dumps(s["best_profile"], indent=2))
