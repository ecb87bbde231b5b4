"""`evaluate-pitch`: pitch guidance judged by an independent tracker.

`generate --target pitch=140|+3st|rise|fall` needs nothing here: pitch is a target guide of the request's
plan (`guidance.plan`), sampled in-process by `guidance.generate`. Heavy imports happen inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from speechguide.common import VOCODER_HELP

SPEAKER_SHIFTS = ("-4st", "-2st", "+2st", "+4st")  # guidance.pitch_eval.SPEAKER_SHIFTS (checked by a test), here without importing torch


def evaluate_pitch_command(
    out: Path = typer.Option(Path("reports/pitch"), "--out", help="Report directory."),
    targets: str = typer.Option("", help="Comma-separated pitch targets (default: 4 semitones below and above, and 2 below and above, the unguided median F0; e.g. 106,119,150,169)."),
    samples: int = typer.Option(12, help="Samples per pitch target (digits cycle 0..9)."),
    seed: int = typer.Option(0, help="Noise seed (the same noise for every system)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default: the digit guide profile's, 18)."),
    pitch_scale: Optional[float] = typer.Option(None, help="Pitch guide scale (default: the pitch profile's)."),
    capacity: str = typer.Option("tiny", help="CREPE capacity: tiny | full."),
    head_weight: Optional[float] = typer.Option(None, help="Weight of the harmonic vocoder's F0 head next to CREPE in the pitch guide (default: the guide's, 0.5; 0 = CREPE alone)."),
    digit: bool = typer.Option(True, "--digit/--no-digit", help="Also run digit-only and digit + pitch systems (digit accuracy by the outside recognizer)."),
    speaker: bool = typer.Option(True, "--speaker/--no-speaker", help="Also run speaker-only and speaker + pitch systems towards test-split references (speaker rate by the FSDD speaker judge, cosine by resemblyzer's encoder)."),
    speaker_targets: str = typer.Option(",".join(SPEAKER_SHIFTS), help="Comma-separated pitch targets of the speaker + pitch systems, relative to each reference's median F0."),
    write_wavs: bool = typer.Option(False, "--write-wavs/--no-write-wavs", help="Also write every sample as a WAV under OUT/wavs/<system>_<target>/ (about 6 MB for the default run)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy (the speaker references)."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    vocoder: str = typer.Option("auto", "--vocoder", help=VOCODER_HELP),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    outside_judges: bool = typer.Option(True, "--outside-judges/--no-outside-judges", help="Score digits with the outside recognizer (PocketSphinx)."),
) -> None:
    """Pitch guidance (CREPE) judged by an independent tracker (pYIN): median F0 error in semitones per target,
    voicing, the digit rate of digit + pitch composites next to digit-only guidance, and the speaker rate of speaker
    + pitch composites (relative targets) next to speaker-only guidance."""
    from guidance.pitch_eval import PitchEvalConfig, evaluate_pitch
    from guidance.pitch_targets import PitchTargetError, parse_pitch_target
    from speechguide.common import check_between, check_non_negative, fail, load_models

    check_between("--samples", samples, 1, 200)
    check_between("--steps", steps, 1, 1000)
    check_non_negative("--pitch-scale", pitch_scale)
    check_non_negative("--head-weight", head_weight)
    if capacity not in ("tiny", "full"):
        fail(f"--capacity must be tiny or full, got {capacity!r}")
    texts = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        for text in texts:
            if parse_pitch_target(text).needs_reference:
                fail(f"--targets {text}: evaluate-pitch takes absolute (Hz) or contour targets")
    except PitchTargetError as exc:
        fail(f"--targets: {exc}")
    relative = [t.strip() for t in speaker_targets.split(",") if t.strip()]
    if speaker:
        if not relative:
            fail("--speaker-targets: give at least one relative target, e.g. +2st (or pass --no-speaker)")
        try:
            for text in relative:
                if not parse_pitch_target(text).needs_reference:
                    fail(f"--speaker-targets {text}: speaker + pitch targets are relative to the reference, e.g. +2st or -4st")
        except PitchTargetError as exc:
            fail(f"--speaker-targets: {exc}")
    outside_asr = digit and outside_judges
    if outside_asr:
        try:
            from outside_judges.report import ready

            ready()
        except ImportError as exc:
            fail(f"--outside-judges: {' '.join(str(exc).split())} (or pass --no-outside-judges)")
    root = judge_speaker = None
    if speaker:
        from guidance.data import resolve_fsdd_root

        try:
            root = resolve_fsdd_root(data_dir)
        except FileNotFoundError as exc:
            fail(f"{exc} (or pass --no-speaker)")
    models = load_models(models_dir, device, vocoder)
    if speaker:
        from guidance.models import load_model
        from guidance.pipeline import ModelPaths

        try:
            judge_speaker = load_model((ModelPaths(root=models_dir) if models_dir else ModelPaths()).path("judge_speaker"), models.spec, "judge", models.device)
        except (FileNotFoundError, ValueError) as exc:
            fail(f"{' '.join(str(exc).split())} (or pass --no-speaker)")
    cfg = PitchEvalConfig(
        targets=tuple(texts), samples=samples, seed=seed, steps=steps, scale=pitch_scale,
        capacity=capacity, head_weight=head_weight, digit=digit, outside_asr=outside_asr, speaker=speaker, speaker_targets=tuple(relative), write_wavs=write_wavs,
    )
    said = None
    if outside_asr:  # guidance/ never imports the outside judges: the command hands the recognizer in
        from outside_judges.report import default_recognizer

        said = lambda waves, rate: [default_recognizer().recognize(w, rate) for w in waves]  # noqa: E731
    evaluate_pitch(models, cfg, out, progress=lambda msg: typer.echo(msg, err=True), digits_said=said, judge_speaker=judge_speaker, data_root=str(root) if root else None)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out}")


def register(app: typer.Typer) -> None:
    app.command("evaluate-pitch")(evaluate_pitch_command)
