"""`speechguide`: one command line for every job.

Bad arguments end with exit code 2 and one line on stderr saying what is wrong. A run whose
numbers go non-finite (NaN or inf while sampling or scoring) ends with exit code 1 and one line
naming where (e.g. the sampler step and sigma), before any output file is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from speechguide.common import (
    OUTSIDE_JUDGES_HELP,
    VOCODER_HELP,
    check_vocoder,
    click_exc,
    fail,
    file_version,
    load_models,
    load_subnet,
    models_and_digit_guide,
    outside_listen,
    read_profile,
    write_manifest,
)
from speechguide.progress import job_progress

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Classifier-guided speech diffusion: train, generate, evaluate.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Classifier-guided speech diffusion: train, generate, evaluate."""


@app.command()
def train(
    role: str = typer.Argument(..., help="denoiser | classifier | noisy-classifier | judge | score-subnet | vocoder (log-Mel to waveform) | word-spectra (what each digit adds to the voice guide's spectral statistics; averaged, not optimised)"),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default per role)."),
    batch_size: Optional[int] = typer.Option(None, help="Mini-batch size."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    ema_decay: Optional[float] = typer.Option(None, help="Largest EMA decay of the weights (denoiser, score-subnet, vocoder)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default per role)."),
    task: str = typer.Option("digit", help="digit | speaker (classifiers and judges)."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
    download: bool = typer.Option(False, help="Download FSDD into the user cache when no local copy is found."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the run to MLflow."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with an ETA (on a terminal only)."),
    backbone: Optional[Path] = typer.Option(None, help="score-subnet: frozen noise-conditioned classifier file (the backbone)."),
    digits: Optional[str] = typer.Option(None, help="score-subnet: digits its training data is limited to, e.g. 0,1,2 (default: all)."),
    vocoder: Optional[list[str]] = typer.Option(None, "--vocoder", help="judge: vocoders whose round trips of the training clips it also hears (repeatable; default griffin-lim)."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="judge: where the neural vocoder file is read from."),
) -> None:
    """Train a model on the FSDD training split and save it with its feature config."""
    import dataclasses

    from guidance.data import resolve_fsdd_root
    from guidance.spec import project_spec
    from guidance.training import TRAIN_DEFAULTS, train as run_training
    from mlops.tracking import tracked_run

    if role not in TRAIN_DEFAULTS and role != "word-spectra":
        fail(f"unknown role {role!r}; choose one of {', '.join([*TRAIN_DEFAULTS, 'word-spectra'])}")
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
    if ema_decay is not None and not (0 <= ema_decay < 1):
        fail(f"--ema-decay must be in [0, 1), got {ema_decay}")
    try:
        root = resolve_fsdd_root(data_dir, download=download)
    except FileNotFoundError as exc:
        fail(str(exc))
    if role == "word-spectra":
        from guidance.training import fit_word_spectra

        path = fit_word_spectra(project_spec(root), out, data_root=str(root))
        typer.echo(f"wrote {path}")
        return
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay).items() if v is not None}
    overrides.update(_score_subnet_options(role, task, backbone, digits))
    if vocoder:
        if role != "judge":
            fail("--vocoder applies to the judge role only")
        for v in vocoder:
            check_vocoder(v)
        overrides.update(vocoders=tuple(vocoder), models_dir=str(models_dir) if models_dir else None)
    cfg = dataclasses.replace(TRAIN_DEFAULTS[role], task=task, **overrides)
    spec = project_spec(root)
    tracker = tracked_run if mlflow else None  # MLflow is imported only when a run opens
    with job_progress(f"train {role}", cfg.steps, enabled=progress) as update:
        result = run_training(
            role, spec, out, cfg, data_root=str(root), tracker=tracker,
            progress=lambda step, total, status: update(completed=step, total=total, status=status),
        )
    typer.echo(f"wrote {result.path}  " + " ".join(f"{k}={v}" for k, v in result.card.items() if k.startswith("val_")))


def _score_subnet_options(role: str, task: str, backbone: Optional[Path], digits: Optional[str]) -> dict:
    """Check --backbone and --digits (score-subnet only) and turn them into TrainConfig fields."""
    if role != "score-subnet":
        for name, value in (("--backbone", backbone), ("--digits", digits)):
            if value is not None:
                fail(f"{name} applies to the score-subnet role only")
        return {}
    if task != "digit":
        fail("--task applies to classifiers and judges, not the score-subnet")
    if backbone is None:
        fail("score-subnet needs --backbone (a noise-conditioned classifier file, e.g. models/classifier-noisy.safetensors)")
    from guidance.models import read_metadata

    try:
        meta = read_metadata(backbone)
    except (ValueError, FileNotFoundError) as exc:
        fail(f"--backbone: {exc}")
    if meta.get("kind") != "classifier" or not meta.get("config", {}).get("noise_conditioned"):
        fail(f"--backbone {backbone} is not a noise-conditioned classifier (kind {meta.get('kind')!r})")
    chosen = None
    if digits is not None and digits.strip() != "all":
        try:
            chosen = tuple(int(d) for d in digits.split(","))
        except ValueError:
            fail(f"--digits must be comma-separated digits 0-9 or 'all', got {digits!r}")
        if not chosen or any(not 0 <= d <= 9 for d in chosen) or len(set(chosen)) != len(chosen):
            fail(f"--digits must be distinct digits 0-9, got {digits!r}")
    return {"backbone": str(backbone), "digits": chosen}


def _parse_scales(text: str, option: str) -> list[float]:
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} must be comma-separated numbers, got {text!r}")
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        fail(f"{option} needs finite non-negative numbers, got {text!r}")
    return values


GENERATORS = ("unet", "score-subnet")


def _check_generator(generator: str, subnet: Optional[Path], guide: str) -> None:
    if generator not in GENERATORS:
        fail(f"--generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    if subnet is not None and generator != "score-subnet":
        fail("--subnet applies to --generator score-subnet only")
    if generator == "score-subnet" and guide == "clean":
        fail("--generator score-subnet guides with its own noise-conditioned backbone: use --guide noisy or none")


def _subnet_label(path: Path) -> str:
    """score-subnet-3.safetensors -> "3": the regime's name in system names."""
    return path.stem.removeprefix("score-subnet-") or path.stem


@app.command()
def generate(
    target: list[str] = typer.Option(..., "--target", help="guide=label: digit=7 (repeat for several digits) and/or speaker=REF.wav (a reference voice; with a digit target, a composite)."),
    num: int = typer.Option(1, "--num", help="Samples per target."),
    seed: int = typer.Option(0, help="Seed of the starting noise (same seed, same audio)."),
    out: Path = typer.Option(..., "--out", help="Output directory for WAVs and manifest.json."),
    guide: str = typer.Option("noisy", help="noisy (noise-conditioned classifier) | clean (repurposed clean classifier) | none"),
    scale: Optional[float] = typer.Option(None, help="Guidance scale (default from the profile)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default from the profile)."),
    sampler: Optional[str] = typer.Option(None, help="euler | heun (default from the profile)."),
    profile: Optional[Path] = typer.Option(None, help="Guidance profile JSON (default: the guide kind's built-in profile)."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    generator: str = typer.Option("unet", help="unet (U-Net denoiser + classifier guide) | score-subnet (single backbone: the noisy classifier with a ScoreSubnet)."),
    subnet: Optional[Path] = typer.Option(None, help="ScoreSubnet file for --generator score-subnet (default: score-subnet-all.safetensors in the models directory)."),
    weight: Optional[list[str]] = typer.Option(None, "--weight", help="guide=w, the weight of one guide in a composite target (e.g. speaker=2); repeatable."),
    url: Optional[str] = typer.Option(None, help="Generate through a running Serve app (e.g. http://127.0.0.1:8000)."),
    hf_guide: Optional[str] = typer.Option(None, "--hf-guide", help="Hugging Face audio classifier as the digit guide: a local directory (read offline) or a hub id; uses the 'hf' profile."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="--hf-guide label names to targets: seven=7,... or a JSON file (digit words zero..nine and 0..9 are built in)."),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help="With --url: a registered classifier guides, NAME@ALIAS or NAME/VERSION (the app loads it from its model registry)."),
    profile_name: Optional[str] = typer.Option(None, "--profile-name", help="With --url: a profile the app knows by name, e.g. a registry alias such as production or candidate."),
    api_token: Optional[str] = typer.Option(
        None, "--api-token", envvar="SPEECHGUIDE_API_TOKEN", show_default=False, show_envvar=True,
        help="With --url: bearer token for an app that wants one (prefer the environment variable: a command line is visible to other users).",
    ),
    voice_guide: str = typer.Option("stats", "--voice-guide", help="For speaker=REF.wav targets: stats (the reference's spectral statistics) | encoder (resemblyzer's speaker encoder)."),
    vocoder: str = typer.Option("neural", "--vocoder", help=VOCODER_HELP),
) -> None:
    """Generate speech of the requested class(es), in-process or through a Serve app; write WAVs plus a manifest."""
    import json
    import math

    import torch

    from guidance.data import write_wav
    from guidance.guides import DEFAULT_PROFILES
    from guidance.pipeline import GUIDE_KINDS, Target, make_noise, sample_mels, vocode
    from guidance.vocoders import describe_vocoder

    if guide not in GUIDE_KINDS:
        fail(f"--guide must be one of {', '.join(GUIDE_KINDS)}, got {guide!r}")
    guide = _check_hf_guide(hf_guide, label_map, guide, generator, url)
    _check_generator(generator, subnet, guide)
    if not 1 <= num <= 1000:
        fail(f"--num must be between 1 and 1000, got {num}")
    if steps is not None and not 1 <= steps <= 1000:
        fail(f"--steps must be between 1 and 1000, got {steps}")
    if scale is not None and (not math.isfinite(scale) or scale < 0):
        fail(f"--scale must be a finite non-negative number, got {scale}")
    if sampler is not None and sampler not in ("euler", "heun"):
        fail(f"--sampler must be 'euler' or 'heun', got {sampler!r}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    check_vocoder(vocoder)
    try:
        targets = [Target.parse(t) for t in target]
    except ValueError as exc:
        fail(str(exc))
    from guidance.guides import VOICE_GUIDE_KINDS

    if voice_guide not in VOICE_GUIDE_KINDS:
        fail(f"--voice-guide must be one of {', '.join(VOICE_GUIDE_KINDS)}, got {voice_guide!r}")
    for name, value in (("--guide-model", guide_model), ("--profile-name", profile_name)):
        if value is not None and url is None:
            fail(f"{name} needs --url: registered models and named profiles are served by the Serve app")
    if profile_name is not None and profile is not None:
        fail("give --profile (a JSON file) or --profile-name (a profile the app knows), not both")
    unknown = sorted({t.guide for t in targets} - {"digit", "speaker"})
    if unknown:
        fail(f"unknown guide {unknown[0]!r} in --target; this build guides with: digit, speaker")
    if profile is not None:
        prof = read_profile(profile, "--profile")
    else:
        prof = DEFAULT_PROFILES["unconditional" if guide == "none" else guide]
    if scale is not None:
        prof = prof.with_guide(scale=scale)
    if steps is not None or sampler is not None:
        prof = prof.with_sampler(**{k: v for k, v in dict(steps=steps, kind=sampler).items() if v is not None})

    if weight or any(t.guide == "speaker" for t in targets):  # composite / voice targets: one term per guide
        from speechguide.voice_cli import generate_composite

        digit_scale_set = scale is not None or profile is not None
        generate_composite(
            targets, num, seed, out, guide, prof, weight or [], models_dir, device, generator, subnet, url, hf_guide, label_map,
            voice_guide=voice_guide, digit_scale_set=digit_scale_set, vocoder=vocoder,
        )
        return
    if url is not None:
        _generate_remote(
            url, targets, num, seed, guide, prof if profile is not None else None, scale, steps, sampler, out,
            guide_model=guide_model, profile_name=profile_name, api_token=api_token,
        )
        return
    models, digit_guide = models_and_digit_guide(generator, subnet, models_dir, device, guide, hf_guide, label_map, vocoder)
    try:
        classes = [digit_guide.label_index(t.label) for t in targets]
    except KeyError as exc:
        fail(exc.args[0])
    labels = torch.tensor(classes).repeat_interleave(num)
    noise = make_noise(len(labels), models.spec, seed)
    mels = sample_mels(models, guide, labels, prof, noise, seed=seed)
    waves = vocode(mels, models.vocoder)
    probs = digit_guide.probabilities(mels.to(models.device)).cpu()
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (wave, cls) in enumerate(zip(waves, labels.tolist())):
        k = i % num
        name = f"{digit_guide.labels[cls]}_{k:03d}.wav"
        write_wav(out / name, wave, models.spec.sample_rate)
        samples.append(
            {
                "file": name,
                "target": {"guide": "digit", "label": digit_guide.labels[cls]},
                "scores": {
                    "guide_target_probability": round(float(probs[i, cls]), 4),
                    "guide_prediction": digit_guide.labels[int(probs[i].argmax())],
                },
            }
        )
    model_info = {
        "denoiser": {"name": models.denoiser.name, "version": file_version(models.denoiser.path), "alias": None},
        "guide": None
        if guide == "none"
        else {"name": guide + "-digit-classifier", "noise_conditioned": digit_guide.needs_sigma, "alias": None},
        "vocoder": describe_vocoder(models.vocoder),
    }
    if guide == "hf":
        model_info["guide"].update(digit_guide.describe())
    manifest = {
        "request": {"targets": target, "num": num, "seed": seed, "guide": guide, "generator": generator, "device": str(models.device)},
        "models": model_info,
        "profile": json.loads(prof.model_dump_json()),
        "sample_rate": models.spec.sample_rate,
        "samples": samples,
    }
    write_manifest(out, manifest)


def _check_hf_guide(hf_guide: Optional[str], label_map: Optional[str], guide: str, generator: str, url: Optional[str]) -> str:
    """--hf-guide makes the guide kind "hf" (a Hugging Face classifier read in-process by the U-Net sampler)."""
    if hf_guide is None:
        if guide == "hf":
            fail("--guide hf needs --hf-guide PATH_OR_HUB_ID")
        if label_map is not None:
            fail("--label-map applies to --hf-guide only")
        return guide
    if guide not in ("noisy", "hf"):  # noisy is --guide's default
        fail(f"--hf-guide is the guide: leave out --guide {guide}")
    if generator != "unet":
        fail("--hf-guide steers the U-Net generator (--generator unet)")
    if url is not None:
        fail("--hf-guide runs in-process only, not through --url")
    return "hf"


def _generate_remote(
    url, targets, num, seed, guide, profile, scale, steps, sampler, out: Path,
    guide_model: Optional[str] = None, profile_name: Optional[str] = None, api_token: Optional[str] = None,
) -> None:
    """`generate --url`: the same request through the Serve app's HTTP API, the same files written."""
    import base64
    import json

    import httpx

    from serve.client import generate_remote

    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, got {url!r}")
    payload: dict = {"targets": [{"guide": t.guide, "label": t.label} for t in targets], "num_samples": num, "seed": seed}
    if guide == "none":
        payload["profile"] = "unconditional"
    else:
        payload["guide_kind"] = guide
    for key, value in (("guidance_scale", scale), ("steps", steps), ("sampler", sampler)):
        if value is not None:
            payload[key] = value
    if profile is not None:
        payload["profile"] = json.loads(profile.model_dump_json())
    if profile_name is not None:
        payload["profile"] = profile_name
    if guide_model is not None:
        payload["guide_model"] = guide_model
    try:
        response = generate_remote(url, payload, token=api_token)
    except ValueError as exc:
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"could not generate through {url}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    samples, counts = [], {}
    for item in response["samples"]:
        label = (item.get("target") or {}).get("label")
        key = label if label is not None else "sample"
        k = counts[key] = counts.get(key, -1) + 1
        name = f"{key}_{k:03d}.wav"
        tmp = out / (name + ".partial")
        tmp.write_bytes(base64.b64decode(item["wav_base64"]))
        tmp.replace(out / name)
        samples.append({"file": name, "target": item.get("target"), "scores": item.get("scores", {})})
    manifest = {
        "request": {"url": url, **payload},
        "models": response.get("models", {}),
        "profile": response.get("profile", {}),
        "timings_ms": response.get("timings_ms", {}),
        "sample_rate": response["samples"][0]["sample_rate"] if response["samples"] else None,
        "samples": samples,
    }
    tmp = out / "manifest.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")
    typer.echo(f"wrote {len(samples)} WAVs and manifest.json to {out} (via {url})")


@app.command()
def evaluate(
    out: Path = typer.Option(Path("reports/eval"), "--out", help="Report directory."),
    per_class: int = typer.Option(50, help="Generated samples per digit for every system."),
    seed: int = typer.Option(0, help="Noise seed (the same noise for every system)."),
    noisy_scales: Optional[str] = typer.Option(None, help="Guidance scales (gamma) for noise-conditioned guidance, e.g. 3,10,20 (default: the profile's own)."),
    clean_scales: Optional[str] = typer.Option(None, help="Norm-scaled fractions for clean-classifier guidance, e.g. 0.1,0.3 (default: the profile's own)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default from the profiles)."),
    split: str = typer.Option("test", help="test (final reports) | val (exploration, tuning)."),
    noisy_profile: Optional[Path] = typer.Option(None, help="Profile JSON to scale for noise-conditioned guidance."),
    clean_profile: Optional[Path] = typer.Option(None, help="Profile JSON to scale for clean-classifier guidance."),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    data_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_FSDD_DIR", help="Local FSDD copy."),
    download: bool = typer.Option(False, help="Download FSDD into the user cache when no local copy is found."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the report to MLflow."),
    subnet: Optional[list[Path]] = typer.Option(None, "--subnet", help="ScoreSubnet file to add as subnet-uncond / subnet-guided@gamma systems (repeatable)."),
    subnet_scales: str = typer.Option("3", help="Guidance scales (gamma) for the ScoreSubnet systems."),
    vocoder: str = typer.Option("neural", "--vocoder", help=VOCODER_HELP),
    outside_judges: bool = typer.Option(True, "--outside-judges/--no-outside-judges", help=OUTSIDE_JUDGES_HELP),
    outside_real_per_class: Optional[int] = typer.Option(None, help="Real clips per digit (and their vocoder round trips) the outside judges hear as reference rows (default: --per-class, at most the split's)."),
) -> None:
    """Unconditional vs noise-conditioned vs clean-classifier guidance on the FSDD test split."""
    from guidance.data import resolve_fsdd_root
    from guidance.evaluation import EvalConfig, evaluate as run_eval
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths
    from mlops.tracking import tracked_run

    if not 1 <= per_class <= 1000:
        fail(f"--per-class must be between 1 and 1000, got {per_class}")
    if steps is not None and not 1 <= steps <= 1000:
        fail(f"--steps must be between 1 and 1000, got {steps}")
    if split not in ("test", "val"):
        fail(f"--split must be 'test' or 'val', got {split!r}")
    if outside_real_per_class is not None and not 1 <= outside_real_per_class <= 1000:
        fail(f"--outside-real-per-class must be between 1 and 1000, got {outside_real_per_class}")
    bases = {kind: read_profile(path, f"--{kind}-profile") for kind, path in (("noisy", noisy_profile), ("clean", clean_profile)) if path}
    cfg = EvalConfig(
        per_class=per_class,
        seed=seed,
        noisy_scales=_parse_scales(noisy_scales, "--noisy-scales") if noisy_scales is not None else None,
        clean_scales=_parse_scales(clean_scales, "--clean-scales") if clean_scales is not None else None,
        steps=steps,
        split=split,
        base_profiles=bases,
        subnet_scales=_parse_scales(subnet_scales, "--subnet-scales"),
        outside_real_per_class=outside_real_per_class,
    )
    try:
        root = resolve_fsdd_root(data_dir, download=download)
    except FileNotFoundError as exc:
        fail(str(exc))
    listen = outside_listen(outside_judges)
    models = load_models(models_dir, device, vocoder)
    subnets = {_subnet_label(p): load_subnet(p, models_dir, device, vocoder) for p in subnet or []}
    if len(subnets) != len(subnet or []):
        fail("--subnet files must have distinct names")
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    try:
        judge_digit = load_model(paths.path("judge_digit"), models.spec, "judge", models.device)
        judge_speaker = (
            load_model(paths.path("judge_speaker"), models.spec, "judge", models.device)
            if paths.path("judge_speaker").exists()
            else None
        )
    except ValueError as exc:
        fail(str(exc))
    with job_progress("evaluate") as update, tracked_run("speechguide-evaluate", "evaluate", {"per_class": per_class, "seed": seed}, mlflow) as run:

        def on_progress(name: str, done: int, total: int) -> None:
            update(completed=done, total=total, status=name)

        report = run_eval(models, judge_digit, judge_speaker, cfg, out, data_root=str(root), progress=on_progress, subnets=subnets, listen=listen)
        for s in report["systems"]:
            key = s["name"].replace("@", "_at_")  # MLflow metric names allow no '@'
            run.log_metrics({f"{key}.judge_accuracy": s["judge_accuracy"], f"{key}.fd": s["fd"]})
            outside = {k: s.get("outside", {}).get(k) for k in ("asr_accuracy", "dnsmos_ovrl")}
            run.log_metrics({f"{key}.outside_{k}": v for k, v in outside.items() if v is not None})
        for row in ("real", "round_trip"):  # the outside judges' reference rows
            figures = report.get("outside_judges", {}).get(row, {})
            run.log_metrics({f"{row}.outside_{k}": figures[k] for k in ("asr_accuracy", "dnsmos_ovrl") if figures.get(k) is not None})
        for name in ("report.json", "report.md", "spectrograms.png"):
            run.log_artifact(out / name)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out}")


# Each module holds one command group and a `register(app)`; its heavy imports (Ray, MLflow,
# transformers) happen only when its command runs, so `speechguide --help` stays quick.
OPTIONAL_COMMAND_MODULES: tuple[str, ...] = (
    "speechguide.serve_cli",
    "speechguide.calibrate_cli",
    "speechguide.tune_cli",
    "speechguide.models_cli",
    "speechguide.cluster_cli",
    "speechguide.voice_cli",
    "speechguide.vocode_cli",
)


def _register_optional_commands() -> None:
    """Register every command module that is installed (the list above)."""
    import importlib

    for module_name in OPTIONAL_COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(app)


_register_optional_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every usage problem into one line and exit code 2, and
    a non-finite failure into one line and exit code 1 (no traceback either way)."""
    from guidance.features import FeatureSpecMismatch
    from guidance.finite import NonFiniteError

    try:
        # without standalone mode click returns a `typer.Exit(code)`'s code instead of raising it
        code = app(args=argv, standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        return 0
    except click_exc.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        print(f"speechguide: error: {message}", file=sys.stderr)
        return 2
    except (FeatureSpecMismatch, FileNotFoundError) as exc:
        print(f"speechguide: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteError as exc:
        print(f"speechguide: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except typer.Abort:
        print("speechguide: aborted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
