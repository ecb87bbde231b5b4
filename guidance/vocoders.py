"""Choosing the vocoder: the committed neural vocoder by default, the harmonic one or Griffin-Lim on request.

Every place that writes or judges audio (generate, evaluate, Serve, Tune, `vocode`) asks this module,
so the default is decided once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from guidance.features import FeatureSpec, GriffinLimVocoder, LogMel, Vocoder

GRIFFIN_LIM = "griffin-lim"
NEURAL = "neural"
HARMONIC = "harmonic"
AUTO = "auto"  # harmonic for requests with a pitch target, neural otherwise (AutoVocoder, request_vocoder)
VOCODER_CHOICES: tuple[str, ...] = (AUTO, NEURAL, HARMONIC, GRIFFIN_LIM)
DEFAULT_VOCODER = NEURAL
VOCODER_FILE = "vocoder.safetensors"
F0_HEAD_FILE = "f0-head.safetensors"


def load_vocoder(
    choice: str | Path = DEFAULT_VOCODER,
    spec: FeatureSpec | None = None,
    models_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> Vocoder:
    """`auto` (`AutoVocoder`: the neural vocoder, and for requests with a pitch target the harmonic one where
    the directory has an F0 head), `neural` (the models directory's vocoder file), `harmonic` (that vocoder with
    the directory's F0 head, `guidance.harmonic_vocoder`), `griffin-lim`, or a path to a vocoder file.

    A neural vocoder or F0 head whose feature config differs from `spec` is refused (`FeatureSpecMismatch`).
    """
    if str(choice) == GRIFFIN_LIM:
        if spec is None:
            raise ValueError("Griffin-Lim needs the feature spec it inverts")
        vocoder = GriffinLimVocoder(spec).to(device)
        vocoder.description = {"kind": GRIFFIN_LIM, "n_iter": vocoder.griffin_lim.n_iter}
        return vocoder
    if str(choice) == AUTO:
        has_head = models_dir is not None and (Path(models_dir) / F0_HEAD_FILE).is_file()
        harmonic = _load_harmonic(spec, models_dir, device) if has_head else None
        return AutoVocoder(harmonic.neural if harmonic is not None else load_vocoder(NEURAL, spec, models_dir, device), harmonic)
    if str(choice) == HARMONIC:
        return _load_harmonic(spec, models_dir, device)
    if str(choice) == NEURAL:
        if models_dir is None:
            raise ValueError("the neural vocoder is read from a models directory; none was given")
        path = Path(models_dir) / VOCODER_FILE
    else:
        path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(
            f"vocoder file not found: {path} (train one with `speechguide train vocoder`, or use --vocoder {GRIFFIN_LIM})"
        )
    from guidance.models.checkpoint import load_model
    from guidance.files import file_sha256

    loaded = load_model(path, expected_spec=spec, kind="vocoder", device=device)
    vocoder = loaded.model
    vocoder.spec = loaded.spec
    vocoder.description = {"kind": NEURAL, "name": loaded.name, "sha256": file_sha256(path)}
    return vocoder


def _load_harmonic(spec: FeatureSpec | None, models_dir: Path | None, device: torch.device | str) -> Vocoder:
    from guidance.files import file_sha256
    from guidance.harmonic_vocoder import HarmonicVocoder
    from guidance.models.checkpoint import load_model

    if models_dir is None:
        raise ValueError("the harmonic vocoder is read from a models directory; none was given")
    path = Path(models_dir) / F0_HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"F0 head file not found: {path} (train one with `speechguide train f0-head`, or use --vocoder {NEURAL})")
    neural = load_vocoder(NEURAL, spec, models_dir, device)
    loaded = load_model(path, expected_spec=neural.spec, kind="f0-head", device=device)
    vocoder = HarmonicVocoder(neural, loaded.model.requires_grad_(False), neural.spec)
    vocoder.description = {
        "kind": HARMONIC, "neural": neural.description, "f0_head": {"name": loaded.name, "sha256": file_sha256(path)},
    }
    return vocoder


class AutoVocoder(torch.nn.Module):
    """`--vocoder auto`: writes with the neural vocoder, whose figures every report but pitch's was measured
    with, and hands requests with a pitch target to the harmonic vocoder (`request_vocoder`), which keeps the
    low voices the neural vocoder's phase loses (README "Pitch guidance": pitch targets heard on target,
    side by side on the same samples). Without an F0 head in the models directory, pitch requests are
    written by the neural vocoder too."""

    def __init__(self, neural: torch.nn.Module, harmonic: torch.nn.Module | None) -> None:
        super().__init__()
        self.neural, self.harmonic, self.spec = neural, harmonic, neural.spec
        self.description = {"kind": AUTO, "neural": describe_vocoder(neural), "harmonic": describe_vocoder(harmonic) if harmonic is not None else None}

    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:  # what guides differentiate through (waveform_route_vocoder)
        return self.neural.synthesize(mel)

    def forward(self, mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        return self.neural(mel, length)


def request_vocoder(vocoder: Vocoder, guides: Iterable[str]) -> Vocoder:
    """The vocoder that writes one request's audio, given the guides its targets name: an `AutoVocoder`'s
    harmonic vocoder for a pitch target (when it has one), its neural vocoder otherwise; any other vocoder
    writes every request."""
    if not isinstance(vocoder, AutoVocoder):
        return vocoder
    return vocoder.harmonic if vocoder.harmonic is not None and "pitch" in set(guides) else vocoder.neural


def writer_f0_head(vocoder: Vocoder | None) -> torch.nn.Module | None:
    """The F0 head of the harmonic vocoder that writes pitch requests with `vocoder` (itself harmonic, or an
    `AutoVocoder` holding one), else None: what the pitch guide also asks for the target pitch."""
    from guidance.models.f0_head import F0Head

    harmonic = getattr(vocoder, "harmonic", None) or vocoder
    head = getattr(harmonic, "head", None)  # (the neural vocoder's output layer is called head too)
    return head if isinstance(head, F0Head) else None


def waveform_route_vocoder(vocoder: Vocoder) -> Vocoder:
    """The vocoder a guide differentiates through to hear a waveform: the neural vocoder itself, also when
    the audio is written by the harmonic vocoder (a probe with the pitch guide hearing through the harmonic
    one put 0 of 16 samples within 1 semitone at -4 st, no better than through the neural synthesis;
    README "Pitch guidance")."""
    return getattr(vocoder, "neural", vocoder)


def rows_independent(vocoder: Vocoder) -> bool:
    """Whether a row's waveform does not depend on the batch it is written in (the neural vocoder, up to
    float rounding: at most 4 PCM steps of the written WAV, `bench/finish_batching.py`), so that several
    requests' audio may share one pass. The harmonic vocoder and Griffin-Lim draw their noise or phase for
    the whole batch."""
    return describe_vocoder(vocoder).get("kind") == NEURAL


def describe_vocoder(vocoder: Vocoder) -> dict:
    """What a manifest records about the vocoder that wrote its audio."""
    return dict(getattr(vocoder, "description", {"kind": type(vocoder).__name__}))


def vocoder_device(vocoder: Vocoder) -> torch.device:
    """Where a vocoder's weights or buffers live (Griffin-Lim has buffers only); the CPU for anything else."""
    if isinstance(vocoder, torch.nn.Module):
        for tensor in (*vocoder.parameters(), *vocoder.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def vocode_batched(vocoder: Vocoder, mels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Waveforms of many log-Mels, a batch at a time (bounded memory), on the vocoder's device."""
    device = vocoder_device(vocoder)
    out = [vocoder(mels[i : i + batch_size].to(device)).cpu() for i in range(0, len(mels), batch_size)]
    return torch.cat(out) if out else mels.new_zeros((0, vocoder.spec.num_samples))


@torch.no_grad()
def resynthesize(wave: torch.Tensor, vocoder: Vocoder) -> torch.Tensor:
    """Analysis and resynthesis of one recording of any length (samples,) at the vocoder's rate:
    what the vocoder makes of real speech, i.e. its ceiling."""
    front = LogMel(vocoder.spec)
    device = vocoder_device(vocoder)
    mel = front.any_length(wave.reshape(1, -1).float())
    return vocoder(mel.to(device), length=wave.shape[-1])[0].cpu()
