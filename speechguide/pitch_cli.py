"""Pitch targets on the command line: `generate --target pitch=140|+3st|rise|fall` (composites with digit and
speaker targets run through `speechguide.voice_cli.generate_composite`) and `evaluate-pitch`.

Heavy imports happen inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer


def check_pitch_targets(targets: list, url: Optional[str]) -> None:
    """Every pitch=... target parses and lies in range; a relative one has a speaker target to be relative to.
    Runs before any model loads, so a bad target costs nothing (exit 2, one line)."""
    from guidance.pitch_targets import PitchTargetError, parse_pitch_target
    from speechguide.common import fail

    if url is not None:
        fail("pitch targets are generated in-process only (leave out --url)")
    has_speaker = any(t.guide == "speaker" for t in targets)
    for t in targets:
        if t.guide != "pitch":
            continue
        try:
            parsed = parse_pitch_target(t.label)
        except PitchTargetError as exc:
            fail(f"--target pitch=...: {exc}")
        if parsed.needs_reference and not has_speaker:
            fail(f"--target pitch={t.label} is relative to a reference voice: add --target speaker=REF.wav")


@dataclass
class CompositePitch:
    """The pitch guide of one composite request and the median F0 of each speaker reference (CREPE's)."""

    guide: object
    reference_hz: dict[str, float] = field(default_factory=dict)

    def label(self, text: str, reference: str | None) -> int:
        """The guide's label index of a pitch target for a row whose speaker reference is `reference`."""
        from guidance.pitch_targets import PitchTargetError
        from speechguide.common import fail

        try:
            return self.guide.add_target(text, self.reference_hz.get(reference) if reference else None, reference)
        except PitchTargetError as exc:
            fail(f"--target pitch=...: {exc}")

    def scores(self, mels, waves, target, sample_rate: int) -> list[dict]:
        """Per sample: the target line, CREPE's own error and what the independent tracker (pYIN) heard."""
        import math

        from guidance.pitch_tracker import track

        own = self.guide.score(mels, target)
        out = []
        for i, wave in enumerate(waves):
            line = self.guide.line(int(target[i]))
            heard = track(wave, sample_rate)
            err = heard.error_semitones(line)
            out.append({
                "pitch_target_hz": [round(line.start_hz, 1), round(line.end_hz, 1)],
                "pitch_crepe_error_st": None if math.isnan(float(own[i])) else round(float(own[i]), 3),
                "pitch_heard_hz": None if math.isnan(heard.median_hz) else round(heard.median_hz, 1),
                "pitch_heard_error_st": None if math.isnan(err) else round(err, 3),
                "pitch_heard_glide_st": None if math.isnan(heard.glide_semitones) else round(heard.glide_semitones, 2),
                "pitch_voiced_fraction": round(heard.voiced_fraction, 3),
            })
        return out


def pitch_guide_for(models, references: list, capacity: str | None = None) -> CompositePitch:
    """A CREPE pitch guide for a model set (through its neural vocoder when it has one) and the median F0 of
    every speaker reference `(label, wave)`; a reference CREPE hears no pitch in ends the command."""
    from guidance.guides.pitch import DEFAULT_CAPACITY, PitchGuide
    from speechguide.common import fail

    try:
        guide = PitchGuide(models.spec, models.vocoder, capacity or DEFAULT_CAPACITY, device=models.device)
    except FileNotFoundError as exc:
        fail(str(exc))
    medians = {}
    for label, wave in references:
        try:
            medians[label] = guide.median_f0(wave, models.spec.sample_rate)
        except ValueError as exc:
            fail(f"--target speaker={label}: {exc}")
    return CompositePitch(guide, medians)


def evaluate_pitch_command(
    out: Path = typer.Option(Path("reports/pitch"), "--out", help="Report directory."),
    targets: str = typer.Option("", help="Comma-separated pitch targets (default: 4 semitones below and above, and 2 below and above, the unguided median F0; e.g. 106,119,150,169)."),
    samples: int = typer.Option(12, help="Samples per pitch target (digits cycle 0..9)."),
    seed: int = typer.Option(0, help="Noise seed (the same noise for every system)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default: the digit guide profile's, 18)."),
    pitch_scale: Optional[float] = typer.Option(None, help="Pitch guide scale (default: the pitch profile's)."),
    capacity: str = typer.Option("tiny", help="CREPE capacity: tiny | full."),
    digit: bool = typer.Option(True, "--digit/--no-digit", help="Also run digit-only and digit + pitch systems (digit accuracy by the outside recognizer)."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    outside_judges: bool = typer.Option(True, "--outside-judges/--no-outside-judges", help="Score digits with the outside recognizer (PocketSphinx)."),
) -> None:
    """Pitch guidance (CREPE) judged by an independent tracker (pYIN): median F0 error in semitones per target,
    voicing, and the digit rate of digit + pitch composites next to digit-only guidance."""
    import math

    from guidance.pitch_eval import PitchEvalConfig, evaluate_pitch
    from guidance.pitch_targets import PitchTargetError, parse_pitch_target
    from speechguide.common import fail, load_models

    if not 1 <= samples <= 200:
        fail(f"--samples must be between 1 and 200, got {samples}")
    if steps is not None and not 1 <= steps <= 1000:
        fail(f"--steps must be between 1 and 1000, got {steps}")
    if pitch_scale is not None and (not math.isfinite(pitch_scale) or pitch_scale < 0):
        fail(f"--pitch-scale must be a finite non-negative number, got {pitch_scale}")
    if capacity not in ("tiny", "full"):
        fail(f"--capacity must be tiny or full, got {capacity!r}")
    texts = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        for text in texts:
            if parse_pitch_target(text).needs_reference:
                fail(f"--targets {text}: evaluate-pitch takes absolute (Hz) or contour targets")
    except PitchTargetError as exc:
        fail(f"--targets: {exc}")
    outside_asr = digit and outside_judges
    if outside_asr:
        try:
            from outside_judges.report import ready

            ready()
        except ImportError as exc:
            fail(f"--outside-judges: {' '.join(str(exc).split())} (or pass --no-outside-judges)")
    models = load_models(models_dir, device)
    cfg = PitchEvalConfig(
        targets=tuple(texts), samples=samples, seed=seed, steps=steps, scale=pitch_scale,
        capacity=capacity, digit=digit, outside_asr=outside_asr,
    )
    evaluate_pitch(models, cfg, out, progress=lambda msg: typer.echo(msg, err=True))
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out}")


def register(app: typer.Typer) -> None:
    app.command("evaluate-pitch")(evaluate_pitch_command)
