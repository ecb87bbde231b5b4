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
    check_between,
    check_non_negative,
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
    role: str = typer.Argument(..., help="denoiser | classifier | noisy-classifier | judge | score-subnet | vocoder (log-Mel to waveform) | f0-head (the harmonic vocoder's F0 reader) | word-spectra (what each digit adds to the voice guide's spectral statistics; averaged, not optimised)"),
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

    if role not in TRAIN_DEFAULTS and role not in ("word-spectra", "f0-head"):
        fail(f"unknown role {role!r}; choose one of {', '.join([*TRAIN_DEFAULTS, 'f0-head', 'word-spectra'])}")
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
    if role == "f0-head":
        if ema_decay is not None or task != "digit":
            fail("--ema-decay and --task do not apply to the f0-head role")
        _train_f0_head(out, root, steps, batch_size, lr, seed, mlflow, progress)
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


def _train_f0_head(out: Path, root: Path, steps: Optional[int], batch_size: Optional[int], lr: Optional[float], seed: Optional[int], mlflow: bool, progress: bool) -> None:
    import dataclasses

    from guidance.f0_head_training import F0HeadTrainConfig, fit_f0_head
    from guidance.spec import project_spec
    from mlops.tracking import tracked_run

    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    cfg = dataclasses.replace(F0HeadTrainConfig(), **overrides)
    with job_progress("train f0-head", cfg.steps, enabled=progress) as update:
        path, card = fit_f0_head(
            project_spec(root), out, root, cfg, tracker=tracked_run if mlflow else None,
            progress=lambda step, total, status: update(completed=step, total=total, status=status),
        )
    typer.echo(f"wrote {path}  " + " ".join(f"{k}={v}" for k, v in card.items() if k.startswith("val_")))


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
    target: list[str] = typer.Option(..., "--target", help="guide=label: digit=7 (repeat for several digits), speaker=REF.wav (a reference voice) and/or pitch=140 | +3st | rise | fall (CREPE pitch guide); several guides make a composite."),
    num: int = typer.Option(1, "--num", help="Samples per target."),
    seed: int = typer.Option(0, help="Seed of the starting noise (same seed, same audio)."),
    out: Path = typer.Option(..., "--out", help="Output directory for WAVs and manifest.json."),
    guide: Optional[str] = typer.Option(
        None, help="noisy (noise-conditioned classifier) | clean (repurposed clean classifier) | none. Default: clean for digit targets, "
        "noisy in digit + speaker composites and with --generator score-subnet (the best on validation).",
    ),
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
    hf_guide: Optional[str] = typer.Option(None, "--hf-guide", help="Hugging Face audio classifier as the digit guide: a local directory (read offline) or a hub id; uses the 'hf' profile. With --url: the name of one of the app's args.hf_guides."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="--hf-guide label names to targets: seven=7,... or a JSON file (digit words zero..nine and 0..9 are built in)."),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help="With --url: a registered classifier guides, NAME@ALIAS or NAME/VERSION (the app loads it from its model registry)."),
    profile_name: Optional[str] = typer.Option(None, "--profile-name", help="With --url: a profile the app knows by name, e.g. a registry alias such as production or candidate."),
    api_token: Optional[str] = typer.Option(
        None, "--api-token", envvar="SPEECHGUIDE_API_TOKEN", show_default=False, show_envvar=True,
        help="With --url: bearer token for an app that wants one (prefer the environment variable: a command line is visible to other users).",
    ),
    voice_guide: str = typer.Option("stats", "--voice-guide", help="For speaker=REF.wav targets: stats (the reference's spectral statistics) | encoder (resemblyzer's speaker encoder)."),
    vocoder: str = typer.Option("auto", "--vocoder", help=VOCODER_HELP),
) -> None:
    """Generate speech of the requested class(es), in-process or through a Serve app; write WAVs plus a manifest."""
    from guidance.guides import VOICE_GUIDE_KINDS
    from guidance.pipeline import GUIDE_KINDS
    from guidance.plan import Target, base_profile, check_targets, check_weights, with_overrides

    if guide is not None and guide not in GUIDE_KINDS:
        fail(f"--guide must be one of {', '.join(GUIDE_KINDS)}, got {guide!r}")
    guide_given = guide is not None
    guide = _check_hf_guide(hf_guide, label_map, guide, generator, url)
    if guide is None:
        from guidance.guides.kinds import default_digit_kind

        guide = default_digit_kind(any(t.partition("=")[0].strip() == "speaker" for t in target), generator)
    _check_generator(generator, subnet, guide)
    check_between("--num", num, 1, 1000)
    check_between("--steps", steps, 1, 1000)
    check_non_negative("--scale", scale)
    if sampler is not None and sampler not in ("euler", "heun"):
        fail(f"--sampler must be 'euler' or 'heun', got {sampler!r}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    check_vocoder(vocoder)
    if voice_guide not in VOICE_GUIDE_KINDS:
        fail(f"--voice-guide must be one of {', '.join(VOICE_GUIDE_KINDS)}, got {voice_guide!r}")
    try:
        targets = [Target.parse(t) for t in target]
        check_targets(targets)
    except ValueError as exc:
        fail(str(exc).replace("in the targets", "in --target"))
    weights = parse_weights(weight or [], {t.guide for t in targets})
    for name, value in (("--guide-model", guide_model), ("--profile-name", profile_name)):
        if value is not None and url is None:
            fail(f"{name} needs --url: registered models and named profiles are served by the Serve app")
    if profile_name is not None and profile is not None:
        fail("give --profile (a JSON file) or --profile-name (a profile the app knows), not both")
    references = _read_references(targets)
    prof = read_profile(profile, "--profile") if profile is not None else base_profile(guide)
    prof = with_overrides(prof, scale, steps, sampler)
    if url is not None:
        _generate_remote(
            url, targets, num, seed, guide, prof if profile is not None else None, scale, steps, sampler, out,
            guide_model=guide_model, profile_name=profile_name, api_token=api_token, references=references,
            weights=weights, voice_guide=voice_guide, hf_guide=hf_guide, generator=generator, guide_given=guide_given,
        )
        return
    from guidance.data import write_wav
    from guidance.finite import NonFiniteError
    from guidance.generate import generate_local, manifest
    from guidance.pipeline import ModelPaths

    models, _ = models_and_digit_guide(generator, subnet, models_dir, device, guide, hf_guide, label_map, vocoder)
    try:
        check_weights(weights, targets)
        result = generate_local(
            models, targets, num, seed, prof, guide, {label: wave for label, (wave, _) in references.items()}, voice_guide,
            weights, scale_set=scale is not None or profile is not None, paths=ModelPaths(root=models_dir) if models_dir else None,
        )
    except NonFiniteError:  # a ValueError too, but exit 1 (main says where), not a usage problem
        raise
    except KeyError as exc:
        fail(exc.args[0])
    except ValueError as exc:
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    files = result.plan.file_names()
    for name, wave in zip(files, result.waves):
        write_wav(out / name, wave, models.spec.sample_rate)
    request = {
        "targets": target, "num": num, "seed": seed, "guide": guide, "generator": generator,
        "voice_guide": voice_guide if references else None,
    }
    write_manifest(out, manifest(models, result, request, files))


def parse_weights(texts: list[str], targeted: set[str]) -> dict[str, float]:
    """`--weight guide=w` options -> {guide: w}; each guide must be one that is targeted."""
    import math

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


def _read_references(targets) -> dict:
    """Each speaker target's reference WAV: label -> (mono wave at 16 kHz, the file's bytes); exit 2 if unreadable."""
    from guidance.guides import read_reference

    references: dict = {}
    for t in targets:
        if t.guide == "speaker" and t.label not in references:
            try:
                raw = Path(t.label).read_bytes() if Path(t.label).is_file() else None
                references[t.label] = (read_reference(Path(t.label)), raw)
            except ValueError as exc:
                fail(f"--target speaker=...: {exc}")
    return references


def _check_hf_guide(hf_guide: Optional[str], label_map: Optional[str], guide: Optional[str], generator: str, url: Optional[str]) -> Optional[str]:
    """--hf-guide makes the guide kind "hf" (a Hugging Face classifier; with --url, the one the app hosts under that name)."""
    if hf_guide is None:
        if guide == "hf":
            fail("--guide hf needs --hf-guide PATH_OR_HUB_ID")
        if label_map is not None:
            fail("--label-map applies to --hf-guide only")
        return guide
    if guide not in (None, "hf"):
        fail(f"--hf-guide is the guide: leave out --guide {guide}")
    if generator != "unet":
        fail("--hf-guide steers the U-Net generator (--generator unet)")
    if url is not None and label_map is not None:
        fail("--label-map is the app's with --url (its args.hf_guides entry): leave it out")
    return "hf"


def _generate_remote(
    url, targets, num, seed, guide, profile, scale, steps, sampler, out: Path,
    guide_model: Optional[str] = None, profile_name: Optional[str] = None, api_token: Optional[str] = None,
    references: Optional[dict] = None, weights: Optional[dict] = None, voice_guide: str = "stats",
    hf_guide: Optional[str] = None, generator: str = "unet", guide_given: bool = True,
) -> None:
    """`generate --url`: the same request through the Serve app's HTTP API, the same files written."""
    import base64
    import json

    import httpx

    from guidance.plan import file_names
    from serve.client import generate_remote

    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, got {url!r}")
    wire_targets = []
    for t in targets:
        if t.guide == "speaker":
            wire_targets.append({"guide": "speaker", "reference_wav_base64": base64.b64encode(references[t.label][1]).decode("ascii")})
        else:
            wire_targets.append({"guide": t.guide, "label": t.label})
    payload: dict = {"targets": wire_targets, "num_samples": num, "seed": seed}
    if guide == "none":
        payload["profile"] = "unconditional"
    elif guide_given or guide == "hf":  # else the app picks its default kind (its generator may be score-subnet)
        payload["guide_kind"] = guide
    for key, value in (("guidance_scale", scale), ("steps", steps), ("sampler", sampler), ("guide_model", guide_model), ("hf_guide", hf_guide)):
        if value is not None:
            payload[key] = value
    if weights:
        payload["weights"] = weights
    if references:
        payload["voice_guide"] = voice_guide
    if generator != "unet":
        payload["generator"] = generator
    if profile is not None:
        payload["profile"] = json.loads(profile.model_dump_json())
    if profile_name is not None:
        payload["profile"] = profile_name
    try:
        response = generate_remote(url, payload, token=api_token)
    except ValueError as exc:
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"could not generate through {url}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    items = response["samples"]
    digit_of = [next((t["label"] for t in item.get("targets") or [item.get("target") or {}] if t.get("guide") == "digit"), None) for item in items]
    samples = []
    for name, item in zip(file_names(digit_of), items):
        tmp = out / (name + ".partial")
        tmp.write_bytes(base64.b64decode(item["wav_base64"]))
        tmp.replace(out / name)
        samples.append({"file": name, "target": item.get("target"), "targets": item.get("targets"), "scores": item.get("scores", {})})
    request = {"url": url, **payload, "targets": [f"{t.guide}={t.label}" for t in targets]}
    write_manifest(out, {
        "request": request,
        "models": response.get("models", {}),
        "profile": response.get("profile", {}),
        "timings_ms": response.get("timings_ms", {}),
        "sample_rate": items[0]["sample_rate"] if items else None,
        "samples": samples,
    })


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
    "speechguide.pitch_cli",
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
