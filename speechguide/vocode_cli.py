"""`speechguide vocode IN.wav... --out DIR`: real recordings through the vocoder, to hear its ceiling.

Each input is read at the project's rate, analysed into the project's normalized log-Mel (whole length,
no cropping) and resynthesized by the vocoder; the output keeps the input's file name. Every input is
read before anything is written, so a bad file stops the run with nothing half done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from speechguide.common import VOCODER_HELP


def vocode_command(
    inputs: list[Path] = typer.Argument(..., help="WAV files to analyse and resynthesize."),
    out: Path = typer.Option(..., "--out", help="Directory for the resynthesized WAVs (same file names)."),
    vocoder: str = typer.Option("neural", "--vocoder", help=VOCODER_HELP),
    models_dir: Optional[Path] = typer.Option(None, envvar="SPEECHGUIDE_MODELS", help="Directory of model files."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA when present)."),
) -> None:
    """Analysis and resynthesis of real recordings through the current vocoder (what it makes of real speech)."""
    import soundfile

    from guidance.data import load_wave, write_wav
    from guidance.device import pick_device
    from guidance.models import read_metadata
    from guidance.features import FeatureSpec
    from guidance.pipeline import ModelPaths
    from guidance.vocoders import load_vocoder, resynthesize
    from speechguide.common import check_vocoder, fail

    check_vocoder(vocoder)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        fail("two inputs share a file name; their outputs would overwrite each other")
    paths = ModelPaths(root=models_dir) if models_dir else ModelPaths()
    try:
        spec = FeatureSpec.from_dict(read_metadata(paths.path("denoiser"))["feature_spec"])
        voc = load_vocoder(vocoder, spec, paths.root, pick_device(device))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    waves = []
    for path in inputs:
        if not path.is_file():
            fail(f"{path} is not a file")
        try:
            wave = load_wave(path, spec.sample_rate)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            fail(f"{path} is not a readable WAV file ({' '.join(str(exc).split())[:200]})")
        if wave.numel() < spec.n_fft or not bool(wave.isfinite().all()):
            fail(f"{path} is too short or holds non-finite samples")
        waves.append(wave)
    for path, wave in zip(inputs, waves):
        write_wav(out / path.name, resynthesize(wave, voc), spec.sample_rate)
    typer.echo(f"wrote {len(inputs)} WAVs to {out} ({getattr(voc, 'description', {}).get('kind', vocoder)} vocoder)")


def register(app: typer.Typer) -> None:
    app.command("vocode")(vocode_command)
