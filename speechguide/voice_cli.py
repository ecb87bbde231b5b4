"""`evaluate-voice`: the voice and digit + speaker composite evaluation on the command line.

(`generate --target speaker=REF.wav` is `generate`'s own: every request goes through `guidance.plan`.)
Heavy imports happen inside the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from guidance.edm_constants import SIGMA_MAX


def evaluate_voice_command(
    out: Path = typer.Option(Path("reports/voice"), "--out", help="Report directory."),
    split: str = typer.Option("test", help="test (final reports) | val (exploration, tuning)."),
    refs_per_speaker: int = typer.Option(3, help="Reference clips per FSDD speaker (fixed by rule, not by result)."),
    samples_per_ref: int = typer.Option(4, help="Generated samples per reference and system."),
    seed: int = typer.Option(0, help="Noise seed (the same noise for every system)."),
    steps: int = typer.Option(18, help="Sampler steps."),
    stats_scale: float = typer.Option(0.1, help="Stats voice guide scale (norm-scaled fraction of the denoiser step)."),
    encoder_scale: float = typer.Option(0.1, help="Encoder voice guide scale (norm-scaled fraction of the denoiser step)."),
    encoder_blur: int = typer.Option(7, help="Box blur (bins x frames) applied to the encoder guide's gradient; 1 = none."),
    encoder_through_denoiser: bool = typer.Option(False, help="Backpropagate the encoder guide through the denoiser."),
    voice_sigma_lo: float = typer.Option(1.0, help="Voice guidance is off below this sigma."),
    voice_sigma_hi: float = typer.Option(SIGMA_MAX, help="Voice guidance is off above this sigma."),
    digit_scale: Optional[float] = typer.Option(None, help="Digit guide scale in composites (noise-conditioned classifier, plain gamma; default: the val-picked composite scale, 20)."),
    digit_sigma_hi: float = typer.Option(SIGMA_MAX, help="Digit guidance is off above this sigma."),
    voice_weight: float = typer.Option(1.0, help="Weight of the voice term in composites."),
    word_spectra: bool = typer.Option(True, "--word-spectra/--no-word-spectra", help="stats+digit: retarget each reference to the digit asked for (models/word-spectra.safetensors)."),
    systems: str = typer.Option(",".join(("unguided", "stats", "encoder", "stats+digit", "encoder+digit")), help="Comma-separated subset of the systems."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    vocoder: str = typer.Option("neural", "--vocoder", help="neural (models/vocoder.safetensors, default) | griffin-lim | a vocoder file."),
    outside_judges: bool = typer.Option(True, "--outside-judges/--no-outside-judges", help="Also score the waveforms with the outside judges (PocketSphinx digit ASR, DNSMOS), about 0.5 s per clip on a CPU core."),
) -> None:
    """Zero-shot voice guidance (reference spectral statistics; resemblyzer's encoder) and digit + speaker composites on FSDD references."""
    import math

    from guidance.data import resolve_fsdd_root
    from guidance.guides import GuideSettings
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths
    from guidance.voice_eval import COMPOSITE_DIGIT_SCALE, SYSTEMS, VoiceEvalConfig, evaluate_voice
    from speechguide.common import fail, load_models, outside_listen

    digit_scale = COMPOSITE_DIGIT_SCALE if digit_scale is None else digit_scale

    if split not in ("test", "val"):
        fail(f"--split must be 'test' or 'val', got {split!r}")
    for name, value, hi in (("encoder-blur", encoder_blur, 63), ("refs-per-speaker", refs_per_speaker, 5), ("samples-per-ref", samples_per_ref, 100), ("steps", steps, 1000)):
        if not 1 <= value <= hi:
            fail(f"--{name} must be between 1 and {hi}, got {value}")
    for name, value in (("stats-scale", stats_scale), ("encoder-scale", encoder_scale), ("digit-scale", digit_scale), ("voice-weight", voice_weight)):
        if not math.isfinite(value) or value < 0:
            fail(f"--{name} must be a finite non-negative number, got {value}")
    if encoder_blur % 2 == 0:
        fail(f"--encoder-blur must be odd (1 = no blur), got {encoder_blur}")
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    if not chosen or any(s not in SYSTEMS for s in chosen):
        fail(f"--systems must be a subset of {','.join(SYSTEMS)}, got {systems!r}")
    try:
        window = {"norm_scaling": True, "sigma_lo": voice_sigma_lo, "sigma_hi": voice_sigma_hi, "input": "x0_hat"}
        stats = GuideSettings(scale=stats_scale, **window)
        encoder = GuideSettings(scale=encoder_scale, through_denoiser=encoder_through_denoiser, **window)
        digit = GuideSettings(scale=digit_scale, sigma_hi=digit_sigma_hi)
    except ValueError as exc:
        fail(" ".join(str(exc).split())[:300])
    try:
        root = resolve_fsdd_root(data_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    listen = outside_listen(outside_judges)
    models = load_models(models_dir, device, vocoder)
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    try:
        judge_digit = load_model(paths.path("judge_digit"), models.spec, "judge", models.device)
        judge_speaker = load_model(paths.path("judge_speaker"), models.spec, "judge", models.device)
    except ValueError as exc:
        fail(str(exc))
    cfg = VoiceEvalConfig(
        split=split, refs_per_speaker=refs_per_speaker, samples_per_ref=samples_per_ref, seed=seed, steps=steps,
        stats=stats, encoder=encoder, digit=digit, voice_weight=voice_weight, systems=chosen, gradient_blur=encoder_blur,
    )
    offsets = None
    if word_spectra:
        try:
            offsets = load_model(paths.path("word_spectra"), models.spec, "word-spectra").model.offsets
        except (FileNotFoundError, ValueError) as exc:
            fail(f"{exc} (build it with `speechguide train word-spectra`, or pass --no-word-spectra)")
    from speechguide.progress import job_progress

    with job_progress("evaluate-voice", len(chosen)) as update:

        def on_progress(name: str, done: int, total: int) -> None:
            update(completed=done, total=total, status=name)

        evaluate_voice(models, judge_digit, judge_speaker, cfg, out, data_root=str(root), progress=on_progress, word_offsets=offsets, listen=listen)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out}")


def register(app: typer.Typer) -> None:
    app.command("evaluate-voice")(evaluate_voice_command)
