"""Voice and composite targets on the command line.

`generate --target speaker=REF.wav [--target digit=7] [--weight speaker=2]` (routed here by `generate`)
and `evaluate-voice` (the voice/composite evaluation). Heavy imports happen inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from guidance.edm_constants import SIGMA_MAX

COMPOSITE_GUIDES: tuple[str, ...] = ("digit", "speaker")


def parse_weights(texts: list[str], targeted: set[str]) -> dict[str, float]:
    """`--weight guide=w` options -> {guide: w}; each guide must be one that is targeted."""
    import math

    from speechguide.common import fail

    weights: dict[str, float] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not sep or not math.isfinite(w) or w < 0:
            fail(f"--weight must look like guide=w with a finite w >= 0 (e.g. speaker=2), got {text!r}")
        if name not in targeted:
            fail(f"--weight {name}=...: no --target names the guide {name!r}")
        weights[name] = w
    return weights


def generate_composite(
    targets: list,
    num: int,
    seed: int,
    out: Path,
    guide: str,
    prof,
    weight_texts: list[str],
    models_dir: Optional[Path],
    device: Optional[str],
    generator: str,
    subnet: Optional[Path],
    url: Optional[str],
    hf_guide: Optional[str] = None,
    label_map: Optional[str] = None,
    voice_guide: str = "stats",
    digit_scale_set: bool = False,
    vocoder: str = "neural",
) -> None:
    """Generate for every combination of the digit and speaker targets (each guide a term with its own
    settings and weight), write WAVs and manifest.json with every guide's score per sample."""
    import itertools
    import json

    import torch

    from guidance.data import write_wav
    from guidance.guides import VoiceGuide, make_voice_guide, read_reference
    from guidance.guides.voice_stats import words_said
    from guidance.pipeline import guide_settings, make_noise, sample_mels, vocode
    from guidance.vocoders import describe_vocoder
    from speechguide.common import fail, file_version, models_and_digit_guide, write_manifest

    weights = parse_weights(weight_texts, {t.guide for t in targets})
    if url is not None:
        fail("speaker targets are generated in-process only (leave out --url)")
    digit_targets = [t for t in targets if t.guide == "digit"]
    speaker_targets = [t for t in targets if t.guide == "speaker"]
    references = []
    for t in speaker_targets:
        try:
            references.append((t.label, read_reference(Path(t.label))))
        except ValueError as exc:
            fail(f"--target speaker=...: {exc}")
    models, digit_guide = models_and_digit_guide(generator, subnet, models_dir, device, guide, hf_guide, label_map, vocoder)
    try:
        classes = [digit_guide.label_index(t.label) for t in digit_targets]
    except KeyError as exc:
        fail(exc.args[0])
    voice = make_voice_guide(voice_guide, models.spec, models.device)
    encoder = voice if isinstance(voice, VoiceGuide) else VoiceGuide(models.spec, device=models.device)  # scores the written audio
    refs = [voice.add_reference(label, wave, models.spec.sample_rate) for label, wave in references]
    for label, wave in references:
        encoder.add_reference(label, wave, models.spec.sample_rate)
    if classes and refs and not digit_scale_set and guide == "noisy":
        from guidance.voice_eval import COMPOSITE_DIGIT_SCALE

        prof = prof.with_guide(scale=COMPOSITE_DIGIT_SCALE)  # the voice term pulls against the digit guide
    prof = prof.model_copy(update={"per_guide": {**prof.per_guide, "speaker": guide_settings(prof, "speaker", voice)}})

    groups = list(itertools.product(classes or [None], refs or [None]))
    rows = [g for g in groups for _ in range(num)]
    named: dict[str, torch.Tensor] = {}
    if classes:
        named["digit"] = torch.tensor([d for d, _ in rows])
    if refs:
        named["speaker"] = torch.tensor([r for _, r in rows])
    offsets = word_offsets_for(voice, bool(classes and refs), models_dir, models.spec)
    if offsets is not None:  # a reference saying one digit stands for its speaker saying the one asked for
        said = words_said(digit_guide, [w for _, w in references], models.spec, models.device)
        named["speaker"] = voice.retarget(named["speaker"], said[named["speaker"]], named["digit"], offsets)
    noise = make_noise(len(rows), models.spec, seed)
    mels = sample_mels(models, guide, named, prof, noise, seed=seed, extra_guides={"speaker": voice}, weights=weights)
    waves = vocode(mels, models.vocoder)
    dev_mels = mels.to(models.device)
    probs = digit_guide.probabilities(dev_mels).cpu() if classes else None
    with torch.no_grad():
        guide_score = voice.score(dev_mels, named["speaker"]).cpu() if refs else None
        heard = torch.nan_to_num(waves).clamp(-1, 1)  # what write_wav stores
        cos_wav = (encoder.embed_waves(heard, models.spec.sample_rate).cpu() * encoder.references.cpu()[[r for _, r in rows]]).sum(1) if refs else None

    out.mkdir(parents=True, exist_ok=True)
    samples, counts = [], {}
    for i, (cls, ref) in enumerate(rows):
        key = digit_guide.labels[cls] if cls is not None else "sample"
        k = counts[key] = counts.get(key, -1) + 1
        name = f"{key}_{k:03d}.wav"
        write_wav(out / name, waves[i], models.spec.sample_rate)
        wanted = ([{"guide": "digit", "label": digit_guide.labels[cls]}] if cls is not None else []) + (
            [{"guide": "speaker", "label": voice.labels[ref]}] if ref is not None else []
        )
        scores: dict = {}
        if probs is not None:
            scores["guide_target_probability"] = round(float(probs[i, cls]), 4)
            scores["guide_prediction"] = digit_guide.labels[int(probs[i].argmax())]
        if guide_score is not None:
            if voice.kind == "encoder":
                scores["speaker_cosine"] = round(float(guide_score[i]), 4)  # the guide's own score (log-Mel through the adapter)
            else:
                scores["speaker_stats_distance"] = round(-float(guide_score[i]), 4)  # the guide's own score (0 = the reference's statistics)
            scores["speaker_cosine_wav"] = round(float(cos_wav[i]), 4)  # the encoder on the written waveform
        samples.append({"file": name, "target": wanted[0], "targets": wanted, "scores": scores})
    manifest = {
        "request": {
            "targets": [f"{t.guide}={t.label}" for t in targets],
            "num": num,
            "seed": seed,
            "guide": guide,
            "generator": generator,
            "voice_guide": voice_guide if refs else None,
            "weights": {name: weights.get(name, 1.0) for name in {t.guide for t in targets}},
            "device": str(models.device),
        },
        "models": {
            "denoiser": {"name": models.denoiser.name, "version": file_version(models.denoiser.path), "alias": None},
            "guide": None
            if guide == "none" or not classes
            else {"name": guide + "-digit-classifier", "noise_conditioned": digit_guide.needs_sigma, "alias": None},
            "speaker_guide": None if not refs else {**speaker_guide_record(voice), **({"word_spectra": True} if offsets is not None else {})},
            "vocoder": describe_vocoder(models.vocoder),
        },
        "profile": json.loads(prof.model_dump_json()),
        "sample_rate": models.spec.sample_rate,
        "samples": samples,
    }
    write_manifest(out, manifest)


def word_offsets_for(voice, composite: bool, models_dir: Optional[Path], spec):
    """The word-spectra table for a stats-guided digit + speaker composite, when the models directory has it."""
    if voice.kind != "stats" or not composite:
        return None
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths

    path = (ModelPaths(root=models_dir) if models_dir else ModelPaths()).path("word_spectra")
    return load_model(path, spec, "word-spectra").model.offsets if path.is_file() else None


def speaker_guide_record(guide) -> dict:
    """What the manifest says about the voice guide: the shipped encoder's file version, or the statistics' settings."""
    from guidance.guides.voice import shipped_weights_path
    from speechguide.common import file_version

    if guide.kind == "encoder":
        return {"name": "resemblyzer-voice-encoder", "kind": guide.kind, "version": file_version(shipped_weights_path()), "alias": None, "frozen": True}
    return {
        "name": "reference-spectral-statistics", "kind": guide.kind, "trained": False,
        "frame_sharpness": guide.frame_sharpness, "spread_weight": guide.spread_weight,
    }


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
