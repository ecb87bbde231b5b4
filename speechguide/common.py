"""What every command module of the CLI shares: failing with one line, reading profiles, loading the
models a command runs on, the outside judges' hook, manifests and model versions.

`speechguide.cli` (the app) imports each command module to register it; the command modules import
this module, never `speechguide.cli`, so the CLI has no import circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

try:  # typer vendors its own click since 0.2x; its exceptions are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exc


class UsageProblem(click_exc.UsageError):
    """A bad argument discovered after parsing; reported like any usage error (exit 2, one line)."""


def fail(message: str) -> None:
    raise UsageProblem(message)


def check_between(option: str, value: float | None, low: float, high: float) -> None:
    """Exit 2 unless an option left unset or within [low, high]."""
    if value is not None and not low <= value <= high:
        fail(f"{option} must be between {low} and {high}, got {value}")


def check_non_negative(option: str, value: float | None) -> None:
    """Exit 2 unless an option left unset or a finite number >= 0 (scales)."""
    import math

    if value is not None and (not math.isfinite(value) or value < 0):
        fail(f"{option} must be a finite non-negative number, got {value}")


def read_profile(path: Path, option: str):
    """The guidance profile JSON an option names; a missing or invalid file ends the command with one line."""
    from guidance.guides import GuidanceProfile

    try:
        return GuidanceProfile.load(path)
    except FileNotFoundError:
        fail(f"{option} {path} does not exist")
    except ValueError as exc:
        fail(f"{option} {path} is not a valid guidance profile: {' '.join(str(exc).split())[:300]}")


VOCODER_HELP = "auto (neural, and harmonic for requests with a pitch target; generate's and evaluate-pitch's default) | neural (the models directory's vocoder.safetensors, the other commands' default) | harmonic (that vocoder with a pulse-train phase at the F0 head's F0: keeps low voices) | griffin-lim | a vocoder file."


def check_vocoder(vocoder: str) -> None:
    """--vocoder names a known vocoder or a vocoder file."""
    from guidance.vocoders import VOCODER_CHOICES

    if vocoder not in VOCODER_CHOICES and not vocoder.endswith(".safetensors"):
        fail(f"--vocoder must be one of {', '.join(VOCODER_CHOICES)} or a .safetensors file, got {vocoder!r}")


def load_models(models_dir: Optional[Path], device: Optional[str], vocoder: str = "neural"):
    """The U-Net generator's model set from a models directory (default: the project's)."""
    from guidance.pipeline import ModelPaths, ModelSet

    check_vocoder(vocoder)
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    try:
        return ModelSet.load(paths, device, vocoder=vocoder)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


OUTSIDE_JUDGES_HELP = "Also score the waveforms with the outside judges (PocketSphinx digit ASR, DNSMOS), about 0.5 s per clip on a CPU core."


def outside_listen(enabled: bool):
    """The evaluations' `listen` hook from `outside_judges` (None when disabled); a missing package ends
    the command with one line (exit 2) before anything is sampled."""
    if not enabled:
        return None
    try:
        from outside_judges.report import listen, ready

        ready()
    except ImportError as exc:  # MissingJudgeDependency names the PyPI package to install
        fail(f"--outside-judges: {' '.join(str(exc).split())} (or pass --no-outside-judges)")
    return listen


def load_subnet(subnet: Optional[Path], models_dir: Optional[Path], device: Optional[str], vocoder: str = "neural"):
    """The single-backbone generator as a model set (its backbone is found next to the subnet file)."""
    from guidance.pipeline import ModelPaths, ModelSet

    check_vocoder(vocoder)
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    path = subnet or paths.path("score_subnet")
    try:
        return ModelSet.from_score_subnet(path, device, vocoder=vocoder)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def models_and_digit_guide(generator, subnet, models_dir, device, guide: str, hf_guide, label_map, vocoder: str = "neural"):
    """The generator's models and the guide that steers digit targets (noisy, clean or a Hugging Face one)."""
    if generator == "unet":
        models = load_models(models_dir, device, vocoder)
    else:
        models = load_subnet(subnet, models_dir, device, vocoder)
    if guide == "hf":
        models.guides["hf"] = load_hf_guide(hf_guide, label_map, models)
    return models, models.guides[guide if guide in ("clean", "hf") else "noisy"]


def load_hf_guide(source: str, label_map: Optional[str], models):
    """The Hugging Face classifier behind --hf-guide as a digit guide (a local directory never touches the network)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guidance.guides.hf import HFAudioGuide, HFGuideError

    try:
        return HFAudioGuide.from_pretrained(source, models.spec, label_map, device=models.device)
    except HFGuideError as exc:
        fail(str(exc))


def file_version(path: Path) -> str:
    """A model file's short content hash: the version a manifest shows."""
    from guidance.files import file_sha256

    return file_sha256(path)[:12]


def write_manifest(out: Path, manifest: dict) -> None:
    """Write `out/manifest.json` atomically (a reader never sees half a file) and say what was written."""
    import json

    tmp = out / "manifest.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")
    typer.echo(f"wrote {len(manifest['samples'])} WAVs and manifest.json to {out}")
