"""`speechguide calibrate`: per-noise-level temperatures for a clean classifier, saved into a profile.

Kept in its own module (registered by `speechguide.cli`); heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from guidance.edm_constants import SIGMA_MAX, SIGMA_MIN
from speechguide.common import fail

SPLITS = ("val", "train")  # the test split is for final reports only


def calibrate(
    out: Path = typer.Option(Path("reports/calibration"), "--out", help="Directory for profile.json, calibration.json and plots."),
    classifier: Optional[Path] = typer.Option(None, help="Clean classifier file (default: classifier-clean in the models directory)."),
    base_profile: Optional[Path] = typer.Option(None, help="Profile JSON the temperatures are added to (default: the clean-guide default)."),
    bins: int = typer.Option(10, help="Sigma bins, log-spaced from --sigma-min to --sigma-max."),
    sigma_min: float = typer.Option(SIGMA_MIN, help="Lowest sigma (the sampler's)."),
    sigma_max: float = typer.Option(SIGMA_MAX, help="Highest sigma (the sampler's)."),
    draws: int = typer.Option(2, help="Noise draws per clip and sigma bin."),
    seed: int = typer.Option(0, help="Seed for noise levels, noise and the cross-fitting folds."),
    split: str = typer.Option("val", help="Data to calibrate on: val (default) | train. Never test."),
    max_clips: Optional[int] = typer.Option(None, help="Use a seeded random subset of N clips of the split (quick runs)."),
    batch_size: int = typer.Option(100, help="Batch size for the denoiser and classifiers."),
    min_temperature: Optional[float] = typer.Option(
        None, help="Floor for the profiles' temperatures, e.g. 1 to never sharpen the guide (the report keeps the fitted ones)."
    ),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
    download: bool = typer.Option(False, help="Download FSDD into the user cache when no local copy is found."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log params, per-bin metrics and plots to MLflow."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with an ETA (on a terminal only)."),
) -> None:
    """Fit one temperature per sigma bin for the clean classifier on x0_hat; write the calibrated profile."""
    if not 1 <= bins <= 50:
        fail(f"--bins must be between 1 and 50, got {bins}")
    if not 0 < sigma_min < sigma_max:
        fail(f"need 0 < --sigma-min < --sigma-max, got {sigma_min} and {sigma_max}")
    if not 1 <= draws <= 100:
        fail(f"--draws must be between 1 and 100, got {draws}")
    if split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)} (the test split is kept for final reports), got {split!r}")
    if max_clips is not None and max_clips < 2:
        fail(f"--max-clips must be at least 2 (two cross-fitting folds), got {max_clips}")
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if min_temperature is not None and not 0 < min_temperature <= 100:
        fail(f"--min-temperature must be in (0, 100], got {min_temperature}")

    from speechguide.common import read_profile

    from guidance.calibration import CalibrationConfig, calibrate as run_calibration
    from guidance.calibration.report import write_outputs
    from guidance.data import fsdd_features, resolve_fsdd_root
    from guidance.device import pick_device
    from guidance.guides import DEFAULT_PROFILES, ClassifierGuide
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths
    from mlops.tracking import tracked_run
    from speechguide.progress import job_progress

    base = read_profile(base_profile, "--base-profile") if base_profile else DEFAULT_PROFILES["clean"]
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    clean_path = classifier or paths.path("clean_classifier")
    try:
        root = resolve_fsdd_root(data_dir, download=download)
    except FileNotFoundError as exc:
        fail(str(exc))
    dev = pick_device(device)
    try:
        denoiser = load_model(paths.path("denoiser"), kind="denoiser-unet", device=dev)
        clean = ClassifierGuide.from_file(load_model(clean_path, denoiser.spec, "classifier", dev))
        noisy_path = paths.path("noisy_classifier")
        noisy = ClassifierGuide.from_file(load_model(noisy_path, denoiser.spec, "classifier", dev)) if noisy_path.exists() else None
    except ValueError as exc:
        fail(str(exc))
    if clean.needs_sigma:
        fail(f"--classifier {clean_path} is noise-conditioned; calibration is for clean classifiers")
    cfg = CalibrationConfig(bins=bins, sigma_min=sigma_min, sigma_max=sigma_max, draws=draws, seed=seed, batch_size=batch_size)
    data = fsdd_features(split, denoiser.spec, root=str(root))
    mels, labels = data.mels, data.digits
    if max_clips is not None and max_clips < len(labels):  # a seeded random subset, so every class can appear
        import torch

        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:max_clips].sort().values
        mels, labels = mels[keep], labels[keep]
    params = {
        **{k: v for k, v in vars(cfg).items()},
        "split": split,
        "clips": len(labels),
        "classifier": str(clean_path),
        "denoiser": str(paths.path("denoiser")),
        "noisy_classifier": str(paths.path("noisy_classifier")) if noisy else "",
        "base_profile": base.name,
        "min_temperature": min_temperature,
    }
    with job_progress("calibrate", bins * len(labels) * draws, enabled=progress) as update, tracked_run(
        "speechguide-calibrate", "calibrate", params, mlflow
    ) as run:
        result = run_calibration(
            denoiser.model,
            clean,
            noisy,
            mels,
            labels,
            cfg,
            dev,
            progress=lambda status, n: update(advance=n, status=status),
        )
        meta = {"split": split, "clips": len(labels), "classifier": str(clean_path), "models": params}
        written = write_outputs(result, base, out, meta, min_temperature)
        for k, b in enumerate(result.bins):
            figures = {
                "accuracy": b.accuracy,
                "temperature": b.temperature,
                "nll_before": b.nll_before,
                "nll_after": b.nll_after,
                "ece_before": b.ece_before,
                "ece_after": b.ece_after,
            }
            if b.grad_cosine is not None:
                figures.update(grad_cosine=b.grad_cosine, grad_cosine_calibrated=b.grad_cosine_calibrated)
            if b.noisy_accuracy is not None:
                figures["noisy_accuracy"] = b.noisy_accuracy
            run.log_metrics(figures, step=k)
        hi = result.sigma_hi_above_chance()
        run.log_params({"sigma_hi_above_chance": hi})
        for path in written.values():
            run.log_artifact(path)
    typer.echo(written["summary"].read_text())
    typer.echo(f"calibrated profile: {written['profile']}" + (f" (with sigma window: {written['profile_window']})" if "profile_window" in written else ""))


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
