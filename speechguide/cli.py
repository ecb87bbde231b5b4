"""`speechguide`: one command line for every job.

Bad arguments end with exit code 2 and one line on stderr saying what is wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

try:  # typer vendors its own click since 0.2x; its exceptions are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exc

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Classifier-guided speech diffusion: train, generate, evaluate.",
    pretty_exceptions_enable=False,
)


class UsageProblem(click_exc.UsageError):
    """A bad argument discovered after parsing; reported like any usage error (exit 2, one line)."""


def fail(message: str) -> None:
    raise UsageProblem(message)


@app.callback()
def _root() -> None:
    """Classifier-guided speech diffusion: train, generate, evaluate."""


@app.command()
def train(
    role: str = typer.Argument(..., help="denoiser | classifier | noisy-classifier | judge"),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default per role)."),
    batch_size: Optional[int] = typer.Option(None, help="Mini-batch size."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default per role)."),
    task: str = typer.Option("digit", help="digit | speaker (classifiers and judges)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
    download: bool = typer.Option(False, help="Download FSDD into the user cache when no local copy is found."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the run to MLflow."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model on the FSDD training split and save it with its feature config."""
    import dataclasses

    from guidance.data import fsdd_split, list_fsdd, resolve_fsdd_root
    from guidance.training import TRAIN_DEFAULTS, train as run_training
    from guidance.spec import project_spec

    if role not in TRAIN_DEFAULTS:
        fail(f"unknown role {role!r}; choose one of {', '.join(TRAIN_DEFAULTS)}")
    if task not in ("digit", "speaker"):
        fail(f"--task must be 'digit' or 'speaker', got {task!r}")
    if role == "denoiser" and task != "digit":
        fail("--task applies to classifiers and judges, not the denoiser")
    if out.suffix != ".safetensors":
        fail(f"--out must end in .safetensors, got {out}")
    for name, value in (("steps", steps), ("batch-size", batch_size)):
        if value is not None and value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if lr is not None and not (0 < lr < 1):
        fail(f"--lr must be in (0, 1), got {lr}")
    try:
        root = resolve_fsdd_root(data_dir, download=download)
    except FileNotFoundError as exc:
        fail(str(exc))
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    cfg = dataclasses.replace(TRAIN_DEFAULTS[role], task=task, **overrides)
    spec = project_spec(root)
    result = run_training(role, spec, out, cfg, data_root=str(root), track=mlflow, show_progress=progress)
    typer.echo(f"wrote {result.path}  " + " ".join(f"{k}={v}" for k, v in result.card.items() if k.startswith("val_")))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every usage problem into one line and exit code 2."""
    from guidance.features import FeatureSpecMismatch

    try:
        app(args=argv, standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        return 0
    except click_exc.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        print(f"speechguide: error: {message}", file=sys.stderr)
        return 2
    except (FeatureSpecMismatch, FileNotFoundError) as exc:
        print(f"speechguide: error: {exc}", file=sys.stderr)
        return 2
    except click_exc.Abort:
        print("speechguide: aborted", file=sys.stderr)
        return 130
    except click_exc.Exit as exc:
        return exc.exit_code
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
